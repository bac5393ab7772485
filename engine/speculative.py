"""The decoding loop: draft, verify in one batch, accept, roll back the KV cache, count.

One loop serves every mode. With no drafter (or a window of 0) it is plain decoding: one
target pass per token. With a drafter, the target evaluates ``[last token] + draft`` in one
batch and keeps the longest acceptable prefix plus one token of its own, so the output is the
target's own (greedy) or follows the target's own distribution (sampling).

Which drafter and which window run at each step is the window policy's choice
(``engine.window``); drafters live in ``engine.drafters``. Neither lives here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.calibration import LiveCosts
from engine.drafters.base import Drafter
from engine.errors import ContextFull
from engine.runtime import Model
from engine.sampling import SamplingParams, distribution
from engine.stats import MessageStats, StepStats
from engine.text_stream import TextStream
from engine.verify import verify_greedy, verify_sampling
from engine.window import FixedWindow, WindowPolicy


@dataclass
class Chunk:
    """Newly visible text. ``pieces`` are (text, origin) with origin "draft" or "target"."""

    pieces: list[tuple[str, str]]
    stats: MessageStats


@dataclass
class Finished:
    text: str
    reason: str  # "eos", "stop", "length", "context", "cancelled"
    stats: MessageStats
    tokens: list[int] = field(default_factory=list)
    message: str = ""


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 256
    sampling: SamplingParams = SamplingParams()
    stop: tuple[str, ...] = ()


VerifyHook = Callable[[list[int], np.ndarray, list[int]], None]


def generate(target: Model, prompt: Sequence[int], params: GenerationParams,
             policy: WindowPolicy | None = None, cancel: threading.Event | None = None,
             verify_hook: VerifyHook | None = None, costs: LiveCosts | None = None
             ) -> Iterator[Chunk | Finished]:
    """Stream a reply to ``prompt`` (token ids). Each step's timings go to ``costs`` when
    given. ``verify_hook(batch, logits, emitted)`` is a test hook that sees each verify
    pass."""
    policy = policy or FixedWindow(Drafter(), 0)
    sampling = params.sampling
    rng = np.random.default_rng(sampling.seed)
    stats = MessageStats()
    stream = TextStream(params.stop)
    context = list(prompt)
    output: list[int] = []

    started = time.perf_counter()
    target.prefill(context)
    stats.prompt_tokens, stats.prompt_seconds = len(context), time.perf_counter() - started
    policy.start(context, sampling)
    started = time.perf_counter()
    reason, message = "length", ""

    while len(output) < params.max_tokens:
        if cancel is not None and cancel.is_set():
            reason = "cancelled"
            break
        room = min(params.max_tokens - len(output), target.n_ctx - len(target.kv_tokens)) - 1
        if room < 0:
            reason, message = "context", str(ContextFull(target.n_ctx))
            break
        drafter, k = policy.choose()
        t0 = time.perf_counter()
        draft = drafter.propose(context, min(k, room)) if k > 0 and room > 0 else None
        drafted = draft.tokens if draft else []
        t1 = time.perf_counter()
        n_past = len(target.kv_tokens)
        batch = [context[-1], *drafted]
        logits = target.verify_pass(batch) if drafted else target.decode(batch, "last")
        if sampling.greedy:
            accepted, token = verify_greedy(logits.argmax(axis=1), drafted)
        else:
            p_rows = [distribution(row, sampling) for row in logits]
            accepted, token = verify_sampling(p_rows, drafted, draft.q_rows if draft else None,
                                              rng)
        target.truncate(n_past + 1 + accepted)
        emitted = [*drafted[:accepted], token]
        if verify_hook is not None:
            verify_hook(batch, logits, emitted)
        t2 = time.perf_counter()
        if drafted:
            drafter.accepted(accepted, len(drafted))
        step = StepStats(drafter.name if drafted else "none", k, len(drafted), accepted,
                         t1 - t0, t2 - t1)
        stats.add(step)
        if costs is not None:
            costs.observe(step)
        policy.observe(step)

        pieces: list[tuple[str, str]] = []
        done = False
        for index, tok in enumerate(emitted):
            if target.is_eog(tok):
                reason, done = "eos", True
                break
            output.append(tok)
            context.append(tok)
            origin = "draft" if index < accepted else "target"
            pieces += stream.push(target.token_bytes(tok), origin)
            if stream.stopped:
                reason, done = "stop", True
                break
            if len(output) >= params.max_tokens:
                break
        stats.tokens = len(output)
        stats.seconds = time.perf_counter() - started
        if pieces:
            yield Chunk(pieces, stats)
        if done:
            break

    tail = stream.finish()
    stats.tokens = len(output)
    stats.seconds = time.perf_counter() - started
    stats.controller_note = policy.note()
    if tail:
        yield Chunk(tail, stats)
    policy.finish(stats)
    yield Finished(stream.text, reason, stats, output, message)
