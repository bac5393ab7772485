"""Suffix drafting: propose what followed the longest earlier occurrence of the text's end,
over everything already said — the prompt and the reply so far (which hold the earlier turns
and replies of the conversation), plus a bounded store of recent replies and requests of
other conversations and API calls, one store per *scope* (the caller's hash of the system
prompt). No model; a proposal costs tens of microseconds of Python.

What this module is not: it does not choose the window nor decide whether to draft at all
(the window policy does, from costs), and it never changes the output (verification is
exact). It knows one target vocabulary: a new target needs a new drafter (or ``forget()``).
Not thread-safe: the engine thread that runs the loop also calls ``remember``.

API (``SuffixDrafter``; the ``Drafter`` interface of ``engine.drafters.base`` plus four calls):

- ``SuffixDrafter(max_bytes=64 MiB, min_match=2, min_path_confidence=0.5,
  substitutions=True)``; the app's bound is ``requested_max_bytes()`` (``TANDEM_SUFFIX_MEMORY``,
  MiB); ``substitutions=False`` learns no edits.
- ``reset(prompt, sampling)``: a reply starts. When ``prompt`` extends the text indexed so far
  (the next turn of the same conversation: old prompt + reply + new turn) only the new tokens
  are indexed; otherwise the context index is rebuilt (O(prompt), far below the prefill).
- ``propose(context, k) -> Draft``: indexes the tokens appended since the last call (the loop
  passes prompt + accepted tokens; calls may be skipped, the index catches up), then drafts at
  most ``k`` tokens. After each call ``confidences[i]`` is the estimated probability that token
  i is accepted given that tokens < i were (the base class's meaning), ``path_confidences[i]``
  their running product (the probability that tokens 0..i are all accepted) and ``last`` a
  ``SuffixProposal`` (source, match length, support count, expected accepted tokens). The
  context, the scope's store and the *resume points* are searched; the draft with more
  expected accepted tokens wins (counts of the sources are not merged).
- ``accepted(n_accepted, n_drafted)``: learns how often drafts are accepted, per source (one
  scale for all) and per (match length, support), under the current scope. A policy that
  verifies only the first j drafted tokens passes ``n_drafted=j``.
- ``scope(name)``: which cross-conversation store ``propose`` consults (default ``""``), and
  whose learned acceptance it drafts with (an agent's tool-driven turns are not calibrated on
  plain chat, nor the reverse; at most 64 scopes keep theirs, a new one starts from the
  prior); ``scope_key(system_prompt)`` makes a name. ``remember(tokens, scope=None)`` adds a
  finished reply or request (target token ids) to a store; ``forget(scope=None)`` drops one or all.
  ``new_prompt_tokens()``: the part of the last ``reset`` prompt that was new to the context
  index — the new turn when the prompt extended the previous context, else the whole prompt.
  After a reply, ``remember(new_prompt_tokens())`` and ``remember(reply)`` store each turn
  once; remembering every whole prompt would store a conversation's history again each turn
  (quadratic memory, and counts inflated by copies of the same text).
- ``memory_bytes()``: the measured size of every index and store (O(size): for tests and the
  bench); ``estimated_bytes()`` what the budget counts (O(1)). The total is kept under
  ``max_bytes`` by evicting the oldest remembered documents (any scope) and, for a context
  larger than half the budget, indexing only its recent part.

Length choice. Drafting walks forward from the matched state, taking at each step the
continuation that followed most often (ties: the most recent). Token i gets the confidence
``rate(m, c) * c / n``: ``c / n`` is how often that continuation followed the matched text
(c of n continuations), and ``rate(m, c)`` the measured acceptance of drafts whose matched
length was m (= match length + i) and support c, starting from a prior (longer and more
frequent → higher) and learned from ``accepted``. The draft stops at k, at a token whose
confidence is below ``min_confidence``, where the running product drops below
``min_path_confidence``, or where the continuation runs out. So a long, frequent match earns
a long draft, a short or ambiguous one a short draft or none, and novel text none (the match
must be at least ``min_match`` tokens). ``k`` is only a ceiling: the adaptive policy asks for a
full window with both thresholds at 0 and cuts the draft where the next token no longer pays
by ``path_confidences`` (``knows_path_confidence``); a fixed window keeps the rule above.

Resume point. After an edit (``path`` → ``path: str``) the reply usually goes on copying its
source from just past the edit, but the tail there (``)``) is short and occurs all over the
text, so the longest match alone picks some other ``)``. The drafter therefore remembers where
the last copy it drafted from the context left off — read from the context itself: how many
tokens the reply took from that source — and also matches the context's end (up to 8 tokens)
within a few tokens of that place, the longest local match winning, then the nearest. Such a
draft is a copy from the context with no ambiguity (support 1 of 1) and is costed with the
context's learned rates. On the edit prompts' greedy replies, at a fixed window of 8 with no
length cut, it raised accepted tokens per step by 8–22% over the longest match alone. The
last three such places are kept (latest first): a reply that reformats a tool's table as
records copies each record's field names from its own previous record and the values from
the table, in turn, and the field name that follows a value is the one after the previous
record's value, not the latest one seen (the longest match's choice). A draft rejected at
its first token leaves a resume point one past it when it had matched at least 4 tokens (the
reply was copying, and changed the very next token).

Learned edits. When the reply leaves a copy (source text S rejected) and comes back to it
(a later copy from just past S, agreeing with the reply on at least two tokens), what it
wrote in between, R, is an edit it may make again: a rename (``history`` → ``transactions``
all through a class), a separator re-indented (``", "`` → ``",\n      "``). Later copies from
the context replay it: where the source ahead holds S, the draft holds R and goes on copying
past S, and the resume search also matches the context's end after R against the source
after S (the reply made the edit by itself). S and R are at most 8 tokens; a rule's first
token is drafted with its learned rate, (hits + 2) / (tries + 3); under 0.55 it is no longer
replayed (rejections, and the reply copying S where the rule would replace it, count as
tries). Text a rule would replace is never drafted as is while the rule stands. At most 32
rules, for the conversation of the context index (a new conversation forgets them). On the
first 20 edit prompts' greedy replies (a few renames) it changes little: H100 replay of auto
on edit-code 2.70× → 2.75× (the resume point after a first-token rejection: agent turns
1.87× → 1.93×). On edit-20 (a parameter and a loop variable renamed through a function) the
target passes at a fixed window of 8 go from 43 to 26 and the H100 replay from 2.36× to
3.54×; on a synthetic rename of 12 occurrences the passes halve.

Index: a suffix automaton per text (the context; one per store, documents joined by unique
separators so no match crosses two). Why an automaton and not a suffix tree: it is built
online in O(1) amortised work per appended token (no active point nor moving leaf ends as in
Ukkonen's tree), it has at most 2n states and 3n transitions, the longest suffix of the text
that occurred before is simply the suffix link of the last state, matching another text
(a store) costs amortised O(1) per token, and each state's occurrence count is exactly "how
often this continuation followed". Counts are kept online by walking the suffix-link chain of each
new state (a handful of states in natural text); the walk is capped (``walk_cap``) so a
degenerate run (one token repeated thousands of times) stays O(cap) per token — counts are
then lower bounds for the shortest strings. Not done: a tree of alternatives (the counts give
the second-best continuation for free, but verifying a tree needs tree attention in the
verify pass); a store that survives the process.
"""

