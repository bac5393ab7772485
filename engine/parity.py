"""How Tandem's decoding loop compares with llama.cpp's own time, for the benchmark.

- ``raw_decode_rate``: llama.cpp's one-token decoding rate through the same library, measured
  with nothing but ``llama_decode`` in the loop (what ``llama-bench`` tg measures);
- ``llama_bench_rate``: ``llama-bench`` itself (tg128, same model, threads and GPU layers),
  when the user has built it (``--llama-bench PATH``);
- ``pass_parity``: per pass size, the loop's measured cost of a step (everything but drafting)
  beside the time spent inside llama.cpp's calls in those same steps, and llama.cpp's raw time
  for that pass as calibrated.

Not for: the decoding loop (``engine.speculative``) or the calibration it plans with.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time

from engine.runtime import Model


def raw_decode_rate(model: Model, tokens: int = 128, depth: int = 16) -> float:
    """Tokens per second of one-token ``llama_decode`` calls (logits computed, not read),
    after a ``depth``-token prefix (16: what ``llama-bench`` tg measures; a reply to a long
    prompt decodes deeper, where each token attends to more of the cache); the KV cache is
    left empty."""
    unit = model.tokenize("def fibonacci(n):\n    a, b = 0, 1\n")
    depth = max(1, min(depth, model.n_ctx - tokens - 1))
    prefix = (unit * (depth // len(unit) + 1))[:depth]
    model.reset()
    model.prefill(prefix)
    token = prefix[-1]
    started = time.perf_counter()
    for _ in range(tokens):
        model.decode([token], "last")
    elapsed = time.perf_counter() - started
    model.reset()
    return tokens / elapsed


def llama_bench_rate(binary: str, model: Model, tokens: int = 128, repetitions: int = 3,
                     depth: int = 0) -> float:
    """``llama-bench`` tg<tokens> for ``model`` with the same threads and GPU layers, after
    ``depth`` cached tokens (its ``-d``; 0 is what tg128 alone measures)."""
    command = [binary, "-m", str(model.path), "-p", "0", "-n", str(tokens),
               "-t", str(model.options.threads()), "-ngl", str(model.options.gpu_layers()),
               "-r", str(repetitions), "-o", "json"] + (["-d", str(depth)] if depth else [])
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=True)
    rows = json.loads(done.stdout)
    return float(statistics.median(row["avg_ts"] for row in rows if row.get("n_gen")))


def pass_parity(steps: list[list[float]], raw_seconds: dict[int, float],
                min_steps: int = 3) -> list[dict]:
    """Per pass size (tokens evaluated) seen in at least ``min_steps`` of ``steps`` — each
    ``[tokens, loop seconds, seconds inside llama.cpp]``: the median loop cost of such a step,
    the median time inside llama.cpp's calls in those same steps (the like-for-like figure),
    and llama.cpp's raw time for that pass as calibrated at load."""
    by_size: dict[int, list[tuple[float, float]]] = {}
    for tokens, loop, inside in steps:
        by_size.setdefault(int(tokens), []).append((loop, inside))
    rows = []
    for n, seen in sorted(by_size.items()):
        if len(seen) < min_steps or n not in raw_seconds:
            continue
        loop = statistics.median(s[0] for s in seen)
        inside = statistics.median(s[1] for s in seen)
        rows.append({"n": n, "steps": len(seen), "loop_seconds": loop, "inside_seconds": inside,
                     "raw_seconds": raw_seconds[n], "loop_over_inside": loop / max(inside, 1e-12),
                     "loop_over_raw": loop / raw_seconds[n]})
    return rows
