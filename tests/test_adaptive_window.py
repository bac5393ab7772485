"""The cost model and the adaptive window on synthetic cost curves and acceptance runs."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from engine.adaptive_window import (
    PROBE_BUDGET,
    AcceptanceEstimate,
    AcceptanceMemory,
    AdaptiveController,
    ConfidenceThreshold,
    best_window,
    ceiling,
    expected_tokens,
)
from engine.costs import CostCurve, Costs, LiveCosts
from engine.drafters.base import Drafter
from engine.drafters.ngram import NgramDrafter
from engine.drafters.suffix import SuffixDrafter
from engine.replay import matching
from engine.sampling import SamplingParams
from engine.stats import StepStats

OVERHEAD = 0.0005  # the loop's own time per step
STEEP = CostCurve([0.040 * (1 + 0.7 * (n - 1)) + OVERHEAD for n in range(1, 17)])  # 2-core CPU
FLAT = CostCurve([0.010 * (1 + 0.02 * (n - 1)) + OVERHEAD for n in range(1, 17)])  # a GPU


class Named(Drafter):
    def __init__(self, name):
        self.name = name


def controller(curve, draft_cost, prior, names=("draft-model",)):
    costs = Costs(curve, {"draft-model": draft_cost, "ngram": 0.0})
    ctl = AdaptiveController([Named(name) for name in names], costs)
    ctl.start([1, 2, 3], SamplingParams())
    for name in names:
        ctl.estimates[name].prior = prior
    return ctl


def test_expected_tokens_formula():
    assert expected_tokens([0.5] * 4, 0) == 1.0
    assert abs(expected_tokens([0.5] * 4, 3) - (1 + 0.5 + 0.25 + 0.125)) < 1e-12


def test_long_window_when_verify_is_flat_and_acceptance_high():
    k, _ = best_window([0.9] * 16, 0.0005, FLAT.verify)
    assert k >= 8


def test_short_or_off_when_verify_is_steep():
    k, _ = best_window([0.9] * 16, 0.02, STEEP.verify)
    assert k <= 2
    k, _ = best_window([0.5] * 16, 0.02, STEEP.verify)
    assert k == 0


def test_controller_turns_off_and_says_why():
    ctl = controller(STEEP, 0.025, 0.4)
    drafter, k = ctl.choose()
    assert k == 0 and "off" in ctl.note()


def test_controller_adapts_when_acceptance_changes_mid_reply():
    ctl = controller(FLAT, 0.001, 0.9)
    _, k_start = ctl.choose()
    assert k_start >= 6
    for _ in range(30):  # hard text: nothing accepted
        drafter, k = ctl.choose()
        if k:
            ctl.observe(StepStats("draft-model", k, k, 0, 0.0, 0.0))
    assert ctl.choose()[1] <= 2
    for _ in range(60):  # easy text again: everything accepted
        drafter, k = ctl.choose()
        ctl.observe(StepStats("draft-model", k, k, k, 0.0, 0.0))
    assert ctl.choose()[1] >= 6


def test_acceptance_estimate_ignores_unverified_positions():
    estimate = AcceptanceEstimate(prior=0.5)
    estimate.observe(drafted=5, accepted=1)  # position 0 accepted, 1 rejected, 2-4 unknown
    assert estimate.tried[:3] == [1.0, 1.0, 0.0]


def test_confidence_threshold_fits_between_classes():
    threshold = ConfidenceThreshold(initial=0.0)
    for _ in range(10):
        threshold.observe([0.95, 0.9, 0.2], accepted=2)  # confident ones accepted
    assert 0.2 < threshold.value <= 0.9


def _threshold_by_definition(confidences: list[float], outcomes: list[int]) -> float:
    """FPR + 3·FNR tried at every confidence seen, lowest threshold on ties: the fit's spec."""
    best, best_cost = None, float("inf")
    for threshold in sorted(set(confidences)):
        keep = [c >= threshold for c in confidences]
        bad = [not o for o in outcomes]
        fpr = sum(k and b for k, b in zip(keep, bad)) / max(sum(bad), 1)
        fnr = sum(not k and o for k, o in zip(keep, outcomes)) / max(sum(outcomes), 1)
        if fpr + 3 * fnr < best_cost:
            best, best_cost = threshold, fpr + 3 * fnr
    return best