from __future__ import annotations

import hashlib
import os
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from engine.drafters.base import Draft, Drafter
from engine.errors import TandemError
from engine.sampling import SamplingParams

# transition key = token * _K + state (0 <= state < _K). The state goes in the low bits: a
# dict probes from the hash's low bits, so keys that differ only above bit 32 would collide
_K = 1 << 32
_INT_BYTES = 32  # one int object (CPython, up to 2**60); dict keys and values are ints

# confidence cells: matched length m (bucket upper bounds) x support c (bucket upper bounds)
_M_BOUNDS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
_C_BOUNDS = (1, 2, 4)
_N_C = len(_C_BOUNDS) + 1
_PRIOR_WEIGHT = 3.0  # observations a cell needs before its own rate outweighs the prior
_SCALE_WEIGHT = 2.0  # expected rejections the error scale starts from
_MAX_RATE = 0.995
# evidence is halved past these weights, so the estimates keep adapting
_CELL_WINDOW, _SCALE_WINDOW = 64.0, 16.0
_SOURCES = ("context", "store")
# where the last accepted copy left off, the resume search looks this far back and ahead
_RESUME_BACK, _RESUME_AHEAD, _RESUME_MAX_MATCH = 8, 48, 8
_RESUME_POINTS = 3  # copies followed in different places (a template and its values) kept
# edits learned as substitutions: each side at most this many tokens, at most this many kept
_RULE_MAX_TOKENS, _MAX_RULES = 8, 32
_RULE_PRIOR = (2.0, 3.0)  # a new rule's rate: (hits + 2) / (tries + 3)
_RULE_NEXT = 0.95  # a replacement's later tokens, given its first was accepted
_RULE_MIN_RATE = 0.55  # a rule under this rate is no longer replayed
_LEFT_MIN_MATCH = 4  # a draft rejected at once left a copy if it matched this many
_RATED_SCOPES = 64  # scopes whose learned acceptance is kept (least recently used goes)


DEFAULT_MAX_MIB = 64
MAX_MIB = 16384


def requested_max_bytes() -> int:
    """``TANDEM_SUFFIX_MEMORY``: the bound on everything the suffix drafter keeps (the
    conversation's index, remembered replies and API requests), in MiB; default 64."""
    raw = os.environ.get("TANDEM_SUFFIX_MEMORY", "").strip()
    if not raw:
        return DEFAULT_MAX_MIB * 2**20
    try:
        mib = float(raw)
    except ValueError:
        mib = float("nan")
    if not 1 <= mib <= MAX_MIB:  # also false for nan
        raise TandemError(f"TANDEM_SUFFIX_MEMORY must be a size in MiB from 1 to {MAX_MIB} "
                          f"(default {DEFAULT_MAX_MIB}), not {raw!r}")
    return int(mib * 2**20)


