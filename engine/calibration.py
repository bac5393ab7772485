"""Measuring what speculation costs on this machine: the target's time for a batch of n tokens
(n = 1..16), each draft model's time per token, and the loop's per-step overhead. Cached per
(machine, model file, threads, GPU layers) in the user data directory.

Not for: deciding anything from the numbers (``engine.controller``).
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

from engine import paths
from engine.runtime import Model
from engine.stats import StepStats

BATCH_SIZES = (1, 2, 3, 4, 5, 6, 8, 12, 16)
MAX_BATCH = 16
WARMUP_TOKENS = 48


@dataclass
class CostCurve:
    """Seconds for one target pass over n tokens (index n-1), interpolated between the measured
    batch sizes."""

    seconds: list[float]

    def verify(self, n: int) -> float:
        n = max(1, n)
        if n <= len(self.seconds):
            return self.seconds[n - 1]
        per_token = (self.seconds[-1] - self.seconds[0]) / max(len(self.seconds) - 1, 1)
        return self.seconds[-1] + per_token * (n - len(self.seconds))


@dataclass
class Calibration:
    target: CostCurve
    draft_token_seconds: dict[str, float]  # per drafter name (n-gram: ~0)
    step_overhead: float  # Python time per step outside the model calls
    measured_at: float

    @property
    def plain_tok_per_s(self) -> float:
        """Plain decoding through Tandem's loop: one target pass plus the loop's overhead."""
        return 1.0 / (self.target.seconds[0] + self.step_overhead)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        data = json.loads(text)
        return cls(CostCurve(data["target"]["seconds"]), data["draft_token_seconds"],
                   data["step_overhead"], data["measured_at"])


def _model_key(model: Model) -> str:
    stat = model.path.stat()
    return (f"{model.path.name}:{stat.st_size}:{stat.st_mtime_ns}:{model.options.threads()}:"
            f"{model.options.gpu_layers()}")


def cache_path(target: Model, drafts: dict[str, Model]) -> Path:
    key = "|".join([platform.node(), platform.machine(), _model_key(target),
                    *sorted(f"{name}={_model_key(m)}" for name, m in drafts.items())])
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return paths.calibration_dir() / f"costs-{digest}.json"


def _warm_context(model: Model) -> list[int]:
    text = "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
    tokens = model.tokenize(text * 4)
    return tokens[:WARMUP_TOKENS]


def measure_target(model: Model, rounds: int = 3) -> CostCurve:
    """Median time of a pass over n tokens. Each round measures every batch size once, so a
    change in the machine's load during the measurement hits all sizes alike."""
    context = _warm_context(model)
    model.reset()
    model.decode(context, logits="none")
    base = len(model.kv_tokens)
    samples: dict[int, list[float]] = {n: [] for n in BATCH_SIZES}
    for _ in range(rounds):
        for n in BATCH_SIZES:
            model.truncate(base)
            start = time.perf_counter()
            model.verify_pass(context[:n])
            samples[n].append(time.perf_counter() - start)
    model.reset()
    measured = {n: statistics.median(values) for n, values in samples.items()}
    seconds = []
    sizes = sorted(measured)
    for n in range(1, MAX_BATCH + 1):
        lower = max(s for s in sizes if s <= n)
        upper = min(s for s in sizes if s >= n)
        if lower == upper:
            seconds.append(measured[n])
        else:
            w = (n - lower) / (upper - lower)
            seconds.append(measured[lower] * (1 - w) + measured[upper] * w)
    # a longer batch never costs less than a shorter one in the model (noise aside)
    for i in range(1, len(seconds)):
        seconds[i] = max(seconds[i], seconds[i - 1])
    return CostCurve(seconds)


def measure_draft(model: Model, tokens: int = 12) -> float:
    context = _warm_context(model)
    model.reset()
    model.decode(context[:16], logits="none")
    samples = []
    for token in context[16:16 + tokens]:
        start = time.perf_counter()
        model.decode([token], logits="last")
        samples.append(time.perf_counter() - start)
    model.reset()
    return statistics.median(samples)


