"""Measuring this machine: which pass shapes give bit-identical logits (the numerics probe),
the target's time for a pass over n tokens (n = 1..16) in the chosen shape, each draft
model's time per token, and the decoding loop's own time per step. Cached per (machine, model
files, threads, GPU layers, numerics setting) in the user data directory; re-measured when the
cache is missing or proves wrong (``engine.session``).

Not for: deciding anything from the numbers (``engine.numerics`` chooses the shape,
``engine.adaptive_window`` the drafter and window).
"""

from __future__ import annotations

import hashlib
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine import numerics, paths
from engine.costs import LOOKUP_DRAFTERS, MAX_BATCH, CostCurve, Costs
from engine.numerics import PROBE_SIZES, PassShape, Probe
from engine.runtime import Model, common_prefix

BATCH_SIZES = (1, 2, 3, 4, 5, 6, 8, 12, 16)
WARMUP_TOKENS = 48
# 224: passes still end inside llama.cpp's first 256 cells; 600: past 512, where its CPU flash
# attention splits a one-token query across threads (``engine.numerics``)
PROBE_DEPTHS, PROBE_SPAN = (24, 224, 600), 16
CACHE_VERSION = 2  # bump when the probe or the costs change meaning


@dataclass
class Calibration:
    target: CostCurve  # llama.cpp's time for a pass over n tokens, in the chosen shape
    draft_token_seconds: dict[str, float]  # per drafter name (n-gram: ~0)
    step_overhead: float  # the loop's time per step beyond llama.cpp's (plain steps)
    measured_at: float
    shape: PassShape = field(default_factory=PassShape)
    probe: Probe | None = None

    @property
    def plain_tok_per_s(self) -> float:
        """Plain decoding through Tandem's loop: one target pass plus the loop's overhead."""
        return 1.0 / (self.target.seconds[0] + self.step_overhead)

    def costs(self) -> Costs:
        """The costs to plan with before anything was timed while answering."""
        curve = CostCurve([s + self.step_overhead for s in self.target.seconds])
        return Costs(curve, dict(self.draft_token_seconds))

    def to_json(self) -> str:
        return json.dumps({"target": {"seconds": self.target.seconds},
                           "draft_token_seconds": self.draft_token_seconds,
                           "step_overhead": self.step_overhead, "measured_at": self.measured_at,
                           "shape": self.shape.to_dict(),
                           "probe": None if self.probe is None else self.probe.to_dict()})

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        data = json.loads(text)
        shape = data.get("shape") or {}
        return cls(CostCurve(data["target"]["seconds"]), data["draft_token_seconds"],
                   data["step_overhead"], data["measured_at"],
                   PassShape.from_dict(shape),
                   Probe.from_dict(data["probe"]) if data.get("probe") else None)


def _model_key(model: Model) -> str:
    stat = model.path.stat()
    return (f"{model.path.name}:{stat.st_size}:{stat.st_mtime_ns}:{model.options.threads()}:"
            f"{model.options.gpu_layers()}:{model.options.flash_attn}:{model.cache_types}")


def cache_path(target: Model, drafts: dict[str, Model], mode: str = "exact"):
    key = "|".join([f"v{CACHE_VERSION}", platform.node(), platform.machine(),
                    _model_key(target), mode,
                    *sorted(f"{name}={_model_key(m)}" for name, m in drafts.items())])
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return paths.calibration_dir() / f"costs-{digest}.json"


def _warm_context(model: Model) -> list[int]:
    text = "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
    tokens = model.tokenize(text * 4)
    return tokens[:WARMUP_TOKENS]


# ---- the numerics probe -----------------------------------------------------------------
def _probe_context(model: Model, n: int) -> list[int]:
    """``n`` tokens of varied code to evaluate at (the values do not matter, only the depth)."""
    text = "".join(f"def step_{i}(x, y):\n    return x * {i} + y // {i + 1}\n\n"
                   for i in range(n))
    return model.tokenize(text)[:n]


def _rows(model: Model, prefix: list[int], span: list[int], real: int, width: int
          ) -> tuple[np.ndarray, float]:
    """Logits after every token of ``span`` (following ``prefix``, which stays cached for the
    next call), evaluated ``real`` tokens per pass in passes of ``width`` rows (padding repeats
    the last token and is dropped from the cache); also the median time of a pass."""
    keep = common_prefix(model.kv_tokens, prefix)
    model.truncate(keep)
    model.decode(prefix[keep:], "none")
    out, times = [], []
    for start in range(0, len(span), real):
        piece = span[start:start + real]
        began = time.perf_counter()
        view = model.decode(piece + [piece[-1]] * (width - len(piece)),
                            "all" if width > 1 else "last")
        times.append(time.perf_counter() - began)
        out.append(view[:len(piece)].copy())
        model.truncate(len(model.kv_tokens) - (width - len(piece)))
    model.truncate(len(prefix))
    return np.concatenate(out), statistics.median(times)


def _partition(rows: dict[int, list[np.ndarray | None]]) -> list[list[int]]:
    """Sizes grouped by logits bit-identical at every probed depth (a size not measured at a
    depth — None — is grouped with no other there)."""
    def same(a: int, b: int) -> bool:
        return all(x is not None and y is not None and np.array_equal(x, y)
                   for x, y in zip(rows[a], rows[b]))

    classes: list[list[int]] = []
    for size in rows:
        group = next((g for g in classes if same(g[0], size)), None)
        if group is None:
            classes.append([size])
        else:
            group.append(size)
    return classes