def scope_key(system_prompt: str) -> str:
    """A store name for requests that share ``system_prompt``."""
    return hashlib.sha256(system_prompt.encode("utf-8")).hexdigest()[:16]


class SuffixAutomaton:
    """Suffix automaton of one growing token text, with occurrence counts per state.

    State 0 is the root. ``count[s]``: end positions of the state's strings (occurrences);
    ``last_end[s]``: the latest of them. Transitions live in one dict (key = token * _K +
    state → edge id) plus per-state edge lists, so children can be enumerated."""

    def __init__(self, walk_cap: int = 64) -> None:
        self.walk_cap = max(1, walk_cap)
        self.link = array("i", [-1])
        self.length = array("i", [0])
        self.count = array("i", [0])
        self.last_end = array("i", [-1])
        self.first_edge = array("i", [-1])
        self.edge_next = array("i")
        self.edge_child = array("i")
        self.edge_token = array("i")
        self.trans: dict[int, int] = {}
        self.last = 0
        self.size = 0  # tokens appended
        self.truncated = 0  # count walks stopped by walk_cap

    def _state(self, length: int) -> int:
        self.link.append(-1)
        self.length.append(length)
        self.count.append(0)
        self.last_end.append(-1)
        self.first_edge.append(-1)
        return len(self.length) - 1

    def _edge(self, state: int, token: int, child: int) -> None:
        edge = len(self.edge_child)
        self.edge_next.append(self.first_edge[state])
        self.edge_child.append(child)
        self.edge_token.append(token)
        self.first_edge[state] = edge
        self.trans[token * _K + state] = edge

    def append(self, token: int) -> None:
        link, length, trans, edge_child = self.link, self.length, self.trans, self.edge_child
        cur = self._state(length[self.last] + 1)
        p = self.last
        while p != -1 and token * _K + p not in trans:
            self._edge(p, token, cur)
            p = link[p]
        if p == -1:
            link[cur] = 0
        else:
            q = edge_child[trans[token * _K + p]]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                clone = self._state(length[p] + 1)
                edge = self.first_edge[q]
                while edge != -1:
                    self._edge(clone, self.edge_token[edge], edge_child[edge])
                    edge = self.edge_next[edge]
                link[clone] = link[q]
                self.count[clone] = self.count[q]
                self.last_end[clone] = self.last_end[q]
                while p != -1:
                    edge = trans[token * _K + p]
                    if edge_child[edge] != q:
                        break
                    edge_child[edge] = clone
                    p = link[p]
                link[q] = link[cur] = clone
        self.last = cur
        # every suffix of the text gains this end position: they are cur's suffix-link chain
        count, last_end, end, state = self.count, self.last_end, self.size, cur
        for _ in range(self.walk_cap):
            if state <= 0:
                break
            count[state] += 1
            last_end[state] = end
            state = link[state]
        else:
            if state > 0:
                self.truncated += 1
        self.size += 1

    def extend(self, tokens: Iterable[int]) -> None:
        for token in tokens:
            self.append(token)

    def follow(self, state: int, token: int) -> int:
        """The state reached when ``token`` follows ``state``'s strings, or -1 if it never did."""
        edge = self.trans.get(token * _K + state)
        return -1 if edge is None else self.edge_child[edge]

    def step(self, state: int, matched: int, token: int) -> tuple[int, int]:
        """Matching another text: the state and length of its longest suffix found here once
        ``token`` follows a suffix that was at ``state`` with ``matched`` tokens."""
        trans, link, length = self.trans, self.link, self.length
        while True:
            edge = trans.get(token * _K + state)
            if edge is not None:
                return self.edge_child[edge], matched + 1
            if state == 0:
                return 0, 0
            state = link[state]
            matched = length[state]

    def repeated_suffix(self) -> tuple[int, int]:
        """State and length of the longest suffix of the text that also occurs earlier."""
        state = self.link[self.last] if self.last else 0  # the root's link is -1
        return state, self.length[state]

    def estimate_bytes(self) -> int:
        """O(1) estimate of ``measured_bytes`` (used for the budget)."""
        items = 5 * len(self.length) + 3 * len(self.edge_child)
        return int(4.3 * items) + sys.getsizeof(self.trans) + 2 * _INT_BYTES * len(self.trans)

    def measured_bytes(self) -> int:
        arrays = (self.link, self.length, self.count, self.last_end, self.first_edge,
                  self.edge_next, self.edge_child, self.edge_token)
        return (sum(sys.getsizeof(a) for a in arrays) + sys.getsizeof(self.trans)
                + sum(sys.getsizeof(k) + sys.getsizeof(v) for k, v in self.trans.items()))