@pytest.mark.parametrize("seed", range(20))
def test_confidence_threshold_is_the_best_by_its_definition(seed):
    rng = np.random.default_rng(seed)
    threshold = ConfidenceThreshold(initial=0.0)
    for _ in range(int(rng.integers(3, 200))):
        # a draft model's continuous confidences, or a lookup's few repeated values
        raw = rng.random(int(rng.integers(1, 9)))
        confidences = list(np.round(raw, 1) if seed % 2 else raw)
        threshold.observe(confidences, accepted=int(rng.integers(0, len(confidences) + 1)))
    if 0 < sum(threshold.outcomes) < len(threshold.outcomes) and len(threshold.outcomes) >= 8:
        assert threshold.value == _threshold_by_definition(threshold.confidences,
                                                           threshold.outcomes)


def test_ceiling_is_the_speedup_of_drafts_always_accepted():
    plain = 1 / STEEP.verify(1)
    free_draft = ceiling(0.0, STEEP.verify)
    assert abs(free_draft - max(best_window([1.0] * 16, 0.0, STEEP.verify, k)[1]
                                for k in range(1, 17)) / plain) < 1e-12
    assert free_draft > 1.2  # a free, always-right draft beats plain even on a steep curve
    assert ceiling(0.025, STEEP.verify) < 1.0  # a 0.6-cost draft never can
    assert ceiling(0.0005, FLAT.verify) > 5


def test_draft_that_cannot_win_even_when_always_right_is_never_run_nor_probed():
    ctl = controller(STEEP, 0.025, 1.0)  # perfect acceptance, but too slow a draft
    assert all(ctl.choose()[1] == 0 for _ in range(400))
    assert ctl.ceilings["draft-model"] < 1.0
    assert "always right" in ctl.note() and "draft-model 0.8" in ctl.note()
    both = controller(STEEP, 0.025, 0.1, names=("draft-model", "ngram"))
    probed = {drafter.name for drafter, k in (both.choose() for _ in range(400)) if k}
    assert probed == {"ngram"}  # the free drafter can still win, so it is probed


def test_probes_back_off_while_speculation_keeps_losing():
    ctl = controller(STEEP, 0.0, 0.4)
    probes = []
    for step in range(400):
        drafter, k = ctl.choose()
        if k:
            assert ctl.note() == "probing" and k == 1
            probes.append(step)
            ctl.observe(StepStats(drafter.name, k, k, 0, 0.0, 0.0))
    gaps = [b - a for a, b in zip(probes, probes[1:])]
    # a failed probe costs a 2-token step instead of a plain one: at most PROBE_BUDGET of the
    # time, so here (x1.7) no more often than every ~35 steps; then the schedule backs off
    budget = (STEEP.verify(2) - STEEP.verify(1)) / (PROBE_BUDGET * STEEP.verify(1))
    assert probes[0] == math.ceil(budget) - 1 and gaps[:2] == [math.ceil(budget), 48]
    assert set(gaps[2:]) <= {96}  # capped


def test_calibration_measured_under_load_is_replaced(tiny_dir):
    """A cached calibration that claims plain decoding is 50x slower than it really is (as if
    measured while the machine was busy) is re-measured after the first plain reply."""
    from engine import calibration as calibration_module
    from engine.session import ChatRequest, LoadRequest, Session

    session = Session()
    session.load(LoadRequest(str(tiny_dir / "target.gguf")))
    real = session.calibration
    assert real.step_overhead > 0 and real.plain_tok_per_s > 0
    path = calibration_module.cache_path(session.target, {})
    slow = dataclasses.replace(real, target=CostCurve([s * 50 for s in real.target.seconds]))
    path.write_text(slow.to_json())
    session.load(LoadRequest(str(tiny_dir / "target.gguf")))
    assert session.calibration.plain_tok_per_s < real.plain_tok_per_s / 10
    request = ChatRequest([{"role": "user", "content": "hello"}], max_tokens=48, mode="off")
    done = [e for e in session.chat(request) if e["type"] == "done"][0]
    assert done["stats"]["tokens"] >= 32
    # the reply's own passes were timed for the controller, at the real (not the cached) cost
    assert session.live_costs.seen()[1] < slow.target.seconds[0] / 10
    assert session.calibration.plain_tok_per_s > slow.plain_tok_per_s * 10
    assert calibration_module.Calibration.from_json(path.read_text()).measured_at > \
        slow.measured_at
    session.close()


