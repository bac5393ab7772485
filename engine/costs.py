"""What a step of the decoding loop costs: the cost curve type, the costs the window choice
plans with, and the pass and draft times timed while answering (``LiveCosts``).

The window choice plans with what a pass really costs *inside the loop* — evaluation, reading
logits, acceptance, KV rollback and bookkeeping — not with llama.cpp's raw pass: at first the
calibrated raw curve plus the loop's measured overhead per step, then the running medians of
the steps the loop reported (``LiveCosts.observe`` is the loop's per-step callback), so a
calibration taken at an unlucky moment is corrected within a reply.

Not for: measuring (``engine.calibration``) or choosing (``engine.adaptive_window``).
"""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass

from engine.stats import StepStats

MAX_BATCH = 16
LOOKUP_DRAFTERS = ("ngram", "suffix")  # no model: drafting costs ~nothing until timed


@dataclass
class CostCurve:
    """Seconds for one target pass over n tokens (index n-1). Not forced to grow with n: on a
    GPU a 16-row pass can cost less than an 8-row one (matrix-matrix kernels from 9 rows)."""

    seconds: list[float]

    def verify(self, n: int) -> float:
        n = max(1, n)
        if n <= len(self.seconds):
            return self.seconds[n - 1]
        per_token = (self.seconds[-1] - self.seconds[0]) / max(len(self.seconds) - 1, 1)
        return self.seconds[-1] + per_token * (n - len(self.seconds))


@dataclass
class Costs:
    """What the window choice plans with: seconds of a step that evaluates n tokens, everything
    but drafting included, and each drafter's seconds per drafted token."""

    curve: CostCurve
    draft_token_seconds: dict[str, float]

    @property
    def plain_tok_per_s(self) -> float:
        return 1.0 / self.curve.verify(1)

    def draft_cost(self, drafter: str) -> float:
        """Seconds per drafted token; a drafter not in the table costs nothing if it is a
        lookup, else what the draft model costs (cost files time only "draft-model")."""
        if drafter in self.draft_token_seconds:
            return self.draft_token_seconds[drafter]
        if drafter in LOOKUP_DRAFTERS:
            return 0.0
        return self.draft_token_seconds.get("draft-model", 0.0)


class LiveCosts:
    """Step times observed while answering, per number of tokens evaluated, and draft times per
    token, per drafter (running medians, robust to hiccups)."""

    MIN_SAMPLES = 3
    # a running median that moved less than this share is not republished: the window choice
    # cannot tell the difference, and every republication makes the next choice rebuild its
    # cost model (on a GPU, a visible share of a 2 ms step)
    TOLERANCE = 0.01

    def __init__(self, window: int = 24) -> None:
        self._samples: dict[object, deque[float]] = {}  # tokens evaluated, or drafter name
        self._medians: dict[object, float] = {}  # published: what the costs are built from
        self._window = window
        self.version = 0  # counts republications: costs built at one version stay valid
        self._applied: tuple[Costs, int, Costs] | None = None  # planned, version, result

    def observe(self, step: StepStats) -> None:
        """One step of the decoding loop: its pass over drafted + 1 tokens (with everything
        else the step did but drafting) and, if it drafted, the draft's time per token."""
        if step.drafted + 1 <= MAX_BATCH and step.pass_seconds > 0:
            self._add(step.drafted + 1, step.pass_seconds)
        if step.drafted and step.draft_seconds > 0:
            self._add(step.drafter, step.draft_seconds / step.drafted)

    def _add(self, key: object, seconds: float) -> None:
        samples = self._samples.setdefault(key, deque(maxlen=self._window))
        samples.append(seconds)
        if len(samples) >= self.MIN_SAMPLES:
            median, published = statistics.median(samples), self._medians.get(key)
            if published is None or abs(median - published) > self.TOLERANCE * published:
                self._medians[key] = median
                self.version += 1

    def seen(self) -> dict[int, float]:
        """Median observed step time (without drafting), per size seen a few times."""
        return {n: self._medians[n] for n in range(1, MAX_BATCH + 1) if n in self._medians}

    def curve(self, planned: CostCurve) -> CostCurve:
        """Observed step times where known; elsewhere the planned time mapped through the
        observed ones (piecewise linear in planned cost, and past the ends along the line
        through the first and last seen points): a 2-token pass seen twice as dear as
        planned makes the longer, unseen ones dearer too."""
        seen = self.seen()
        points = sorted((planned.verify(n), median) for n, median in seen.items())
        return CostCurve([seen[n] if n in seen else _through(points, planned.verify(n))
                          for n in range(1, MAX_BATCH + 1)])

    def apply(self, planned: Costs) -> Costs:
        """``planned`` with what was seen while answering put in. A draft not yet timed keeps
        its planned cost relative to the target: scaled as one-token steps are (the machine's
        load and the context length slow both). The same object until a median is
        republished: a caller may key what it derives from the costs on their identity."""
        if self._applied and self._applied[0] is planned and self._applied[1] == self.version:
            return self._applied[2]
        curve = self.curve(planned.curve)
        scale = curve.seconds[0] / planned.curve.seconds[0]
        drafts = {name: self._medians.get(name, cost * scale)
                  for name, cost in planned.draft_token_seconds.items()}
        for name, median in self._medians.items():
            if isinstance(name, str):
                drafts[name] = median
        self._applied = (planned, self.version, Costs(curve, drafts))
        return self._applied[2]


def _through(points: list[tuple[float, float]], x: float) -> float:
    """y at x on the polyline through ``points`` (sorted by x); outside them, the line through
    the first and last points (one point: proportional). Not the end segment's own slope: a
    noisy last segment would make long, unseen passes look nearly free."""
    if not points:
        return x
    (first_x, first_y), (last_x, last_y) = points[0], points[-1]
    if len(points) == 1 or last_x == first_x:
        return last_y * x / last_x if last_x > 0 else last_y
    if x <= first_x or x >= last_x:
        slope = (last_y - first_y) / (last_x - first_x)
        return last_y + (x - last_x) * slope
    segment = next(i for i in range(1, len(points)) if x <= points[i][0])
    (x0, y0), (x1, y1) = points[segment - 1], points[segment]
    return y1 if x1 == x0 else y0 + (x - x0) * (y1 - y0) / (x1 - x0)
