"""Which installed draft model should draft for this target on this machine?

For each candidate: its measured cost per token (``engine.calibration``) and a cheap estimate of
its acceptance, taken before any speculation: the target answers a few short requests of
different kinds (plain greedy decoding), then the draft reads each answer once, in one batch,
and we count how often its greedy next token is the one the target wrote (in the draft's own
tokens, so it works across vocabularies too). The cost model (``engine.adaptive_window``) turns
cost and acceptance into an expected speedup; the best candidate is recommended, or none when
plain decoding is expected to be fastest.

    python -m engine.recommend [--target ID] [--json]

Not for: choosing the window during a reply (``engine.adaptive_window``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import llama_cpp  # noqa: F401  (llama.cpp's libraries before numpy: see engine/worker.py)
import numpy as np

from engine import catalog, compat, models
from engine.adaptive_window import MARGIN, best_window, ceiling
from engine.calibration import Calibration, calibrate, measure_draft
from engine.compat import Compatibility
from engine.prompting import prompt_tokens
from engine.runtime import Model, RuntimeOptions
from engine.speculative import Finished, GenerationParams, generate, loop_overhead

SAMPLE_REQUESTS = (
    "Write a Python function that checks whether a string is a palindrome.",
    "Summarize in two sentences: speculative decoding lets a small model propose several "
    "tokens that a large model then checks in one pass, keeping only what it agrees with.",
    "Explain what a hash map is to a new programmer.",
)
SAMPLE_TOKENS = 64


@dataclass
class Candidate:
    draft: str
    compatibility: str
    acceptance: float
    cost_ratio: float  # draft cost per token / target cost per token
    window: int
    expected_speedup: float
    ceiling: float  # the speedup if every drafted token were accepted


@dataclass
class Answer:
    request: str
    tokens: list[int]  # the target's tokens
    text: str


def target_answers(target: Model, requests: tuple[str, ...] = SAMPLE_REQUESTS,
                   max_tokens: int = SAMPLE_TOKENS) -> list[Answer]:
    """The target's own greedy answers: what the drafts are scored against."""
    answers = []
    for request in requests:
        tokens = prompt_tokens(target, [{"role": "user", "content": request}])
        for event in generate(target, tokens, GenerationParams(max_tokens)):
            if isinstance(event, Finished):
                answers.append(Answer(request, event.tokens, event.text))
    return answers


def agreement(draft: Model, answers: list[Answer], same_vocabulary: bool) -> float:
    """Share of answer tokens that the draft predicts greedily when it reads the request and
    the target's answer in one pass: the target's own tokens for a same-vocabulary draft, the
    answer text in the draft's tokens otherwise."""
    hits = total = 0
    for answer in answers:
        prompt = prompt_tokens(draft, [{"role": "user", "content": answer.request}])
        reply = list(answer.tokens) if same_vocabulary else draft.tokenize(
            answer.text, add_special=False, parse_special=False)
        if not reply:
            continue
        room = min(len(reply), draft.n_batch - 1, draft.n_ctx - len(prompt) - 1)
        if room <= 0:
            continue
        draft.reset()
        draft.decode(prompt[:-1], logits="none")
        logits = draft.decode([prompt[-1], *reply[:room - 1]], logits="all")
        predicted = np.asarray(logits).argmax(axis=1)
        hits += int((predicted == np.asarray(reply[:room])).sum())
        total += room
    draft.reset()
    return hits / total if total else 0.0


def score(calibration: Calibration, draft_id: str, draft: Model, compatibility: Compatibility,
          answers: list[Answer]) -> Candidate:
    acceptance = agreement(draft, answers, compatibility.kind == "native")
    cost = measure_draft(draft)
    step_cost = calibration.costs().curve.verify
    window, speed = best_window([acceptance] * 16, cost, step_cost)
    return Candidate(draft_id, compatibility.label(), acceptance,
                     cost / calibration.target.seconds[0], window, speed * step_cost(1),
                     ceiling(cost, step_cost))


def installed_drafts(target_path: Path) -> list[tuple[str, Path]]:
    """Installed models smaller than the target (a draft must be much cheaper)."""
    target_size = target_path.stat().st_size
    out = []
    for row in models.known_models():
        if row.installed and row.path is not None and row.path != target_path \
                and compat.small_enough_to_draft(row.size, target_size):
            out.append((row.id, row.path))
    return out


def recommend(target_id: str, options: RuntimeOptions = RuntimeOptions(n_ctx=2048)
              ) -> dict:
    """Score every installed draft for ``target_id``; the best first."""
    target_path = models.resolve(target_id)
    target = Model(target_path, options)
    try:
        calibration = calibrate(target, {}, loop_overhead)
        answers = target_answers(target)
        candidates = []
        for draft_id, draft_path in installed_drafts(target_path):
            draft = Model(draft_path, options)
            try:
                candidates.append(score(calibration, draft_id, draft,
                                        compat.analyse(target, draft), answers))
            finally:
                draft.close()
    finally:
        target.close()
    candidates.sort(key=lambda c: c.expected_speedup, reverse=True)
    best = candidates[0] if candidates and candidates[0].expected_speedup >= 1 + MARGIN \
        else None
    return {"target": target_id, "candidates": [asdict(c) for c in candidates],
            "recommended": best.draft if best else None,
            "reason": (f"{best.draft}: expected {best.expected_speedup:.2f}x at window "
                       f"{best.window}" if best else
                       "no draft is expected to beat plain decoding on this machine; "
                       "Tandem will keep speculation off (n-gram drafting still helps on "
                       "text that copies the prompt)")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.recommend", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=catalog.DEFAULT_TARGET)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = recommend(args.target)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{'draft':42} {'compatibility':34} {'accept':>6} {'cost':>5} {'k':>2} {'speedup':>7} "
          f"{'ceiling':>7}")
    for c in result["candidates"]:
        print(f"{c['draft']:42} {c['compatibility'][:34]:34} {c['acceptance']:6.2f} "
              f"{c['cost_ratio']:5.2f} {c['window']:2d} {c['expected_speedup']:6.2f}x "
              f"{c['ceiling']:6.2f}x")
    print(f"\nrecommended: {result['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