def test_pass_times_seen_while_answering_override_a_lucky_calibration():
    """Calibrated at a moment when two-token passes looked cheap (x1.1), the controller drafts;
    once the passes it times show x2.0, it stops — and the ceiling it reports follows."""
    lucky = CostCurve([0.040 * (1 + 0.1 * (n - 1)) for n in range(1, 17)])
    ctl = controller(lucky, 0.0, 0.8, names=("ngram",))
    drafter, k = ctl.choose()
    assert k >= 1 and "expected" in ctl.note()
    for _ in range(40):
        drafter, k = ctl.choose()
        step = StepStats(drafter.name if k else "none", k, k, int(0.8 * k), 0.0,
                         0.040 * (1 + 1.0 * k))  # what passes really cost
        ctl.live.observe(step)  # as the decoding loop does
        ctl.observe(step)
    assert ctl.choose()[1] == 0
    assert ctl.ceilings["ngram"] < 1.2
    assert abs(ctl.live.curve(lucky).verify(3) - 0.120) < 1e-9  # unseen: mapped, not lucky


def test_live_costs_rescale_the_calibration_where_nothing_was_seen():
    live = LiveCosts()
    for _ in range(LiveCosts.MIN_SAMPLES):  # the machine runs at half the calibrated speed now
        live.observe(StepStats("none", 0, 0, 0, 0.0, 2 * STEEP.verify(1)))
    curve = live.curve(STEEP)
    assert abs(curve.verify(1) - 2 * STEEP.verify(1)) < 1e-12
    assert abs(curve.verify(4) - 2 * STEEP.verify(4)) < 1e-12
    planned = Costs(STEEP, {"draft-model": 0.02, "ngram": 0.0})
    costs = live.apply(planned)
    # a draft not yet timed keeps its cost relative to the target: the ceiling is unchanged
    assert abs(costs.draft_token_seconds["draft-model"] - 0.04) < 1e-12
    for _ in range(LiveCosts.MIN_SAMPLES):
        live.observe(StepStats("draft-model", 2, 2, 1, 0.05, 0.2))
    assert live.apply(planned).draft_token_seconds["draft-model"] == 0.025  # timed


def test_live_costs_are_rebuilt_only_when_a_median_moves():
    """The window choice runs every step and rebuilds its cost model (curve, ceilings) only
    when ``apply`` hands it new costs: a step time within the tolerance of the published
    median changes nothing, a real move is published at once."""
    live = LiveCosts()
    planned = Costs(FLAT, {"draft-model": 0.005})
    for _ in range(LiveCosts.MIN_SAMPLES):
        live.observe(StepStats("none", 0, 0, 0, 0.0, 0.010))
    first = live.apply(planned)
    assert first.curve.verify(1) == 0.010
    for _ in range(10):  # the same step time, and jitter far inside the tolerance
        live.observe(StepStats("none", 0, 0, 0, 0.0, 0.010 * (1 + LiveCosts.TOLERANCE / 4)))
    assert live.apply(planned) is first
    for _ in range(LiveCosts.MIN_SAMPLES + 10):  # the machine slows down by a fifth
        live.observe(StepStats("none", 0, 0, 0, 0.0, 0.012))
    moved = live.apply(planned)
    assert moved is not first and moved.curve.verify(1) == 0.012
    other = Costs(STEEP, {})  # another plan is never answered with costs built for the first
    assert live.apply(other).curve.verify(3) != moved.curve.verify(3)


