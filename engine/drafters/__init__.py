"""Drafters: each proposes the next few target tokens and learns from how many were accepted.

- ``base``: the two-method interface and the ``Draft`` it returns;
- ``ngram``: prompt lookup over the conversation so far (no model);
- ``suffix``: longest match over the conversation and remembered replies of its scope (no model);
- ``model``: a draft model with the target's vocabulary;
- ``universal``: a draft model with a different vocabulary (string-level bridging).
"""
