"""The drafter interface (think transformers' candidate generators): ``propose`` the next
tokens, then ``accepted`` tells it how many the target kept."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.sampling import SamplingParams


@dataclass
class Draft:
    tokens: list[int] = field(default_factory=list)  # in the target's vocabulary
    # q_rows[i]: the distribution tokens[i] was drawn from (target vocabulary); None: one-hot
    q_rows: list[np.ndarray] | None = None

    def head(self, n: int) -> Draft:
        """The first ``n`` drafted tokens."""
        return Draft(self.tokens[:n], None if self.q_rows is None else self.q_rows[:n])


class Drafter:
    name = "none"
    # drafters that know their own confidence stop drafting below this (the window policy
    # fits it) and report the confidence of each proposed token; others ignore both
    min_confidence: float = 0.0
    confidences: Sequence[float] = ()
    # drafters that estimate the chance their whole draft is accepted stop once it falls below
    # this (the window policy sets it from what one more drafted token costs)
    min_path_confidence: float = 0.0
    # "keep-last": the token under min_confidence is proposed, then drafting stops (a draft
    # model, as llama.cpp's p_min); "stop-before": it is not proposed
    confidence_rule = "keep-last"
    # the drafter's own (min_confidence, min_path_confidence): what a fixed window restores
    # after an adaptive policy has set others
    own_thresholds: tuple[float, float] = (0.0, 0.0)
    # drafters whose proposals come with path_confidences[i] — their own calibrated estimate
    # of P(tokens 0..i all accepted) — let the adaptive policy cut each draft where the next
    # token stops paying for itself, instead of fixing a window beforehand
    knows_path_confidence = False
    path_confidences: Sequence[float] = ()

    def propose(self, context: Sequence[int], k: int) -> Draft:
        """Up to ``k`` tokens likely to follow ``context`` (prompt + everything accepted)."""
        return Draft()

    def accepted(self, n_accepted: int, n_drafted: int) -> None:
        """How many of the last proposal the target kept."""

    def prepare(self, messages: list[dict]) -> None:
        """The conversation about to be answered, as messages (a drafter that reads text in
        its own format needs them; others ignore them)."""

    def reset(self, prompt: Sequence[int], sampling: SamplingParams) -> None:
        """A new reply to ``prompt`` starts, sampled with ``sampling``."""

    def close(self) -> None:
        """Free resources (model contexts)."""

