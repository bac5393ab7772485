"""The adaptive draft window: where the drafter and the draft length k are chosen, step by
step (``engine.window`` holds the fixed policy and the interface).

Cost model: with per-position conditional acceptance a_1..a_k for a drafter, a pass is
expected to emit E(k) = 1 + a_1 + a_1 a_2 + … tokens and to take
T(k) = k × draft cost + step cost(k+1), where a step's cost is what a pass over k+1 tokens
really costs inside the decoding loop (``engine.costs``: calibrated by ``engine.calibration``,
then timed while answering). The curve need not grow with k — on a GPU a 16-row pass can
cost less than an 8-row one — so every k up to the maximum is weighed on its own.
The controller picks the drafter and k with the best E(k)/T(k); when that is not at least
(1 + margin) × plain speed it turns speculation off and probes again now and then. A drafter
that knows its path confidence (the suffix drafter: P(tokens 0..i all accepted), calibrated on
what was accepted) gets no window beforehand: every step it proposes a full one, the controller
cuts it at the k with the best E(k)/T(k) by those confidences, and takes it over the choice
above when it promises more — a repeated passage earns a long draft at once, novel text none.
A drafter whose *ceiling* — the speedup it would give if every drafted token were accepted — is
under that bar is never run nor probed: on such hardware no acceptance rate can make it pay.
Costs are the calibration's (raw passes plus the loop's measured overhead) until the loop has
timed a few steps of a size while answering; from then on the observed running medians
(``LiveCosts``), so a calibration taken at an unlucky moment is corrected within a reply.
Sizes not timed yet are mapped through the timed ones; while only one- and two-token passes
have been timed that mapping is an extrapolation, so before it keeps speculation off a probe
times the shortest longer window the calibration says would pay.

Online, acceptance estimates are updated after every step (decayed counts per position), and
a draft model stops drafting early when its own confidence falls below a threshold that is
re-fitted from which confident tokens were actually accepted (DISCO-style, as in
transformers' adaptive assistant_confidence_threshold). Estimates start from what was learned
earlier for this pair and this prompt type (persisted in the user data directory).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.costs import LOOKUP_DRAFTERS, Costs, LiveCosts
from engine.drafters.base import Draft, Drafter
from engine.sampling import SamplingParams
from engine.stats import MessageStats, StepStats
from engine.window import WindowPolicy

MAX_WINDOW = 16
MARGIN = 0.05  # speculation must promise at least 5% to run
PROBE_EVERY = 12  # steps between probes while speculation is off, doubling while they fail
MAX_PROBE_EVERY = 96
PROBE_BUDGET = 0.02  # failed probes may cost at most this share of the time
DECAY = 0.92  # weight of older observations per new one
PRIOR_WEIGHT = 2.0
MAX_REMEMBERED_PRIOR = 0.9


@dataclass
class AcceptanceEstimate:
    """Decayed counts of (tried, accepted) per draft position."""

    tried: list[float] = field(default_factory=lambda: [0.0] * MAX_WINDOW)
    accepted: list[float] = field(default_factory=lambda: [0.0] * MAX_WINDOW)
    prior: float = 0.6

    def rate(self, position: int) -> float:
        return self.rates()[position]

    def rates(self) -> list[float]:
        """Per position; a position with little evidence leans on the one before it (its
        prior is that position's rate), so acceptance seen at short windows carries over to
        the longer ones never tried yet."""
        out, prior = [], self.prior
        for tried, accepted in zip(self.tried, self.accepted):
            prior = (accepted + prior * PRIOR_WEIGHT) / (tried + PRIOR_WEIGHT)
            out.append(prior)
        return out

    def observe(self, drafted: int, accepted: int) -> None:
        for i in range(drafted):
            if i > accepted:
                break  # positions after the first rejection were never tested
            self.tried[i] = self.tried[i] * DECAY + 1.0
            self.accepted[i] = self.accepted[i] * DECAY + (1.0 if i < accepted else 0.0)

    def to_dict(self) -> dict:
        return {"tried": self.tried, "accepted": self.accepted, "prior": self.prior}


def expected_tokens(rates: Sequence[float], k: int) -> float:
    total, chain = 1.0, 1.0
    for i in range(k):
        chain *= rates[i]
        total += chain
    return total


def best_window(rates: Sequence[float], draft_cost: float, step_cost: Callable[[int], float],
                max_k: int = MAX_WINDOW, chained: bool = False) -> tuple[int, float]:
    """(k, expected tokens per second) maximising E(k)/T(k) over k = 0..max_k;
    ``step_cost(n)``: seconds of a loop step that evaluates n tokens. ``rates``: per position,
    the acceptance given the tokens before were accepted, or with ``chained`` the probability
    that all tokens up to this one are."""
    best_k, best_speed = 0, 1.0 / step_cost(1)
    expected, chain = 1.0, 1.0  # E(k), built up one position at a time
    for k in range(1, max_k + 1):
        chain = rates[k - 1] if chained else chain * rates[k - 1]
        expected += chain
        speed = expected / (k * draft_cost + step_cost(k + 1))
        if speed > best_speed:
            best_k, best_speed = k, speed
    return best_k, best_speed


def ceiling(draft_cost: float, step_cost: Callable[[int], float],
            max_k: int = MAX_WINDOW) -> float:
    """The speedup over plain decoding of a drafter that is always right (E(k) = k + 1): the
    most that speculation with this draft cost can give on this machine."""
    return max((k + 1) / (k * draft_cost + step_cost(k + 1))
               for k in range(1, max_k + 1)) * step_cost(1)


class ConfidenceThreshold:
    """Stop drafting when the draft's probability of its token is below a threshold fitted to
    minimise FPR + 3·FNR over (confidence, accepted) pairs seen so far."""

    def __init__(self, initial: float = 0.4) -> None:
        self.value = initial
        self.confidences: list[float] = []
        self.outcomes: list[int] = []

    def observe(self, confidences: Sequence[float], accepted: int) -> None:
        for i, conf in enumerate(confidences[:accepted + 1]):
            self.confidences.append(conf)
            self.outcomes.append(1 if i < accepted else 0)
        del self.confidences[:-400], self.outcomes[:-400]
        if len(self.outcomes) >= 8 and 0 < sum(self.outcomes) < len(self.outcomes):
            self.value = self._fit()

    def _fit(self) -> float:
        """The candidate threshold (a confidence seen) with the lowest FPR + 3·FNR, the lowest
        such one on ties. O(n log n) over the pairs kept: it runs after every drafting step,
        which on a GPU costs a few milliseconds in all."""
        order = np.argsort(self.confidences, kind="stable")
        conf = np.asarray(self.confidences)[order]
        good = np.asarray(self.outcomes, dtype=np.int64)[order]
        values, first = np.unique(conf, return_index=True)  # keep = conf >= values[j]
        good_below = np.concatenate(([0], np.cumsum(good)))[first]  # rejected by values[j]
        n_good = int(good.sum())
        n_bad = len(good) - n_good
        bad_kept = n_bad - (first - good_below)
        cost = bad_kept / max(n_bad, 1) + 3 * good_below / max(n_good, 1)
        return float(values[int(np.argmin(cost))])


class AcceptanceMemory:
    """Acceptance learned per (model pair, drafter, prompt type), persisted as JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def prior(self, drafter: str, category: str, default: float) -> float:
        return float(self.data.get(f"{drafter}/{category}", default))

    def remember(self, drafter: str, category: str, rate: float) -> None:
        key = f"{drafter}/{category}"
        old = self.data.get(key)
        self.data[key] = rate if old is None else 0.7 * old + 0.3 * rate
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


DEFAULT_PRIORS = {"ngram": 0.35, "suffix": 0.5, "draft-model": 0.7, "universal": 0.6}
FREE_DRAFTERS = LOOKUP_DRAFTERS  # no model, and better on text that copies


class AdaptiveController(WindowPolicy):
    def __init__(self, drafters: Sequence[Drafter], planned: Costs,
                 memory: AcceptanceMemory | None = None, category: str = "chat",
                 max_window: int = MAX_WINDOW, margin: float = MARGIN,
                 live: LiveCosts | None = None) -> None:
        self.drafters = list(drafters)
        self.planned = planned  # costs before anything was timed (calibration + overhead)
        self.live = live or LiveCosts()
        self.costs = planned  # with the live costs put in, at each choice
        self.memory = memory
        self.category = category
        self.max_window = max_window
        self.margin = margin
        self.estimates: dict[str, AcceptanceEstimate] = {}
        self.thresholds = {d.name: ConfidenceThreshold() for d in self.drafters}
        self.reason = ""
        self.expected_speedup = 1.0
        self.ceilings: dict[str, float] = {}
        self._off_steps = 0
        self._probe_every = PROBE_EVERY
        self._current: tuple[Drafter, int] = (Drafter(), 0)
        self._assessors: list[Drafter] = []

    def set_category(self, category: str) -> None:
        self.category = category

    def start(self, prompt: Sequence[int], sampling: SamplingParams) -> None:
        from engine.prompt_type import copy_heavy

        self._off_steps = 0
        self._probe_every = PROBE_EVERY
        for drafter in self.drafters:
            drafter.reset(prompt, sampling)
            default = DEFAULT_PRIORS.get(drafter.name, 0.5)
            if drafter.name in FREE_DRAFTERS and copy_heavy(self.category):
                default = 0.8
            # a remembered rate is what other replies of this prompt type gave, not evidence
            # about this one: near 1 it would plan a whole window at the first step
            prior = min(self.memory.prior(drafter.name, self.category, default),
                        MAX_REMEMBERED_PRIOR) if self.memory else default
            self.estimates[drafter.name] = AcceptanceEstimate(prior=prior)

    def _draft_cost(self, drafter: Drafter) -> float:
        return self.costs.draft_cost(drafter.name)

    def choose(self) -> tuple[Drafter, int]:
        costs = self.live.apply(self.planned)
        step_cost = costs.curve.verify
        if costs is not self.costs:  # new costs: a median was published, or a first step
            self.costs = costs
            self.ceilings = {d.name: ceiling(self._draft_cost(d), step_cost, self.max_window)
                             for d in self.drafters}
        plain_speed = costs.plain_tok_per_s
        candidates = [d for d in self.drafters if self.ceilings[d.name] >= 1.0 + self.margin]
        self._assessors = [d for d in candidates if d.knows_path_confidence]
        best: tuple[Drafter | None, int, float] = (None, 0, plain_speed)
        for drafter in [d for d in candidates if not d.knows_path_confidence]:
            k, speed = best_window(self.estimates[drafter.name].rates(), self._draft_cost(drafter),
                                   step_cost, self.max_window)
            if k and speed > best[2]:
                best = (drafter, k, speed)
        drafter, k, speed = best
        self.expected_speedup = speed / plain_speed
        if drafter is None or self.expected_speedup < 1.0 + self.margin:
            self._off_steps += 1
            # probe with the cheapest drafter: a draft model's probe would first have to catch
            # its cache up with everything generated since it last ran
            seen = self.live.seen()
            untimed = {d.name: self._untimed_window(d, seen) for d in self.drafters
                       if not d.knows_path_confidence}
            others = [d for d in self.drafters if not d.knows_path_confidence
                      and (d in candidates or untimed[d.name])]
            probe = min(others, key=self._draft_cost) if others else None
            window = (untimed[probe.name] or 1) if probe is not None else 1
            # a check of an untimed window runs on the plain schedule, not the rate budget: it
            # stops once LiveCosts holds a few passes of that size, so its whole cost per
            # session is bounded, and the session's replies may be shorter than any budget
            due = probe is not None and self._off_steps >= (
                self._probe_every if window > 1 else self._probe_interval(probe, step_cost))
            if due:
                self._off_steps = 0
                self._probe_every = min(2 * self._probe_every, MAX_PROBE_EVERY)
                self.reason = "probing"
                probe.min_confidence = probe.min_path_confidence = 0.0
                self._current = (probe, window)
                return self._current
            self.reason = self._off_reason(candidates)
            self._current = (Drafter(), 0)
            return self._current
        self._probe_every = PROBE_EVERY
        drafter.min_confidence = self.thresholds[drafter.name].value
        # one more drafted token pays when its chance of being reached and accepted covers
        # what it adds to the step, in plain steps
        drafter.min_path_confidence = (step_cost(k + 1) - step_cost(k)
                                       + self._draft_cost(drafter)) / step_cost(1)
        self.reason = (f"{drafter.name}, window {k}: expected {self.expected_speedup:.2f}x "
                       "vs plain")
        self._current = (drafter, k)
        return self._current

    def draft(self, context: Sequence[int], room: int) -> tuple[Drafter, int, Draft]:
        """The choice by measured acceptance (``choose``), unless a drafter that knows its
        path confidence promises more: it proposes a full window, cut where one more token
        no longer pays (the k maximising E(k)/T(k), E from its own path confidences)."""
        drafter, k = self.choose()
        rival = 1.0 + self.margin
        if k and self.reason != "probing":
            rival = max(rival, self.expected_speedup)
        step_cost = self.costs.curve.verify
        for assessor in self._assessors if room > 0 else ():
            assessor.min_confidence = assessor.min_path_confidence = 0.0
            proposal = assessor.propose(context, min(self.max_window, room))
            chain = list(assessor.path_confidences[:len(proposal.tokens)])
            cut, speed = best_window(chain, self._draft_cost(assessor), step_cost, len(chain),
                                     chained=True)
            speedup = speed * step_cost(1)
            if cut and speedup >= rival:
                drafter, k, rival = assessor, cut, speedup
                self.expected_speedup = speedup
                self.reason = (f"{assessor.name}: {cut} tokens by its own confidence, expected "
                               f"{speedup:.2f}x vs plain")
                self._current = (assessor, cut)
                return assessor, cut, proposal.head(cut)
        return drafter, k, drafter.propose(context, min(k, room)) if min(k, room) > 0 else Draft()

    def _untimed_window(self, drafter: Drafter, seen: dict[int, float]) -> int:
        """A window worth timing before speculation is written off. While the loop has timed
        only one- and two-token passes (``seen``: ``LiveCosts.seen()``), the live curve
        extrapolates every longer pass from the two-token one, whose error it multiplies (on
        this CPU: two-token passes x1.9 where x1.7 was calibrated made every window look like a
        loss, and an "off" decided so would never be revisited). Then: the shortest window
        k >= 2 with which an always-right ``drafter`` would pay by the calibration rescaled to
        the one-token steps timed now; else 0."""
        if 1 not in seen or max(seen) != 2:
            return 0
        planned = self.planned.curve.verify
        scale = seen[1] / planned(1)  # the calibrated curve, rescaled to the steps timed now
        for k in range(2, self.max_window + 1):
            cost = k * self._draft_cost(drafter) + planned(k + 1) * scale
            if (k + 1) * seen[1] / cost >= 1.0 + self.margin:
                return k
        return 0

    def _probe_interval(self, probe: Drafter, step_cost: Callable[[int], float]) -> float:
        """Steps between probes: the backing-off schedule, but never so often that failed
        probes cost more than ``PROBE_BUDGET`` of the time (a probe's extra cost over a plain
        step, against that many plain steps)."""
        extra = step_cost(2) + self._draft_cost(probe) - step_cost(1)
        return max(self._probe_every, extra / (PROBE_BUDGET * step_cost(1)))

    def _off_reason(self, candidates: list[Drafter]) -> str:
        if not self.drafters:
            return "speculation off: no drafter for this pair"
        if not candidates:
            best = ", ".join(f"{name} {value:.2f}x" for name, value in self.ceilings.items())
            return ("speculation off: on this machine even drafts that are always right would "
                    f"not reach {1 + self.margin:.2f}x plain (at most: {best})")
        return (f"speculation off: best expected speedup {self.expected_speedup:.2f}x is below "
                f"{1 + self.margin:.2f}x")

    def observe(self, step: StepStats) -> None:
        drafter, _ = self._current
        if not step.drafted or drafter.name not in self.estimates:
            return
        self.estimates[drafter.name].observe(step.drafted, step.accepted)
        # a drafter that knows its path confidence is cut by E(k)/T(k), never by a threshold
        if drafter.confidences and not drafter.knows_path_confidence:
            self.thresholds[drafter.name].observe(drafter.confidences, step.accepted)

    def note(self) -> str:
        return self.reason

    def finish(self, stats: MessageStats) -> None:
        stats.expected_speedup = self.expected_speedup
        stats.ceiling_speedup = max(self.ceilings.values(), default=None)
        if self.memory is None:
            return
        for name, estimate in self.estimates.items():
            if estimate.tried[0] >= 3:
                self.memory.remember(name, self.category, estimate.rate(0))