class _Store:
    """Remembered documents of one scope and the automaton over them."""

    def __init__(self, walk_cap: int) -> None:
        self.walk_cap = walk_cap
        self.docs: list[tuple[int, array]] = []  # (sequence number, tokens), oldest first
        self.index = SuffixAutomaton(walk_cap)
        self.version = 0
        self.doc_bytes = 0

    def add(self, seq: int, doc: array) -> None:
        self.docs.append((seq, doc))
        self.doc_bytes += 64 + 4 * len(doc)
        self.index.extend(doc)
        self.index.append(-1 - seq % (1 << 31))  # a separator no text contains
        self.version += 1

    def rebuild(self, keep: list[tuple[int, array]]) -> None:
        self.docs, self.index, self.doc_bytes = [], SuffixAutomaton(self.walk_cap), 0
        for seq, doc in keep:
            self.add(seq, doc)

    def estimate_bytes(self) -> int:
        return self.index.estimate_bytes() + self.doc_bytes

    def measured_bytes(self) -> int:
        return (self.index.measured_bytes() + sys.getsizeof(self.docs)
                + sum(sys.getsizeof(doc) + 56 + _INT_BYTES for _, doc in self.docs))


@dataclass
class _Chain:
    """A draft being built: tokens, their conditional and running confidences, and per token
    what ``accepted`` learns from (source, cell, c / n, the prior's error)."""

    tokens: list[int] = field(default_factory=list)
    conf: list[float] = field(default_factory=list)
    path: list[float] = field(default_factory=list)
    cells: list[tuple[int, int, float, float] | None] = field(default_factory=list)  # None:
    # a rule's token (what it teaches goes to the rule)
    after: list[int] = field(default_factory=list)  # context position each token's copy
    # goes on from (the source token after it)
    spans: list[tuple[int, int, _Rule]] = field(default_factory=list)  # tokens [i, j) a
    # rule replaced


@dataclass
class _Rule:
    """An edit the reply made to text it copied (``source`` replaced by ``replacement``),
    replayed in later copies; its rate is learned from the drafts that replayed it."""

    source: tuple[int, ...]
    replacement: tuple[int, ...]
    hits: float = 0.0
    tries: float = 0.0

    @property
    def rate(self) -> float:
        return (self.hits + _RULE_PRIOR[0]) / (self.tries + _RULE_PRIOR[1])


@dataclass(frozen=True)
class SuffixProposal:
    """What the last ``propose`` found (for the window policy and the statistics)."""

    source: str = ""  # "context", "store" or "" (no usable match)
    match_length: int = 0  # tokens of the context's end matched
    support: int = 0  # how often the first drafted token followed the match
    expected_accepted: float = 0.0  # sum of path_confidences
    substitutions: int = 0  # learned edits replayed in the draft


