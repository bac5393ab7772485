"""Goodness-of-fit helpers for the sampling tests (no scipy needed)."""

from __future__ import annotations

import math
from collections import Counter


def chi_square(counts: Counter, expected: dict, n: int) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom; cells expecting < 5 are pooled."""
    stat, cells, pooled_obs, pooled_exp = 0.0, 0, 0, 0.0
    for key, prob in expected.items():
        exp = prob * n
        if exp < 5:
            pooled_obs += counts.get(key, 0)
            pooled_exp += exp
            continue
        stat += (counts.get(key, 0) - exp) ** 2 / exp
        cells += 1
    unexpected = sum(c for key, c in counts.items() if key not in expected)
    pooled_obs += unexpected
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / max(pooled_exp, 1e-9)
        cells += 1
    elif unexpected:
        stat = math.inf
    return stat, max(cells - 1, 1)


def chi_square_critical(df: int, z: float = 3.09) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z=3.09: alpha 0.001)."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3
