"""Turning logits into a probability distribution and drawing from it.

The same transform (temperature, top-k, top-p) is applied to the target's logits in plain and
speculative decoding, and to the draft model's logits when it samples, so both paths see the
same ``p``. Pure numpy; no model state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def distribution(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """Dense float64 probabilities over the vocabulary after temperature, top-k and top-p."""
    scaled = logits.astype(np.float64) / max(params.temperature, 1e-6)
    n = scaled.shape[0]
    if 0 < params.top_k < n:
        keep = np.argpartition(scaled, n - params.top_k)[n - params.top_k:]
    else:
        keep = np.arange(n)
    values = scaled[keep]
    values = np.exp(values - values.max())
    values /= values.sum()
    if params.top_p < 1.0:
        order = np.argsort(-values, kind="stable")
        cumulative = np.cumsum(values[order])
        cut = int(np.searchsorted(cumulative, params.top_p)) + 1  # smallest set reaching top_p
        order = order[:cut]
        keep, values = keep[order], values[order] / values[order].sum()
    probs = np.zeros(n, dtype=np.float64)
    probs[keep] = values
    return probs


def draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One sample from an (unnormalised) non-negative vector."""
    cumulative = np.cumsum(probs)
    return int(min(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"),
                   len(probs) - 1))


def confidence(logits: np.ndarray) -> tuple[int, float]:
    """(argmax, its softmax probability): the draft's own confidence in its next token."""
    best = int(np.argmax(logits))
    top = logits[best]
    return best, float(1.0 / np.exp(logits - top).sum())