def test_the_controller_keeps_its_ceilings_until_the_costs_move():
    live = LiveCosts()
    ctl = AdaptiveController([NgramDrafter()], Costs(FLAT, {}), live=live)
    ctl.start([1, 2, 3], SamplingParams())
    ctl.choose()
    ceilings = ctl.ceilings
    ctl.choose()
    assert ctl.ceilings is ceilings
    for _ in range(LiveCosts.MIN_SAMPLES):  # two-token passes dear, one-token ones as planned
        live.observe(StepStats("none", 0, 0, 0, 0.0, FLAT.verify(1)))
        live.observe(StepStats("ngram", 1, 1, 1, 0.0, 4 * FLAT.verify(2)))
    ctl.choose()
    assert ctl.ceilings["ngram"] < ceilings["ngram"]


def test_lookup_drafters_cost_nothing_until_timed_even_beside_a_draft_model():
    """A cost table that times only the draft model (the calibration, the H100 cost files)
    must not price the suffix lookup like the draft model: it would look unable to pay, and
    would never be run (nor timed) at all."""
    from engine.drafters.ngram import NgramDrafter
    from engine.drafters.suffix import SuffixDrafter

    planned = Costs(CostCurve([1.0 + 0.1 * n for n in range(16)]), {"draft-model": 0.6})
    assert planned.draft_cost("suffix") == planned.draft_cost("ngram") == 0.0
    assert planned.draft_cost("universal") == 0.6  # a model: priced as the draft model
    ctl = AdaptiveController([SuffixDrafter(), NgramDrafter()], planned)
    ctl.start([1, 2, 3], SamplingParams())
    ctl.choose()
    assert ctl.ceilings["suffix"] == ctl.ceilings["ngram"] > 1.5


def _decode(policy, prompt: list[int], reply: list[int], curve: CostCurve) -> tuple[float, int]:
    """(speedup over plain, tokens drafted) of the decoding loop's steps over a greedy ``reply``
    at ``curve``'s step costs: as ``engine.speculative`` runs them, the target being the reply."""
    live = LiveCosts()
    policy.live = live
    policy.start(prompt, SamplingParams())
    seconds, position, drafted = 0.0, 0, 0
    while position < len(reply):
        drafter, k, draft = policy.draft([*prompt, *reply[:position]], len(reply) - position - 1)
        n = len(draft.tokens)
        hits = matching(draft.tokens, reply[position:])
        if n:
            drafter.accepted(hits, n)
        step = StepStats(drafter.name if n else "none", k, n, hits, 0.0, curve.verify(n + 1))
        policy.observe(step)
        live.observe(step)
        seconds, position, drafted = seconds + step.pass_seconds, position + hits + 1, drafted + n
    return len(reply) * curve.verify(1) / seconds, drafted


def test_a_remembered_passage_is_drafted_at_once_by_the_suffix_drafters_own_confidence():
    """A reply that repeats an earlier one (an agent re-sending a request): the suffix drafter
    knows from its match that the draft will hold, so auto drafts long at once on a CPU-steep
    curve where windows learned from acceptance would start from a prior that does not pay.
    Novel text: nothing matches, nothing is drafted, nothing is lost."""
    rng = np.random.default_rng(0)
    prompt = [int(t) for t in rng.integers(0, 5000, 60)]
    passage = [int(t) for t in rng.integers(0, 5000, 200)]
    suffix = SuffixDrafter()
    suffix.remember(passage)
    costs = Costs(STEEP, {"ngram": 0.0, "suffix": 0.0})
    speedup, drafted = _decode(AdaptiveController([NgramDrafter(), suffix], costs), prompt,
                               passage, STEEP)
    assert speedup > 1.25 and drafted > 150, (speedup, drafted)
    novel = [int(t) for t in rng.integers(0, 5000, 200)]
    speedup, drafted = _decode(AdaptiveController([NgramDrafter(), SuffixDrafter()], costs),
                               prompt, novel, STEEP)
    assert speedup >= 1 - PROBE_BUDGET and drafted < 10, (speedup, drafted)


def _cpu_costs(two_token: float, dear_long_passes: bool) -> tuple[CostCurve, CostCurve]:
    """(planned, real) one-token-relative curves: the calibration timed a two-token pass at
    x1.45 of a one-token one, the loop sees ``two_token``; longer passes cost what was
    calibrated, or (``dear_long_passes``) as much more as the two-token error extrapolates."""
    base = 0.033
    planned = [base * (1 + 0.7 * (n - 1)) for n in range(1, 17)]
    planned[1] = base * 1.45
    slope = (two_token - 1) / 0.45
    real = [base * (1 + slope * (planned[n - 1] / base - 1)) if dear_long_passes
            else planned[n - 1] for n in range(1, 17)]
    real[1] = base * two_token
    return CostCurve(planned), CostCurve(real)


