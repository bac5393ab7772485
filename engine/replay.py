"""Acceptance traces, and replaying them against a cost curve: what a window policy would
choose, and gain, on hardware this machine is not.

In greedy decoding the target's reply does not depend on the hardware, and neither does what a
drafter proposes after each prefix of it. A ``Trace`` records, for every position of a reply,
how many tokens each drafter would propose (up to ``TRACE_WINDOW``), how many of them match the
reply, and a draft model's own confidence in each. ``replay`` runs a window policy over the
trace with step costs from any ``Costs`` (this machine's calibration, the H100 curves in
``costs/``) and returns the time it would take against plain decoding. The policy sees exactly
what it sees in the decoding loop: its choices, and the outcome and cost of each step.

Not for: the decoding loop itself (``engine.speculative``) or measuring costs.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import accumulate
from pathlib import Path

from engine.costs import CostCurve, Costs, LiveCosts
from engine.drafters.base import Draft, Drafter
from engine.drafters.suffix import SuffixAutomaton
from engine.sampling import SamplingParams
from engine.stats import StepStats
from engine.window import WindowPolicy

TRACE_WINDOW = 16


@dataclass
class Trace:
    prompt_id: str
    category: str
    reply: list[int]
    proposed: dict[str, list[int]]  # drafter -> tokens it proposes at each position
    matched: dict[str, list[int]]  # drafter -> how many of them match the reply
    confidences: dict[str, list[list[float]]] = field(default_factory=dict)
    rules: dict[str, str] = field(default_factory=dict)  # drafter -> its confidence_rule

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Trace:
        return cls(**data)


def load_traces(path: Path) -> list[Trace]:
    return [Trace.from_dict(row) for row in json.loads(path.read_text())]


def matching(proposal: Sequence[int], reply: Sequence[int]) -> int:
    n = 0
    while n < min(len(proposal), len(reply)) and proposal[n] == reply[n]:
        n += 1
    return n


def record(prompt_id: str, category: str, prompt: Sequence[int], reply: Sequence[int],
           drafters: dict[str, Drafter], sampling: SamplingParams = SamplingParams()) -> Trace:
    """What each drafter proposes after every prefix of ``reply`` (the target's own greedy
    reply to ``prompt``)."""
    trace = Trace(prompt_id, category, list(reply), {}, {})
    for name, drafter in drafters.items():
        drafter.reset(prompt, sampling)
        drafter.min_confidence = drafter.min_path_confidence = 0.0  # record whole proposals
        trace.rules[name] = drafter.confidence_rule
        proposed, matched, confidences = [], [], []
        for i in range(len(reply)):
            draft = drafter.propose([*prompt, *reply[:i]], TRACE_WINDOW)
            proposed.append(len(draft.tokens))
            matched.append(matching(draft.tokens, reply[i:]))
            confidences.append([round(float(c), 3) for c in drafter.confidences])
            if draft.tokens:  # it learns as in the loop, as if every proposal were verified
                drafter.accepted(matched[-1], proposed[-1])
        trace.proposed[name], trace.matched[name] = proposed, matched
        if any(confidences):
            trace.confidences[name] = confidences
    return trace


def copy_ceiling(prompt: Sequence[int], reply: Sequence[int], window: int,
                 min_match: int = 2) -> tuple[int, int]:
    """(accepted, steps) of an oracle that, at every step of a fixed ``window`` over the
    greedy ``reply``, drafts the best continuation of *any* earlier occurrence of the text's
    last ``min_match`` tokens in prompt + reply so far: the most that a drafter copying from
    the request itself can have accepted, whichever occurrence it picks and however long it
    drafts, if it needs that many matched tokens (the n-gram drafter 2; the suffix drafter 1,
    at its resume point). Not a bound for a drafter that also remembers other requests."""
    index = SuffixAutomaton()
    index.extend(prompt)
    text = [*prompt]
    accepted = steps = position = 0
    while position < len(reply):
        state = 0
        for token in text[-min_match:] if len(text) >= min_match else ():
            state = index.follow(state, token)
            if state < 0:
                break
        hits = 0
        if state > 0:
            for token in reply[position:position + min(window, len(reply) - position - 1)]:
                state = index.follow(state, token)
                if state < 0:
                    break
                hits += 1
        accepted, steps = accepted + hits, steps + 1
        new = reply[position:position + hits + 1]
        index.extend(new)
        text.extend(new)
        position += hits + 1
    return accepted, steps


class _Replayed(Drafter):
    """A drafter that proposes what the trace says it proposed at the current position."""

    def __init__(self, name: str, trace: Trace) -> None:
        self.name, self.trace, self.position, self.hits = name, trace, 0, 0
        self.confidences: list[float] = []
        self.path_confidences: list[float] = []
        # a stop-before drafter's recorded confidences are conditional: their running product
        # is its path confidence
        self.knows_path_confidence = (trace.rules.get(name) == "stop-before"
                                      and name in trace.confidences)

    def propose(self, context: Sequence[int] | None, k: int) -> Draft:
        n = min(k, self.trace.proposed[self.name][self.position])
        table = self.trace.confidences.get(self.name)
        own = table[self.position] if table else []
        if own:  # stop where the drafter would have, under the policy's thresholds
            before = self.trace.rules.get(self.name) == "stop-before"
            path = 1.0
            for i, c in enumerate(own[:n]):
                path *= c
                if c < self.min_confidence or (before and path < self.min_path_confidence):
                    n = i if before else i + 1
                    break
        self.confidences = list(own[:n])
        self.path_confidences = list(accumulate(self.confidences, operator.mul))
        self.hits = min(n, self.trace.matched[self.name][self.position])
        return Draft([0] * n)


@dataclass
class Replay:
    seconds: float
    plain_seconds: float
    steps: int
    drafted: int
    accepted: int
    by_drafter: dict[str, int]  # steps that drafted, per drafter
    planned: list[float]  # the policy's expected speedup at each step that drafted (no probes)
    windows: list[int]  # k of each step that drafted

    @property
    def speedup(self) -> float:
        return self.plain_seconds / self.seconds


def replay(trace: Trace, costs: Costs, policy_for: Callable[[list[Drafter], LiveCosts],
                                                            WindowPolicy]) -> Replay:
    """Run the policy ``policy_for(drafters, live)`` over ``trace``, paying ``costs`` for each
    step (draft tokens × the drafter's cost + a step over drafted + 1 tokens)."""
    drafters = [_Replayed(name, trace) for name in trace.proposed]
    live = LiveCosts()
    policy = policy_for(drafters, live)
    policy.start([], SamplingParams())
    curve: CostCurve = costs.curve
    seconds, position = 0.0, 0
    result = Replay(0.0, len(trace.reply) * curve.verify(1), 0, 0, 0, {}, [], [])
    while position < len(trace.reply):
        for drafter in drafters:
            drafter.position = position
        drafter, k, draft = policy.draft((), max(len(trace.reply) - position - 1, 0))
        n = len(draft.tokens)
        accepted = min(drafter.hits, n) if n else 0  # the policy may have cut the proposal
        step = StepStats(drafter.name if n else "none", k, n, accepted,
                         n * costs.draft_cost(drafter.name), curve.verify(n + 1))
        seconds += step.draft_seconds + step.pass_seconds
        policy.observe(step)
        live.observe(step)
        if n:
            result.drafted += n
            result.accepted += accepted
            result.by_drafter[drafter.name] = result.by_drafter.get(drafter.name, 0) + 1
            result.windows.append(k)
            if policy.note() != "probing":
                result.planned.append(getattr(policy, "expected_speedup", 1.0))
        result.steps += 1
        position += accepted + 1
    result.seconds = seconds
    return result


def load_costs(path: Path) -> Costs:
    """A cost file (``costs/*.json``: ``target_pass_seconds`` for n = 1..16 and
    ``draft_token_seconds``) or a calibration saved by Tandem (``target.seconds``)."""
    data = json.loads(path.read_text())
    if "target_pass_seconds" in data:
        seconds = data["target_pass_seconds"]
    else:
        overhead = data.get("step_overhead", 0.0)
        seconds = [s + overhead for s in data["target"]["seconds"]]
    return Costs(CostCurve(list(seconds)), dict(data.get("draft_token_seconds", {})))
