"""Verification: which draft tokens the target keeps, and the token it adds.

Greedy: accept while the target's argmax equals the draft token. Sampling: standard speculative
sampling (Leviathan et al. 2023): accept draft token x with probability min(1, p(x)/q(x)); on
the first rejection draw from normalize(max(0, p - q)); when all are accepted draw a bonus
token from p at the position after the draft. A deterministic drafter has a one-hot q (pass
``None``). Either way the emitted tokens follow the target's own distribution.

Not for: producing p (``engine.sampling``) or running models.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.sampling import draw


def verify_greedy(target_choice: Sequence[int], draft: Sequence[int]) -> tuple[int, int]:
    """``target_choice[i]`` is the target's argmax after draft[:i]. Returns (accepted, next)."""
    accepted = 0
    for proposed, chosen in zip(draft, target_choice):
        if proposed != chosen:
            break
        accepted += 1
    return accepted, int(target_choice[accepted])


def verify_sampling(p_rows: Sequence[np.ndarray], draft: Sequence[int],
                    q_rows: Sequence[np.ndarray | None] | None,
                    rng: np.random.Generator) -> tuple[int, int]:
    """``p_rows`` has len(draft)+1 target distributions; ``q_rows[i]`` is the distribution the
    draft token i was drawn from (None: one-hot). Returns (accepted, next token)."""
    for i, token in enumerate(draft):
        p = p_rows[i]
        q = None if q_rows is None else q_rows[i]
        q_token = 1.0 if q is None else q[token]
        if q_token > 0 and rng.random() * q_token < p[token]:
            continue
        if q is None:
            residual = p.copy()
            residual[token] = 0.0
        else:
            residual = np.maximum(p - q, 0.0)
        if residual.sum() <= 0.0:
            residual = p
        return i, draw(residual, rng)
    return len(draft), draw(p_rows[len(draft)], rng)