def _run_copying(ctl: AdaptiveController, real: CostCurve, steps: int) -> list[int]:
    """Windows chosen over ``steps`` steps of a reply that copies (every draft accepted),
    each step timed at ``real`` costs, as the decoding loop reports them."""
    windows = []
    for _ in range(steps):
        drafter, k = ctl.choose()
        step = StepStats(drafter.name if k else "none", k, k, k, 0.0, real.verify(k + 1))
        ctl.live.observe(step)
        ctl.observe(step)
        windows.append(k)
    return windows


def _after_timed_probes(planned: CostCurve, real: CostCurve) -> AdaptiveController:
    ctl = controller(planned, 0.0, 0.9, names=("ngram",))
    for n in (1, 2):  # what a session has timed after a few one-token probes
        for _ in range(LiveCosts.MIN_SAMPLES):
            ctl.live.observe(StepStats("ngram", n - 1, n - 1, n - 1, 0.0, real.verify(n)))
    return ctl


@pytest.mark.parametrize("two_token", [1.9, 2.2])
def test_off_on_an_extrapolated_curve_measures_a_longer_pass_and_drafts_again(two_token):
    """Two-token passes dearer than calibrated (as on this CPU) made the live curve extrapolate
    the error to every longer pass, so no window seemed to pay and speculation stayed off for
    the session. Longer passes really cost what was calibrated: the controller must time one
    before it concludes, and then draft on text that copies."""
    planned, real = _cpu_costs(two_token, dear_long_passes=False)
    ctl = _after_timed_probes(planned, real)
    windows = _run_copying(ctl, real, 1500)
    assert max(windows[:600]) >= 2  # a longer pass was tried while off
    assert sum(k >= 2 for k in windows[-200:]) > 150  # and the copy is drafted again


def test_a_longer_pass_that_is_as_dear_as_extrapolated_keeps_speculation_off():
    planned, real = _cpu_costs(2.2, dear_long_passes=True)
    ctl = _after_timed_probes(planned, real)
    windows = _run_copying(ctl, real, 1500)
    assert sum(1 for k in windows[-500:] if k) <= 500 * PROBE_BUDGET  # only rare probes
    assert all(k <= 1 for k in windows[-500:])  # the dear size, once timed, is not re-probed


def test_the_check_fits_into_short_replies():
    """The session builds a controller per reply and keeps only the live costs: a check that
    waited for a rate budget (~70 steps here) would never run in 40-token replies."""
    planned, real = _cpu_costs(2.2, dear_long_passes=False)
    live = _after_timed_probes(planned, real).live
    windows = []
    for _ in range(3):
        ctl = controller(planned, 0.0, 0.9, names=("ngram",))
        ctl.live = live
        windows += _run_copying(ctl, real, 40)
    assert max(windows) >= 2


def test_a_remembered_rate_never_plans_a_long_first_window(tmp_path):
    """The acceptance memory holds a rate per (drafter, prompt type) from earlier replies;
    one near 1 (a few replies that copied everything) must not make the first step of a reply
    of that type — which may copy far less, as an agent's JSON classed "summarize" — draft a
    whole window on this CPU's steep curve: a remembered rate is a prior, not evidence."""
    memory = AcceptanceMemory(tmp_path / "acceptance.json")
    memory.remember("ngram", "summarize", 0.9995)
    costs = Costs(STEEP, {"ngram": 0.0})
    ctl = AdaptiveController([NgramDrafter()], costs, memory, "summarize")
    ctl.start([1, 2, 3], SamplingParams())
    _, k = ctl.choose()
    assert k <= 2, k
    # with evidence from this reply the window grows as before
    for _ in range(8):
        ctl.observe(StepStats("ngram", k, k, k, 0.0, STEEP.verify(k + 1)))
        _, k = ctl.choose()
    assert k >= 8, k