def measure_step_overhead(model: Model, tokens: int = 24) -> float:
    """Seconds per step that the decoding loop spends outside llama.cpp (plain steps): wall
    time of a short generation minus the time inside llama_decode, per target pass."""
    from engine.speculative import Finished, GenerationParams, generate

    prompt = _warm_context(model)[:16]
    model.reset()
    busy_before, started = model.busy_seconds, time.perf_counter()
    finished = None
    for event in generate(model, prompt, GenerationParams(tokens)):
        finished = event if isinstance(event, Finished) else finished
    wall = time.perf_counter() - started
    busy = model.busy_seconds - busy_before
    model.reset()
    if finished is None or not finished.stats.target_passes:
        return 0.0
    return max(wall - busy, 0.0) / finished.stats.target_passes


class LiveCosts:
    """Pass times observed while answering, per batch size, and draft times per token: the
    costs the controller uses once a few are seen. They correct a calibration measured at an
    unlucky moment on a machine whose load changes (running medians, robust to hiccups)."""

    MIN_SAMPLES = 3

    def __init__(self, window: int = 24) -> None:
        self._samples: dict[object, deque[float]] = {}  # batch size, or drafter name
        self._medians: dict[object, float] = {}  # kept current: read at every step
        self._window = window

    def observe(self, step: StepStats) -> None:
        """One step of the decoding loop: its target pass over drafted + 1 tokens and, if it
        drafted, the draft's time per token."""
        if step.drafted + 1 <= MAX_BATCH and step.verify_seconds > 0:
            self._add(step.drafted + 1, step.verify_seconds)
        if step.drafted and step.draft_seconds > 0:
            self._add(step.drafter, step.draft_seconds / step.drafted)

    def _add(self, key: object, seconds: float) -> None:
        samples = self._samples.setdefault(key, deque(maxlen=self._window))
        samples.append(seconds)
        if len(samples) >= self.MIN_SAMPLES:
            self._medians[key] = statistics.median(samples)

    def seen(self) -> dict[int, float]:
        """Median observed time of a pass, per batch size seen a few times."""
        return {n: self._medians[n] for n in range(1, MAX_BATCH + 1) if n in self._medians}

    def curve(self, calibrated: CostCurve) -> CostCurve:
        """Observed pass times where known; elsewhere the calibrated time mapped through the
        observed ones (piecewise linear in calibrated cost, extended past the last observed
        size with its slope): a 2-token pass seen twice as dear as calibrated makes the
        longer, unseen ones dearer too."""
        seen = self.seen()
        points = sorted((calibrated.verify(n), median) for n, median in seen.items())
        if len(points) == 1:
            points.insert(0, (0.0, 0.0))  # one size seen: a plain rescaling
        seconds = [seen[n] if n in seen else _through(points, calibrated.verify(n))
                   for n in range(1, MAX_BATCH + 1)]
        for i in range(1, len(seconds)):
            seconds[i] = max(seconds[i], seconds[i - 1])
        return CostCurve(seconds)

    def apply(self, calibration: Calibration) -> Calibration:
        """``calibration`` with what was seen while answering put in. A draft not yet timed
        keeps its calibrated cost relative to the target: scaled as one-token target passes
        are (the machine's load and the context length slow both)."""
        curve = self.curve(calibration.target)
        scale = curve.seconds[0] / calibration.target.seconds[0]
        drafts = {name: self._medians.get(name, cost * scale)
                  for name, cost in calibration.draft_token_seconds.items()}
        return Calibration(curve, drafts, calibration.step_overhead, calibration.measured_at)


def _through(points: list[tuple[float, float]], x: float) -> float:
    """y at x on the polyline through ``points`` (sorted by x), extended at both ends."""
    if not points:
        return x
    if len(points) == 1:
        return points[0][1]
    segment = next((i for i in range(1, len(points) - 1) if x <= points[i][0]),
                   len(points) - 1)
    (x0, y0), (x1, y1) = points[segment - 1], points[segment]
    return y1 if x1 == x0 else y0 + (x - x0) * (y1 - y0) / (x1 - x0)


def calibrate(target: Model, drafts: dict[str, Model], refresh: bool = False) -> Calibration:
    """Measured costs for this target and these draft models (cached unless ``refresh``)."""
    path = cache_path(target, drafts)
    if path.is_file() and not refresh:
        try:
            return Calibration.from_json(path.read_text())
        except (ValueError, KeyError):
            pass
    curve = measure_target(target)
    draft_costs = {name: measure_draft(model) for name, model in drafts.items()}
    draft_costs["ngram"] = 0.0
    calibration = Calibration(curve, draft_costs, measure_step_overhead(target),
                              measured_at=time.time())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(calibration.to_json())
    tmp.replace(path)
    return calibration
