"""The bench's loop-vs-llama.cpp table: steps grouped by pass size, medians taken per size,
and the like-for-like ratio computed from the time inside llama.cpp in those same steps."""
import pytest

from engine.bench import at_median_costs
from engine.parity import pass_parity


def test_steps_grouped_by_size_with_like_for_like_ratios():
    steps = [[1, 0.011, 0.010], [1, 0.012, 0.010], [1, 0.010, 0.010], [1, 0.5, 0.5],
             [3, 0.033, 0.030], [3, 0.033, 0.030], [3, 0.036, 0.030],
             [5, 0.05, 0.05], [5, 0.05, 0.05]]  # size 5: too few steps for a median
    rows = pass_parity(steps, {1: 0.020, 3: 0.030, 5: 0.05})
    assert [row["n"] for row in rows] == [1, 3]
    one, three = rows
    assert one["steps"] == 4
    assert one["loop_seconds"] == pytest.approx(0.0115)  # median, robust to the 0.5 s hiccup
    assert one["loop_over_inside"] == pytest.approx(1.15)
    assert one["loop_over_raw"] == pytest.approx(0.575)
    assert three["loop_over_inside"] == pytest.approx(1.1)


def test_sizes_the_calibration_did_not_time_are_left_out():
    assert pass_parity([[20, 1.0, 1.0]] * 5, {1: 0.01}) == []


def _run(inside_per_step: float, outside: float, sizes: list[int]) -> dict:
    steps = [[n, inside_per_step * n, inside_per_step * n] for n in sizes]
    inside = sum(s[2] for s in steps)
    return {"tokens": len(sizes), "step_seconds": steps, "target_seconds": inside,
            "seconds": inside + outside}


def test_median_costs_remove_llama_cpp_noise_but_keep_the_loops_own_time():
    fast, slow = _run(0.010, 0.0, [1] * 10), _run(0.014, 0.0, [1] * 10)
    lean, heavy = _run(0.012, 0.0, [1] * 10), _run(0.012, 0.005, [1] * 10)
    rates = at_median_costs([fast, slow, lean, heavy])
    assert rates[0] == pytest.approx(rates[1]) == pytest.approx(rates[2])  # same steps
    assert rates[3] == pytest.approx(10 / (10 * 0.012 + 0.005))  # its overhead is kept
    assert fast["tokens"] / fast["seconds"] > rates[0] > slow["tokens"] / slow["seconds"]