def _deep_sizes(mode: str, sizes: Sequence[int], near_start: list[int],
                seconds: dict[int, float]) -> Sequence[int]:
    """The sizes worth measuring deeper in the context: all of them where ``mode`` may pad plain
    decoding into any class (an explicit reference class, or padding cheap enough), else only
    the one-token pass's partners near the start (what verification would use)."""
    affordable = any(numerics.padding_affordable(seconds, size) for size in sizes[1:])
    return sizes if mode.startswith("exact:") or affordable else near_start


def probe_numerics(model: Model, mode: str = "exact", sizes: Sequence[int] = PROBE_SIZES,
                   depths: Sequence[int] = PROBE_DEPTHS) -> Probe:
    """Evaluate the same positions in pieces of each size, near the start of the context and
    deeper in it (kernels may change with the number of cached tokens), and group the sizes
    whose logits are bit-identical, per depth and over all depths; check whether plain decoding
    padded into a class joins it (only for the classes ``mode`` may use: the padded check costs
    a pass per position). Pass times are those near the start."""
    depths = sorted({max(1, min(d, model.n_ctx - PROBE_SPAN - max(sizes))) for d in depths})
    context = _probe_context(model, depths[-1] + PROBE_SPAN)
    at = [(context[:d], context[d:d + PROBE_SPAN]) for d in depths]
    rows: dict[int, list[np.ndarray | None]] = {size: [] for size in sizes}
    seconds: dict[int, float] = {}
    measured = sizes
    for index, (prefix, span) in enumerate(at):
        for size in sizes:
            values = None
            if size in measured:
                values, took = _rows(model, prefix, span, size, size)
                seconds.setdefault(size, took)
            rows[size].append(values)
        if index == 0:
            near_start = next(g for g in _partition(rows) if sizes[0] in g)
            measured = _deep_sizes(mode, sizes, near_start, seconds)
    one = rows[sizes[0]]
    difference = max((float(np.abs(a - b).max()) for s in sizes[1:]
                      for a, b in zip(rows[s], one) if a is not None), default=0.0)
    classes_at = tuple(tuple(tuple(g) for g in _partition({s: [r[i]] for s, r in rows.items()}))
                       for i in range(len(depths)))
    probe = Probe(tuple(tuple(g) for g in _partition(rows)), {}, seconds, difference,
                  tuple(depths), classes_at, PROBE_SPAN)
    if mode.startswith("exact:"):
        needed = [probe.class_of(int(mode.split(":", 1)[1]))]
    elif mode == "exact" and len(probe.class_of(1)) == 1:
        needed = [c for c in probe.classes
                  if 1 not in c and numerics.padding_affordable(seconds, min(c))]
    else:
        needed = []
    for group in needed:
        if 1 not in group:
            padded = [_rows(model, prefix, span, 1, min(group))[0] for prefix, span in at]
            probe.padded_joins[min(group)] = all(
                np.array_equal(a, b) for a, b in zip(padded, rows[min(group)]))
    model.reset()
    return probe


# ---- costs ------------------------------------------------------------------------------
def measure_target(model: Model, rounds: int = 3) -> CostCurve:
    """Median time llama.cpp takes for a pass over n tokens in the model's pass shape (time
    inside llama.cpp only: what the loop adds is measured apart). Each round measures every
    batch size once, so a change in the machine's load hits all sizes alike."""
    context = _warm_context(model)
    model.reset()
    model.decode(context, logits="none")
    base = len(model.kv_tokens)
    samples: dict[int, list[float]] = {n: [] for n in BATCH_SIZES}
    for _ in range(rounds):
        for n in BATCH_SIZES:
            model.truncate(base)
            busy = model.busy_seconds
            model.evaluate(context[:n])
            samples[n].append(model.busy_seconds - busy)
    model.reset()
    measured = {n: statistics.median(values) for n, values in samples.items()}
    seconds = []
    for n in range(1, MAX_BATCH + 1):
        lower = max(s for s in BATCH_SIZES if s <= n)
        upper = min(s for s in BATCH_SIZES if s >= n)
        w = 0.0 if lower == upper else (n - lower) / (upper - lower)
        seconds.append(measured[lower] * (1 - w) + measured[upper] * w)
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


def calibrate(target: Model, drafts: dict[str, Model],
              loop_overhead: Callable[[Model], float], refresh: bool = False,
              mode: str | None = None) -> Calibration:
    """Measured numerics and costs for this target and these draft models (cached unless
    ``refresh``); sets ``target.shape``. ``loop_overhead(model)`` measures the decoding loop's
    own time per step (passed in: the loop reports to the cost module, not the reverse)."""
    mode = mode or numerics.requested_mode()
    path = cache_path(target, drafts, mode)
    if path.is_file() and not refresh:
        try:
            calibration = Calibration.from_json(path.read_text())
            if calibration.probe is not None:
                target.shape = calibration.shape
                return calibration
        except (ValueError, KeyError, TypeError):
            pass
    probe = probe_numerics(target, mode)
    target.shape = numerics.choose(probe, mode)
    curve = measure_target(target)
    draft_costs = {name: measure_draft(model) for name, model in drafts.items()}
    draft_costs.update(dict.fromkeys(LOOKUP_DRAFTERS, 0.0))
    calibration = Calibration(curve, draft_costs, loop_overhead(target), time.time(),
                              target.shape, probe)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(calibration.to_json())
    tmp.replace(path)
    return calibration
