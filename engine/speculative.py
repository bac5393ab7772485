"""The decoding loop: draft, verify in one batch, accept, roll back the KV cache, count.

One loop serves every mode. With no drafter (or a window of 0) it is plain decoding: one
target pass per token. With a drafter, the target evaluates ``[last token] + draft`` in one
batch and keeps the longest acceptable prefix plus one token of its own, so the output is the
target's own (greedy) or follows the target's own distribution (sampling). Both kinds of pass
run in the target's pass shape (``engine.numerics``), which keeps them bit-identical.

Each step is reported through one callback, ``on_step`` (the live costs listen there). Which
drafter and which window run at each step is the window policy's choice (``engine.window``,
``engine.adaptive_window``); drafters live in ``engine.drafters``. Neither lives here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from engine.drafters.base import Draft, Drafter
from engine.errors import ContextFull
from engine.runtime import Model
from engine.sampling import SamplingParams, distribution
from engine.stats import MessageStats, StepStats
from engine.text_stream import TextStream
from engine.verify import verify_greedy, verify_sampling
from engine.window import FixedWindow, WindowPolicy


@dataclass
class Chunk:
    """Newly visible text. ``pieces`` are (text, origin): origin is the name of the drafter
    whose accepted token completed the piece ("suffix", "ngram", "draft-model", "universal")
    or "target" for the target's own tokens."""

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


@dataclass
class Step:
    """One step as reported to ``on_step``: its statistics, the tokens the target evaluated,
    the target's argmax after each (greedy) and the top-2 logit margins (when asked), and the
    tokens it emitted."""

    stats: StepStats
    batch: list[int]
    choices: np.ndarray
    margins: np.ndarray | None
    emitted: list[int]


def generate(target: Model, prompt: Sequence[int], params: GenerationParams,
             policy: WindowPolicy | None = None, cancel: threading.Event | None = None,
             on_step: Callable[[Step], None] | None = None, margins: bool | None = None
             ) -> Iterator[Chunk | Finished]:
    """Stream a reply to ``prompt`` (token ids). ``margins``: compute the top-2 logit margin of
    every greedy decision (default: in fast numerics, to count near ties)."""
    policy = policy or FixedWindow(Drafter(), 0)
    sampling = params.sampling
    count_ties = (not target.shape.exact) if margins is None else margins
    rng = np.random.default_rng(sampling.seed)
    stats = MessageStats(numerics=target.shape.mode)
    stream = TextStream(params.stop)
    context = list(prompt)
    output: list[int] = []

    started = time.perf_counter()
    stats.cache_reused = target.prefill(context)
    stats.prompt_tokens, stats.prompt_seconds = len(context), time.perf_counter() - started
    policy.start(context, sampling)
    started = time.perf_counter()
    reason, message = "length", ""
    too_deep = 0  # where exact verification stopped being possible, if it did

    while len(output) < params.max_tokens:
        if cancel is not None and cancel.is_set():
            reason = "cancelled"
            break
        room = min(params.max_tokens - len(output), target.n_ctx - len(target.kv_tokens)) - 1
        if room < 0:
            reason, message = "context", str(ContextFull(target.n_ctx))
            break
        t0 = time.perf_counter()
        exact_room = target.shape.draft_room(len(target.kv_tokens))
        if exact_room == 0:  # this deep, no batched pass is bit-identical to a one-token pass
            drafter, k, draft = Drafter(), 0, Draft()
            too_deep = too_deep or len(target.kv_tokens)
        else:
            room = room if exact_room is None else min(room, exact_room)
            drafter, k, draft = policy.draft(context, room)
        drafted = draft.tokens
        t1 = time.perf_counter()
        n_past, busy = len(target.kv_tokens), target.busy_seconds
        batch = [context[-1], *drafted]
        evaluation = target.evaluate(batch, rows=not sampling.greedy,
                                     margins=count_ties and sampling.greedy)
        if sampling.greedy:
            accepted, token = verify_greedy(evaluation.choices, drafted)
        else:
            p_rows = [distribution(row, sampling) for row in evaluation.rows]
            accepted, token = verify_sampling(p_rows, drafted, draft.q_rows,
                                              rng)
        target.truncate(n_past + 1 + accepted)
        emitted = [*drafted[:accepted], token]
        if drafted:
            drafter.accepted(accepted, len(drafted))

        pieces: list[tuple[str, str]] = []
        done = False
        for index, tok in enumerate(emitted):
            if target.is_eog(tok):
                reason, done = "eos", True
                break
            output.append(tok)
            context.append(tok)
            origin = drafter.name if index < accepted else "target"
            pieces += stream.push(target.token_bytes(tok), origin)
            if stream.stopped:
                reason, done = "stop", True
                break
            if len(output) >= params.max_tokens:
                break
        near_ties = 0
        if evaluation.margins is not None and len(batch) > 1:
            near_ties = int((evaluation.margins[:len(emitted)] < target.shape.rounding).sum())
        step = StepStats(drafter.name if drafted else "none", k, len(drafted), accepted,
                         t1 - t0, time.perf_counter() - t1, near_ties,
                         target.busy_seconds - busy)
        policy.observe(step)
        step.pass_seconds = time.perf_counter() - t1  # the policy's bookkeeping included
        stats.add(step)
        if on_step is not None:
            on_step(Step(step, batch, evaluation.choices, evaluation.margins, emitted))
        stats.tokens = len(output)
        stats.seconds = time.perf_counter() - started
        if pieces:
            yield Chunk(pieces, stats)
        if done:
            break

    tail = stream.finish()
    stats.tokens = len(output)
    stats.seconds = time.perf_counter() - started
    deep_note = (f"plain decoding from token {too_deep} of the context on: no batched pass is "
                 "bit-identical to a one-token pass that deep on this backend") if too_deep else ""
    stats.controller_note = "; ".join(note for note in (policy.note(), deep_note) if note)
    if tail:
        yield Chunk(tail, stats)
    policy.finish(stats)
    yield Finished(stream.text, reason, stats, output, message)


def loop_overhead(model: Model, tokens: int = 24) -> float:
    """Seconds per step that the decoding loop spends outside llama.cpp (plain steps): wall
    time of a short generation minus the time inside llama.cpp, per target pass."""
    prompt = model.tokenize("def fibonacci(n):\n    a, b = 0, 1\n")[:16]
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
