"""Numerics: which pass shapes compute bit-identical logits on this backend, and the shape
Tandem evaluates the target in, so that greedy text with speculation on is the same text as
with speculation off — on CPU, CUDA and Metal alike.

A backend may round a pass over n tokens differently from a pass over one. llama.cpp's CPU
backend computes K-quant rows 1-3 through its one-token kernel and 4+ rows through gemm kernels
(and f32 matmuls of 2+ rows through llamafile's sgemm on some CPUs), and once 512 cache cells
are in view (llama.cpp pads the view to 256) its flash attention splits a one-token query's
keys across threads, which rounds differently from the row-by-row kernel batched queries use
— unless K and V are stored in different types (``RuntimeOptions.cache_types``). On CUDA every
batched pass differs from the one-token pass, while 2- and 4-row passes agree with each other
(flash attention off). The probe (``engine.calibration.probe_numerics``) evaluates the same
positions in pieces of each size, near the start of the context and deeper in it, and groups
the sizes whose logits are bit-identical into *classes*, per depth and over all depths;
``choose`` turns that into a ``PassShape``:

- "exact" (the default): plain decoding and verification both stay inside one class. If the
  one-token pass has batched partners (a CPU), plain decoding keeps one-token passes and
  verification is cut into pieces from that class — up to the depth where the probe saw the
  class hold, and deeper one token per pass. Otherwise plain decoding is padded into the
  cheapest batched class — a pass over [token, padding…] whose padding rows are dropped from
  the KV cache — and verification is cut into pieces of that class (one that holds at every
  depth), where padding costs at most ``PADDING_BUDGET``; failing that, verification runs one
  token per pass (exact, never faster). "exact:N" takes the class of N-row passes as the
  reference (how the padded path is exercised on a CPU).
- "fast": llama.cpp's kernels as they are (verification in one piece, one-token plain passes).
  Greedy tokens decided by a margin under the measured rounding difference may then differ
  from plain decoding; the decoding loop counts them.

Not for: running passes (``engine.runtime``) or measuring (``engine.calibration``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROBE_SIZES = (1, 2, 3, 4, 5, 6, 8, 12, 16)
# padding every plain pass pays only where a 2-row pass costs little more than a 1-row one
# (CUDA: +11%); on a CPU it costs ~1.7 one-token passes and would slow every plain token
PADDING_BUDGET = 1.25


@dataclass(frozen=True)
class Probe:
    """What the probe measured: the sizes grouped by logits bit-identical at every probed
    depth (``classes``) and at each depth (``classes_at``, one entry per ``depths``: tokens
    already cached, ``span`` positions evaluated there), whether a plain pass padded to a
    class's smallest size joins that class, each size's pass time, and the largest logit
    difference between a batched pass and the one-token pass."""

    classes: tuple[tuple[int, ...], ...]
    padded_joins: dict[int, bool]  # smallest size of a class (>= 2) -> padded plain is in it
    seconds: dict[int, float]  # median time of one pass over n tokens
    max_difference: float
    depths: tuple[int, ...] = ()
    classes_at: tuple[tuple[tuple[int, ...], ...], ...] = ()
    span: int = 0

    def class_of(self, size: int) -> tuple[int, ...]:
        return next((group for group in self.classes if size in group), (size,))

    def verified_until(self, sizes: tuple[int, ...]) -> int | None:
        """The context length up to which passes of all these sizes were bit-identical to each
        other (None: at every probed depth)."""
        for index, classes in enumerate(self.classes_at):
            if not any(set(sizes) <= set(group) for group in classes):
                return self.depths[index - 1] + self.span if index else 0
        return None

    def to_dict(self) -> dict:
        return {"classes": [list(c) for c in self.classes],
                "padded_joins": {str(k): v for k, v in self.padded_joins.items()},
                "seconds": {str(k): v for k, v in self.seconds.items()},
                "max_difference": self.max_difference, "depths": list(self.depths),
                "classes_at": [[list(c) for c in at] for at in self.classes_at],
                "span": self.span}

    @classmethod
    def from_dict(cls, data: dict) -> Probe:
        def groups(raw: list) -> tuple[tuple[int, ...], ...]:
            return tuple(tuple(int(n) for n in c) for c in raw)

        return cls(groups(data["classes"]),
                   {int(k): bool(v) for k, v in data["padded_joins"].items()},
                   {int(k): float(v) for k, v in data["seconds"].items()},
                   float(data["max_difference"]), tuple(int(d) for d in data.get("depths", ())),
                   tuple(groups(at) for at in data.get("classes_at", ())),
                   int(data.get("span", 0)))


@dataclass(frozen=True)
class PassShape:
    """How the target evaluates tokens. ``plain_rows``: rows of a plain-decoding pass (1, or
    the token plus padding); ``pieces``: the sizes a verification pass is cut into (one class;
    empty: one piece of any size); ``exact_until``: the context length up to which those
    pieces were verified bit-identical (None: everywhere probed) — a pass reaching deeper runs
    one token at a time; ``rounding``: the measured largest logit difference between batched
    and one-token passes (what a near tie is, in fast mode)."""

    mode: str = "exact"
    plain_rows: int = 1
    pieces: tuple[int, ...] = (1,)
    rounding: float = 0.0
    exact_until: int | None = None

    @property
    def exact(self) -> bool:
        return self.mode == "exact"

    def draft_room(self, depth: int) -> int | None:
        """How many drafted tokens one pass after ``depth`` cached tokens may verify exactly
        (None: no limit)."""
        if self.exact_until is None:
            return None
        return max(0, self.exact_until - depth - 1)

    def split(self, n: int, depth: int = 0) -> list[tuple[int, int]]:
        """(real tokens, rows evaluated) for each pass that evaluates ``n`` tokens after
        ``depth`` cached ones."""
        if n == 1:
            return [(1, self.plain_rows)]
        if self.exact_until is not None and depth + n > self.exact_until:
            return [(1, self.plain_rows)] * n
        if not self.pieces:
            return [(n, n)]
        largest, plan = max(self.pieces), []
        while n > 0:
            if n >= largest:
                plan.append((largest, largest))
                n -= largest
            else:
                plan.append((n, min(p for p in self.pieces if p >= n)))
                n = 0
        return plan

    def describe(self) -> str:
        if not self.exact:
            return (f"fast: llama.cpp's kernels as they are; tokens decided by a margin under "
                    f"{self.rounding:.2g} (the measured rounding difference) may differ from "
                    "plain decoding")
        pieces = "/".join(str(p) for p in self.pieces)
        if self.plain_rows == 1:
            label = (f"exact: verification in pieces of {pieces} rows, bit-identical to "
                     "one-token decoding")
        else:
            label = (f"exact: plain decoding padded to {self.plain_rows} rows and verification "
                     f"in pieces of {pieces} rows, bit-identical to each other (no batched pass "
                     "matches the one-token pass on this backend)")
        if self.exact_until is not None and self.pieces != (1,):
            label += (f", up to {self.exact_until} tokens of context; deeper, one token per "
                      "pass (no batched pass is bit-identical to the one-token pass there)")
        return label

    def to_dict(self) -> dict:
        return {"mode": self.mode, "plain_rows": self.plain_rows, "pieces": list(self.pieces),
                "rounding": self.rounding, "exact_until": self.exact_until,
                "label": self.describe()}

    @classmethod
    def from_dict(cls, data: dict) -> PassShape:
        return cls(data.get("mode", "exact"), int(data.get("plain_rows", 1)),
                   tuple(data.get("pieces", (1,))), float(data.get("rounding", 0.0)),
                   data.get("exact_until"))


def padding_affordable(seconds: dict[int, float], rows: int) -> bool:
    """Whether padding every plain pass to ``rows`` rows stays within ``PADDING_BUDGET``, given
    the time of a pass over n tokens (``Probe.seconds``)."""
    return seconds.get(rows, float("inf")) <= PADDING_BUDGET * seconds.get(1, 0.0)


def requested_mode() -> str:
    """``TANDEM_NUMERICS``: "exact" (default), "fast", or "exact:N" (the class of N-row passes as
    the reference)."""
    return os.environ.get("TANDEM_NUMERICS", "exact").strip().lower() or "exact"


def choose(probe: Probe, mode: str = "exact") -> PassShape:
    """The pass shape for ``mode`` on the backend ``probe`` describes."""
    if mode == "fast":
        return PassShape("fast", 1, (), probe.max_difference)
    near_start = (1,)  # the one-token pass's partners at the shallowest depth probed
    if mode.startswith("exact:"):
        candidates = [probe.class_of(int(mode.split(":", 1)[1]))]
    elif mode == "exact":
        shallow = probe.classes_at[0] if probe.classes_at else probe.classes
        near_start = next((group for group in shallow if 1 in group), (1,))
        if len(near_start) > 1 and probe.verified_until(near_start) is None:
            return PassShape("exact", 1, near_start)
        candidates = sorted((c for c in probe.classes if 1 not in c),
                            key=lambda c: (probe.seconds.get(min(c), float("inf")), -max(c)))
    else:
        raise ValueError(f"TANDEM_NUMERICS must be exact, fast or exact:N, not {mode!r}")
    for group in candidates:
        if 1 in group:
            return PassShape("exact", 1, group)
        affordable = mode != "exact" or padding_affordable(probe.seconds, min(group))
        if probe.padded_joins.get(min(group)) and affordable:
            return PassShape("exact", min(group), group)
    if len(near_start) > 1:  # batched passes are exact near the start only: verify there
        return PassShape("exact", 1, near_start, exact_until=probe.verified_until(near_start))
    # no class can hold plain decoding: verify one token at a time (exact, never faster)
    return PassShape("exact", 1, (1,))
