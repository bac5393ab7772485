"""Drafting with a small model that shares the target's vocabulary.

The draft model keeps its own KV cache. Before each proposal it is brought in step with the
accepted text by comparing token lists: the common prefix stays, the rest (normally the one or
two tokens accepted since the last call) is evaluated. It drafts greedily at temperature 0
(stopping early when its own confidence falls below ``min_confidence``) and samples from its
tempered distribution otherwise, reporting that distribution for rejection sampling.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.drafters.base import Draft, Drafter
from engine.errors import ContextFull
from engine.runtime import Model, common_prefix
from engine.sampling import SamplingParams, confidence, distribution, draw


def sync_cache(model: Model, tokens: Sequence[int]) -> np.ndarray | None:
    """Make ``model``'s cache hold ``tokens`` (reusing the common prefix) and return the
    logits after the last one; None when a new token is one the model's vocabulary lacks (a
    native pair may differ in size by a few tokens: the target can emit one of those)."""
    keep = min(common_prefix(model.kv_tokens, tokens), len(tokens) - 1)
    new = list(tokens[keep:])
    if max(new) >= model.n_vocab:
        return None
    model.truncate(keep)
    return model.decode(new, logits="last")[0]


class ModelDrafter(Drafter):
    name = "draft-model"

    def __init__(self, model: Model, min_confidence: float = 0.0,
                 target_vocab: int | None = None) -> None:
        self.model = model
        self.min_confidence = min_confidence
        self.own_thresholds = (min_confidence, 0.0)
        # a native pair may differ in vocabulary size by up to 128 tokens (llama.cpp's rule):
        # draft only ids the target has, and give q over the target's vocabulary
        self.target_vocab = target_vocab or model.n_vocab
        self.sampling = SamplingParams()
        self.rng = np.random.default_rng(0)
        self.confidences: list[float] = []  # the draft's own probability of each token

    def reset(self, prompt: Sequence[int], sampling: SamplingParams) -> None:
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed + 1)

    def propose(self, context: Sequence[int], k: int) -> Draft:
        try:
            logits = sync_cache(self.model, context)
        except ContextFull:
            return Draft()
        if logits is None:
            return Draft()
        tokens, q_rows = self.draft_tokens(logits, k)
        return Draft(tokens, q_rows)

    def draft_tokens(self, logits: np.ndarray, k: int, logit_mask: np.ndarray | None = None
                     ) -> tuple[list[int], list[np.ndarray] | None]:
        """Draft up to ``k`` tokens (draft ids) from the draft's next-token ``logits``; when
        sampling, also the distribution each was drawn from. ``logit_mask`` (0 or -inf per
        draft id) restricts sampling to a subset of the vocabulary. An end-of-generation token
        is proposed like any other (the target must get its chance to end the reply there) and
        ends the draft."""
        tokens: list[int] = []
        q_rows: list[np.ndarray] | None = None if self.sampling.greedy else []
        self.confidences = []
        shared = min(self.target_vocab, self.model.n_vocab)
        while True:
            logits = logits[:shared]
            if self.sampling.greedy:
                token, conf = confidence(logits)
            else:
                masked = logits if logit_mask is None else logits + logit_mask[:shared]
                q = distribution(masked, self.sampling)
                token = draw(q, self.rng)
                conf = float(q[token])
                if shared < self.target_vocab:
                    q = np.concatenate([q, np.zeros(self.target_vocab - shared)])
                q_rows.append(q)
            tokens.append(token)
            self.confidences.append(conf)
            if len(tokens) >= k or conf < self.min_confidence or self.model.is_eog(token):
                break
            try:
                logits = self.model.decode([token], logits="last")[0]
            except ContextFull:
                break
        return tokens, q_rows

    def close(self) -> None:
        self.model.close()