class SuffixDrafter(Drafter):
    name = "suffix"
    confidence_rule = "stop-before"
    knows_path_confidence = True

    def __init__(self, max_bytes: int = 64 * 2**20, min_match: int = 2,
                 min_path_confidence: float = 0.5, min_confidence: float = 0.0,
                 walk_cap: int = 64, substitutions: bool = True) -> None:
        self.max_bytes, self.min_match, self.walk_cap = max_bytes, min_match, walk_cap
        self.substitutions = substitutions
        self.min_path_confidence, self.min_confidence = min_path_confidence, min_confidence
        self.own_thresholds = (min_confidence, min_path_confidence)
        self.confidences: list[float] = []
        self.path_confidences: list[float] = []
        self.last = SuffixProposal()
        self._context = SuffixAutomaton(walk_cap)
        self._text = array("i")  # the context tokens indexed, from context position _base
        self._base = 0
        self._prompt_new = (0, 0)  # context positions of the last prompt's new tokens
        self._stores: dict[str, _Store] = {}
        self._scope = ""
        self._seq = 0
        self._match = (0, 0, 0, -1, "")  # store matcher: state, length, tokens fed, version, scope
        # acceptance learned per scope (most recently used last), and the current scope's
        self._scope_rates: dict[str, list[dict]] = {}
        self._rates = self._rates_for("")
        # the last draft: followed by the next proposal; scored by ``accepted`` (once)
        self._draft = self._unscored = _Chain()
        # the last draft: the context position its tokens were copied from (-1: none, or
        # from a store) and the context length it was proposed at (its match length: last)
        self._copied_from, self._copied_at = -1, 0
        # context positions where the last copies the reply followed go on, latest first
        self._resumes: list[int] = []
        # where the reply last left a copy (source position, context position), until it
        # comes back to it; and the edits learned that way, by their source's first token
        self._left: tuple[int, int] | None = None
        self._rules: dict[int, list[_Rule]] = {}

    # --- the Drafter interface -------------------------------------------------------------

    def reset(self, prompt: Sequence[int], sampling: SamplingParams | None = None) -> None:
        n, base = len(self._text), self._base
        new_from = base + n
        if not (len(prompt) >= base + n and array("i", prompt[base:base + n]) == self._text):
            self._reindex(prompt, len(prompt))
            self._rules = {}  # another conversation's edits
            new_from = 0
        self._sync(prompt)
        self._prompt_new = (new_from, len(prompt))
        self._copied_from, self._resumes, self._left = -1, [], None

    def propose(self, context: Sequence[int], k: int) -> Draft:
        self._sync(context)
        self._follow_copy(context)
        self.confidences, self.path_confidences = [], []
        self._draft = self._unscored = _Chain()
        self.last = SuffixProposal()
        if k <= 0:
            return Draft()
        state, matched = self._context.repeated_suffix()
        candidates = [self._walk(0, self._context, state, matched, k)]
        if self._resumes:
            candidates.append(self._resume_walk(k))
        if self._rules:
            candidates = [self._substituted(*c, k) for c in candidates]
        store = self._stores.get(self._scope)
        if store is not None and store.docs:
            state, matched = self._match[:2]
            candidates.append(self._walk(1, store.index, state, matched, k))
        best = candidates[0]
        for other in candidates[1:]:
            if other[0].expected_accepted > best[0].expected_accepted:
                best = other
        self.last, chain, start = best
        self._draft = self._unscored = chain
        self.confidences, self.path_confidences = chain.conf, chain.path
        self._copied_from, self._copied_at = start, len(context)
        return Draft(chain.tokens)

    def accepted(self, n_accepted: int, n_drafted: int) -> None:
        draft, self._unscored = self._unscored, _Chain()
        for i, j, rule in draft.spans:  # a replayed edit: accepted, or rejected in it
            if n_accepted >= j or i <= n_accepted < min(j, n_drafted):
                rule.tries += 1
                rule.hits += n_accepted >= j
        for i, cell_stats in enumerate(draft.cells[:n_drafted]):
            ok = i < n_accepted
            if cell_stats is None:  # a rule's token
                if not ok:
                    break
                continue
            source, cell, freq, error = cell_stats
            # P(accepted) = rate * freq: the rate is accepted / sum(freq), and the rejections
            # beyond those the frequency explains, sum(freq - ok), estimate scale * error
            rates = self._rates[source]
            for stats, seen, weight, window in (
                    (rates["cells"][cell], ok, freq, _CELL_WINDOW),
                    (rates["scale"], freq - ok, error * freq, _SCALE_WINDOW)):
                stats[0] += seen
                stats[1] += weight
                if stats[1] > window:
                    stats[0], stats[1] = stats[0] / 2, stats[1] / 2
            if not ok:
                break

    # --- cross-conversation stores ---------------------------------------------------------

    def scope(self, name: str) -> None:
        """Consult the store ``name`` from now on (a name never remembered into is empty), and
        draft with the acceptance learned under it."""
        self._scope = name
        self._rates = self._rates_for(name)

    def remember(self, tokens: Sequence[int], scope: str | None = None) -> None:
        """Add a finished reply or request (target token ids) to a scope's store."""
        if not tokens:
            return
        name = self._scope if scope is None else scope
        store = self._stores.setdefault(name, _Store(self.walk_cap))
        # one document may take at most a quarter of the budget (its most recent part)
        limit = max(1, self.max_bytes // (4 * self._bytes_per_token()))
        self._seq += 1
        store.add(self._seq, array("i", tokens[-limit:]))
        self._enforce_budget()

    def forget(self, scope: str | None = None) -> None:
        """Drop one scope's store, or every store."""
        if scope is None:
            self._stores.clear()
        else:
            self._stores.pop(scope, None)

    def new_prompt_tokens(self) -> list[int]:
        """The tokens of the last ``reset`` prompt that the context index did not hold yet."""
        start, end = self._prompt_new
        if start < self._base:  # the context index was trimmed since: its oldest part is gone
            return list(self._text[:end - self._base]) if end > self._base else []
        return list(self._text[start - self._base:end - self._base])

    def estimated_bytes(self) -> int:
        """What the budget counts: every index and store, estimated in O(1)."""
        return self._local_bytes() + sum(s.estimate_bytes() for s in self._stores.values())

    def memory_bytes(self) -> int:
        """Measured size (sys.getsizeof of every container and int) of all indexes."""
        return (self._context.measured_bytes() + sys.getsizeof(self._text)
                + sum(store.measured_bytes() for store in self._stores.values()))

    # --- internals -------------------------------------------------------------------------

    def _rates_for(self, scope: str) -> list[dict]:
        """The acceptance learned under ``scope``, per source: [rejections seen, rejections the
        prior predicted] scales the prior's error for every cell at once; [accepted, weight]
        per (length, support) cell refines it where a cell has evidence of its own. A scope
        not seen yet (or evicted: at most ``_RATED_SCOPES``) starts from the prior."""
        rates = self._scope_rates.pop(scope, None) or [
            {"scale": [_SCALE_WEIGHT, _SCALE_WEIGHT],
             "cells": [[0.0, 0.0] for _ in range((len(_M_BOUNDS) + 1) * _N_C)]}
            for _ in _SOURCES]
        self._scope_rates[scope] = rates
        if len(self._scope_rates) > _RATED_SCOPES:
            del self._scope_rates[next(iter(self._scope_rates))]
        return rates

    def _confidence(self, source: int, matched: int, support: int, total: int) -> float:
        rates = self._rates[source]
        seen, predicted = rates["scale"]
        prior = 1.0 - max(seen / predicted, 0.02) * _prior_error(matched, support)
        accepted, weight = rates["cells"][_cell(matched, support)]
        rate = (_PRIOR_WEIGHT * prior + accepted) / (_PRIOR_WEIGHT + weight)
        return min(max(rate, 0.0), _MAX_RATE) * support / total

    def _walk(self, source: int, index: SuffixAutomaton, state: int, matched: int, k: int):
        """Follow the most frequent continuation from ``state`` for up to ``k`` tokens."""
        chain = _Chain()
        support = 0
        if matched >= self.min_match:
            count, last_end, edge_next = index.count, index.last_end, index.edge_next
            edge_child, edge_token = index.edge_child, index.edge_token
            for i in range(k):
                best, best_count, best_end, total = -1, 0, -1, 0
                edge = index.first_edge[state]
                while edge != -1:
                    child = edge_child[edge]
                    c = count[child]
                    total += c
                    if c > best_count or (c == best_count and last_end[child] > best_end):
                        best, best_count, best_end = edge, c, last_end[child]
                    edge = edge_next[edge]
                if best < 0 or edge_token[best] < 0:  # nothing followed, or a document ended
                    break
                if not self._extend(chain, source, matched + i, best_count, total,
                                    edge_token[best], -1):
                    break
                support = support or best_count
                state = edge_child[best]
        tokens = chain.tokens
        stats = SuffixProposal(_SOURCES[source] if tokens else "", matched if tokens else 0,
                               support, sum(chain.path))
        start = -1
        if source == 0 and tokens:  # the latest occurrence of what was drafted
            start = self._base + index.last_end[state] - len(tokens) + 1
            chain.after = list(range(start + 1, start + 1 + len(tokens)))
        return stats, chain, start

    def _follow_copy(self, context: Sequence[int]) -> None:
        """Move a resume point along the last draft's source by as many tokens as the
        context took from it since (read from the context, so it does not matter which calls
        were skipped nor how much of the draft was verified); a context that did not follow
        that source at all keeps the earlier resume points. Where the context leaves the copy,
        the place is kept until it comes back to a copy from nearby (an edit is learned then)."""
        start, at, draft = self._copied_from, self._copied_at, self._draft
        self._copied_from = -1
        if start < self._base or at > len(context):
            return
        text, base = self._text, self._base
        n = 0  # tokens the context took from the draft, then from the source past it
        while (n < len(draft.tokens) and at + n < len(context)
               and context[at + n] == draft.tokens[n]):
            n += 1
        source = draft.after[n - 1] if n else start  # where the copy goes on
        if n == len(draft.tokens):
            while (at + n < len(context) and source - base < len(text)
                   and context[at + n] == text[source - base]):
                rule = self._rule_at(source - base) if self._rules else None
                if rule and tuple(context[at + n:at + n + len(rule.source)]) == rule.source:
                    rule.tries += 1  # the reply copied what a learned edit would replace
                n += 1
                source += 1
        diverged = at + n < len(context)
        left_at_once = diverged and self.last.match_length >= _LEFT_MIN_MATCH
        if n and self._left is not None:
            self._learn_edit(context, start, at, n)
        if diverged and any(i <= n < j for i, j, _ in draft.spans):
            self._left = None  # a replayed edit was wrong: no new one to learn here
        elif diverged and n or left_at_once:
            self._left = (source, at + n)
        if n or left_at_once:
            # diverged (a word replaced, text inserted): the copy is likely to go on near one
            # token past the divergence; copied all along: exactly where it stopped
            point = source + diverged
            # a point whose search window this one covers is the same copy, further on
            self._resumes = [point, *(q for q in self._resumes
                                      if not point - _RESUME_BACK <= q <= point + _RESUME_AHEAD)
                             ][:_RESUME_POINTS]

    def _learn_edit(self, context: Sequence[int], start: int, at: int, n: int) -> None:
        """The reply came back to a copy it had left (``n`` tokens taken from a draft copied
        from ``start``): what it wrote instead of the source text it skipped is an edit it may
        make again (a rename, a re-indented separator)."""
        left_source, left_at = self._left
        text, base = self._text, self._base
        if left_source < base:  # the index was trimmed past it since
            self._left = None
            return
        j = 0  # the tokens before this copy that already agree with its source
        while (start - 1 - j >= left_source and at - 1 - j >= left_at
               and context[at - 1 - j] == text[start - 1 - j - base]):
            j += 1
        if n + j < 2:  # one token in common is no evidence of coming back
            return
        self._left = None
        source = tuple(text[left_source - base:start - j - base])
        replacement = tuple(context[left_at:at - j])
        if (self.substitutions and 0 < len(source) <= _RULE_MAX_TOKENS
                and 0 < len(replacement) <= _RULE_MAX_TOKENS and source != replacement):
            self._learn_rule(source, replacement)

    def _resume_walk(self, k: int):
        """Copy from where an accepted copy left off. After an edit (a word replaced, a type
        hint added) the reply usually goes on copying its source from just past the edit,
        while the longest match of a short tail such as ``):`` is anywhere else: so the
        context's end is matched again only near the resume points, and the longest local
        match wins, then the latest point's, then the nearest to it. Several points: a reply
        that fills a template (its own earlier records) with values (a table in the prompt)
        copies from two places in turn."""
        text, base, end = self._text, self._base, len(self._text)
        last = text[-1]
        # learned edits the context just made: their source text is matched as their output
        made = [(rule.source, len(rule.replacement)) for rules in self._rules.values()
                for rule in rules if rule.replacement[-1] == last
                and rule.rate >= _RULE_MIN_RATE
                and tuple(text[end - len(rule.replacement):]) == rule.replacement]
        best, best_len, best_point, distance = -1, 0, -1, 0
        for point in self._resumes:
            resume = point - base
            for e in range(max(1, resume - _RESUME_BACK), min(end - 1, resume + _RESUME_AHEAD) + 1):
                if text[e - 1] == last:  # e: where the copied tokens would start
                    n = _common_tail(text, e, end, _RESUME_MAX_MATCH)
                elif made:  # or where they go on after a learned edit's source
                    n = max((min(made_len + _common_tail(text, e - len(source), end - made_len,
                                                         _RESUME_MAX_MATCH), _RESUME_MAX_MATCH)
                             for source, made_len in made
                             if tuple(text[e - len(source):e]) == source), default=0)
                    if not n:
                        continue
                else:
                    continue
                if n > best_len or (n == best_len and point == best_point
                                    and abs(e - resume) < distance):
                    best, best_len, best_point, distance = e, n, point, abs(e - resume)
        chain = _Chain()
        for i in range(min(k, end - best) if best >= 0 else 0):
            # a copy from the context, costed with its rates
            if not self._extend(chain, 0, best_len + i, 1, 1, text[best + i], base + best + i + 1):
                break
        tokens = chain.tokens
        stats = SuffixProposal("resume" if tokens else "", best_len if tokens else 0,
                               1 if tokens else 0, sum(chain.path))
        return stats, chain, base + best if tokens else -1

    def _substituted(self, stats: SuffixProposal, chain: _Chain, start: int, k: int):
        """A copy from the context (``start``: its first token's position) with the learned
        edits replayed: where the source ahead holds a rule's text, its replacement is drafted
        and the copy goes on past that text. Tokens before the first rule are the draft as it
        was; a rule's first token gets the rule's rate, the copy after it a resume's."""
        if start < 0:
            return stats, chain, start
        text, base = self._text, self._base
        # the first rule in the draft's span (or right after it, room allowing)
        first = next((i for i in range(min(len(chain.tokens) + 1, k))
                      if start - base + i < len(text) and self._rule_at(start - base + i)), -1)
        if first < 0:
            return stats, chain, start
        out = _Chain(chain.tokens[:first], chain.conf[:first], chain.path[:first],
                     chain.cells[:first], chain.after[:first])
        s, fired = start - base + first, 0
        while len(out.tokens) < k and s < len(text):
            rule = self._rule_at(s)
            if rule is not None:  # the source text here was edited before: never draft it
                at = len(out.tokens)
                for i, token in enumerate(rule.replacement[:k - at]):
                    if not self._push(out, rule.rate if i == 0 else _RULE_NEXT, token, None,
                                      base + s + len(rule.source)):
                        break
                if len(out.tokens) == at:
                    break
                out.spans.append((at, len(out.tokens), rule))
                fired += 1
                if len(out.tokens) - at < len(rule.replacement):
                    break  # cut inside the replacement: the copy cannot go on past its source
                s += len(rule.source)
            elif self._extend(out, 0, _RESUME_MAX_MATCH + len(out.tokens), 1, 1, text[s],
                              base + s + 1):
                s += 1
            else:
                break
        if not out.tokens:
            return SuffixProposal(), out, -1
        return (SuffixProposal(stats.source, stats.match_length, stats.support, sum(out.path),
                               fired), out, start)

    def _rule_at(self, s: int) -> _Rule | None:
        """The learned edit whose source text starts at text position ``s`` (best rate)."""
        best = None
        text = self._text
        for rule in self._rules.get(text[s], ()):
            n = len(rule.source)
            if (rule.rate >= _RULE_MIN_RATE and s + n <= len(text)
                    and tuple(text[s:s + n]) == rule.source
                    and (best is None or rule.rate > best.rate)):
                best = rule
        return best

    def _learn_rule(self, source: tuple[int, ...], replacement: tuple[int, ...]) -> None:
        for rule in self._rules.get(source[0], ()):
            if rule.source == source and rule.replacement == replacement:
                rule.hits += 1  # the same edit again, made without a draft
                rule.tries += 1
                return
        if sum(map(len, self._rules.values())) >= _MAX_RULES:  # make room: drop the worst
            worst = min((r for rs in self._rules.values() for r in rs), key=lambda r: r.rate)
            self._rules[worst.source[0]].remove(worst)
            if not self._rules[worst.source[0]]:
                del self._rules[worst.source[0]]
        self._rules.setdefault(source[0], []).append(_Rule(source, replacement))

    def _extend(self, chain: _Chain, source: int, matched: int, support: int, total: int,
                token: int, after: int) -> bool:
        """Append ``token`` (it followed ``support`` of ``total`` times after ``matched``
        tokens) unless its confidence or the draft's falls under the thresholds."""
        return self._push(chain, self._confidence(source, matched, support, total), token,
                          (source, _cell(matched, support), support / total,
                           _prior_error(matched, support)), after)

    def _push(self, chain: _Chain, p: float, token: int, cell, after: int) -> bool:
        prob = (chain.path[-1] if chain.path else 1.0) * p
        if p < self.min_confidence or prob < self.min_path_confidence:
            return False
        chain.tokens.append(token)
        chain.conf.append(p)
        chain.path.append(prob)
        chain.cells.append(cell)
        chain.after.append(after)
        return True

    def _sync(self, context: Sequence[int]) -> None:
        """Index the context tokens not indexed yet; bring the store matcher up to date."""
        end = self._base + len(self._text)
        if len(context) < end or (self._text and context[end - 1] != self._text[-1]):
            self._reindex(context, len(context))  # not an extension (a caller error): rebuild
            self._copied_from, self._resumes, self._left, self._rules = -1, [], None, {}
        elif len(context) > end:
            new = context[end:]
            self._text.extend(new)
            self._context.extend(new)
            if self._local_bytes() > self.max_bytes // 2:
                self._reindex(context, len(context))
            self._enforce_budget()
        store = self._stores.get(self._scope)
        if store is None:
            return
        state, matched, fed, version, scope = self._match
        if version != store.version or scope != self._scope or fed > len(context):
            state, matched, fed = 0, 0, 0
        step = store.index.step
        for token in context[fed:]:
            state, matched = step(state, matched, token)
        self._match = (state, matched, len(context), store.version, self._scope)

    def _reindex(self, context: Sequence[int], end: int) -> None:
        """Index ``context[:end]`` afresh, only its recent part if it would not fit."""
        keep = max(1, self.max_bytes // (4 * self._bytes_per_token()))
        self._base = max(0, end - keep)
        self._text = array("i", context[self._base:end])
        self._context = SuffixAutomaton(self.walk_cap)
        self._context.extend(self._text)
        self._match = (0, 0, 0, -1, "")

    def _local_bytes(self) -> int:
        return self._context.estimate_bytes() + 64 + 4 * len(self._text)

    def _bytes_per_token(self) -> int:
        sizes = [(s.estimate_bytes(), s.index.size) for s in self._stores.values()]
        sizes.append((self._local_bytes(), self._context.size))
        total, tokens = map(sum, zip(*sizes))
        return max(200, total // tokens) if tokens > 1000 else 400

    def _enforce_budget(self) -> None:
        """Evict the oldest documents (any scope) until the total is under 3/4 of the budget
        (so the rebuilds this costs are amortised over a quarter of the budget)."""
        if self.estimated_bytes() <= self.max_bytes:
            return
        per_token = self._bytes_per_token()
        docs = sorted((seq, name, doc) for name, s in self._stores.items() for seq, doc in s.docs)
        room = 3 * self.max_bytes // 4 - self._local_bytes()
        kept: dict[str, list[tuple[int, array]]] = {name: [] for name in self._stores}
        for seq, name, doc in reversed(docs):
            room -= per_token * (len(doc) + 1) + 64
            if room < 0:
                break
            kept[name].append((seq, doc))
        for name, docs_kept in kept.items():
            store = self._stores[name]
            if len(docs_kept) < len(store.docs):
                store.rebuild(docs_kept[::-1])
        for name in [name for name, store in self._stores.items() if not store.docs]:
            del self._stores[name]


def _prior_error(m: int, c: int) -> float:
    """Rejection rate before any evidence: longer matches and more frequent continuations are
    more often right (about 0.43 for two matched tokens seen once, 0.16 for eight)."""
    return 1.5 / (m + 1.5) / c ** 0.5


def _common_tail(text: array, a: int, b: int, limit: int) -> int:
    """How many tokens before positions ``a`` and ``b`` of ``text`` agree (at most ``limit``)."""
    n = 0
    while n < limit and n < a and n < b and text[a - 1 - n] == text[b - 1 - n]:
        n += 1
    return n


def _cell(matched: int, support: int) -> int:
    return bisect_left(_M_BOUNDS, matched) * _N_C + bisect_left(_C_BOUNDS, support)
