"""Numerics: which pass shapes compute bit-identical logits on this backend, and the shape
Tandem evaluates the target in, so that greedy text with speculation on is the same text as
with speculation off — on CPU, CUDA and Metal alike.

A backend may round a pass over n tokens differently from a pass over one. llama.cpp's CPU
backend computes K-quant rows 1-3 through its one-token kernel and 4+ rows through gemm kernels
(and f32 matmuls of 2+ rows through llamafile's sgemm on some CPUs); on CUDA every batched pass
differs from the one-token pass, while 2- and 4-row passes agree with each other (flash
attention off). The probe (``engine.calibration.probe_numerics``) evaluates the same positions
in pieces of each size and groups the sizes whose logits are bit-identical into *classes*;
``choose`` turns that into a ``PassShape``:

- "exact" (the default): plain decoding and verification both stay inside one class. If the
  one-token pass has batched partners (a CPU), plain decoding keeps one-token passes and
  verification is cut into pieces from that class. Otherwise plain decoding is padded into the
  cheapest batched class — a pass over [token, padding…] whose padding rows are dropped from
  the KV cache — and verification is cut into pieces of that class. "exact:N" takes the class of
  N-row passes as the reference (how the padded path is exercised on a CPU).
- "fast": llama.cpp's kernels as they are (verification in one piece, one-token plain passes).
  Greedy tokens decided by a margin under the measured rounding difference may then differ
  from plain decoding; the decoding loop counts them.

Not for: running passes (``engine.runtime``) or measuring (``engine.calibration``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

PROBE_SIZES = (1, 2, 3, 4, 5, 6, 8, 12, 16)


@dataclass(frozen=True)
class Probe:
    """What the probe measured: the sizes grouped by bit-identical logits, whether a plain pass
    padded to a class's smallest size joins that class, each size's pass time, and the largest
    logit difference between a batched pass and the one-token pass."""

    classes: tuple[tuple[int, ...], ...]
    padded_joins: dict[int, bool]  # smallest size of a class (>= 2) -> padded plain is in it
    seconds: dict[int, float]  # median time of one pass over n tokens
    max_difference: float

    def class_of(self, size: int) -> tuple[int, ...]:
        return next((group for group in self.classes if size in group), (size,))

    def to_dict(self) -> dict:
        return {"classes": [list(c) for c in self.classes],
                "padded_joins": {str(k): v for k, v in self.padded_joins.items()},
                "seconds": {str(k): v for k, v in self.seconds.items()},
                "max_difference": self.max_difference}

    @classmethod
    def from_dict(cls, data: dict) -> Probe:
        return cls(tuple(tuple(int(n) for n in c) for c in data["classes"]),
                   {int(k): bool(v) for k, v in data["padded_joins"].items()},
                   {int(k): float(v) for k, v in data["seconds"].items()},
                   float(data["max_difference"]))


@dataclass(frozen=True)
class PassShape:
    """How the target evaluates tokens. ``plain_rows``: rows of a plain-decoding pass (1, or
    the token plus padding); ``pieces``: the sizes a verification pass is cut into (one class;
    empty: one piece of any size); ``rounding``: the measured largest logit difference between
    batched and one-token passes (what a near tie is, in fast mode)."""

    mode: str = "exact"
    plain_rows: int = 1
    pieces: tuple[int, ...] = (1,)
    rounding: float = 0.0

    @property
    def exact(self) -> bool:
        return self.mode == "exact"

    def split(self, n: int) -> list[tuple[int, int]]:
        """(real tokens, rows evaluated) for each pass that evaluates ``n`` tokens."""
        if n == 1:
            return [(1, self.plain_rows)]
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
            return (f"exact: verification in pieces of {pieces} rows, bit-identical to "
                    "one-token decoding")
        return (f"exact: plain decoding padded to {self.plain_rows} rows and verification in "
                f"pieces of {pieces} rows, bit-identical to each other (no batched pass matches "
                "the one-token pass on this backend)")

    def to_dict(self) -> dict:
        return {"mode": self.mode, "plain_rows": self.plain_rows, "pieces": list(self.pieces),
                "rounding": self.rounding, "label": self.describe()}


def requested_mode() -> str:
    """``TANDEM_NUMERICS``: "exact" (default), "fast", or "exact:N" (the class of N-row passes as
    the reference)."""
    return os.environ.get("TANDEM_NUMERICS", "exact").strip().lower() or "exact"


def choose(probe: Probe, mode: str = "exact") -> PassShape:
    """The pass shape for ``mode`` on the backend ``probe`` describes."""
    if mode == "fast":
        return PassShape("fast", 1, (), probe.max_difference)
    if mode.startswith("exact:"):
        reference = probe.class_of(int(mode.split(":", 1)[1]))
        candidates = [reference]
    elif mode == "exact":
        one_token = probe.class_of(1)
        if len(one_token) > 1:
            return PassShape("exact", 1, one_token)
        candidates = sorted((c for c in probe.classes if 1 not in c),
                            key=lambda c: (probe.seconds.get(min(c), float("inf")), -max(c)))
    else:
        raise ValueError(f"TANDEM_NUMERICS must be exact, fast or exact:N, not {mode!r}")
    for group in candidates:
        if 1 in group:
            return PassShape("exact", 1, group)
        if probe.padded_joins.get(min(group)):
            return PassShape("exact", min(group), group)
    # no class can hold plain decoding: verify one token at a time (exact, never faster)
    return PassShape("exact", 1, (1,))
