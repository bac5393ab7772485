"""Window policies: which drafter runs at each step and how many tokens it drafts.

``FixedWindow`` always uses one drafter and drafts at most k tokens (the benchmark's fixed modes
and the UI's "fixed window"); drafters with a length rule of their own keep it. The adaptive
policy lives in ``engine.adaptive_window`` and implements the same methods.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.drafters.base import Draft, Drafter
from engine.sampling import SamplingParams
from engine.stats import MessageStats, StepStats


class WindowPolicy:
    def start(self, prompt: Sequence[int], sampling: SamplingParams) -> None:
        """A reply starts for ``prompt``."""

    def choose(self) -> tuple[Drafter, int]:
        raise NotImplementedError

    def draft(self, context: Sequence[int], room: int) -> tuple[Drafter, int, Draft]:
        """This step's drafter, the window asked of it and its draft of at most ``room``
        tokens after ``context`` (the prompt and everything accepted); an empty draft: a plain
        step."""
        drafter, k = self.choose()
        return drafter, k, drafter.propose(context, min(k, room)) if min(k, room) > 0 else Draft()

    def observe(self, step: StepStats) -> None:
        """The outcome of the step just run."""

    def note(self) -> str:
        """Why the policy chose what it chose (shown in the UI)."""
        return ""

    def finish(self, stats: MessageStats) -> None:
        """The reply is done."""


class FixedWindow(WindowPolicy):
    def __init__(self, drafter: Drafter, k: int) -> None:
        self.drafter, self.k = drafter, k

    def start(self, prompt: Sequence[int], sampling: SamplingParams) -> None:
        self.drafter.reset(prompt, sampling)
        # k is a ceiling: a drafter that knows its confidence keeps its own length rule (the
        # suffix drafter stops where P(all drafted accepted) < 0.5), not what auto last set
        self.drafter.min_confidence, self.drafter.min_path_confidence = self.drafter.own_thresholds

    def choose(self) -> tuple[Drafter, int]:
        return self.drafter, self.k

    def note(self) -> str:
        return f"fixed window {self.k}" if self.k else "speculation off"
