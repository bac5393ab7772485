"""What the statistics say is what was measured: decoding rate and time to first token apart,
no speedup figure when nothing was drafted, the live speedup worded as an estimate, and the
per-reply plot showing the rate at each point rather than the running average."""

from __future__ import annotations

from app import render
from app.main import Controller
from engine.stats import MessageStats, StepStats


def reply(drafted: bool) -> MessageStats:
    stats = MessageStats(prompt_seconds=0.8, plain_tok_per_s=30.0)
    for _ in range(20):
        stats.add(StepStats("ngram" if drafted else "none", 2 if drafted else 0,
                            2 if drafted else 0, 1 if drafted else 0, 0.001, 0.03))
    stats.tokens, stats.seconds = 40 if drafted else 20, 0.62
    return stats


def test_plain_reply_shows_no_speedup_and_separates_first_token_from_decoding():
    line = render.stats_line(reply(drafted=False).to_dict())
    assert "vs plain" not in line
    assert "tok/s decoding" in line and "first token after 0.83 s" in line
    cells = render.indicators(reply(drafted=False).to_dict())
    assert "≈" not in cells and "first token" in cells


def test_drafted_reply_speedup_is_worded_as_an_estimate():
    stats = reply(drafted=True)
    assert abs(stats.speedup - (40 / 0.62) / 30.0) < 1e-9
    assert "(estimate)" in stats.summary_line() and "≈" in render.indicators(stats.to_dict())


def test_fast_numerics_say_how_many_tokens_were_near_ties():
    stats = reply(drafted=True)
    stats.numerics, stats.near_ties = "fast", 3
    assert "3 near-tie tokens may differ" in stats.summary_line()
    assert "near ties" in render.indicators(stats.to_dict())


def test_plot_shows_the_rate_at_each_point_not_the_running_average():
    # the first chunk arrives after a slow first step; then 20 tok/s steadily
    points = [(1, 0.5, 0)] + [(1 + 4 * i, 0.5 + 0.2 * i, 2) for i in range(1, 16)]
    frame = Controller.plot(points)
    rates = frame[frame.series == "tok/s"]["value"].tolist()
    assert all(abs(r - 20.0) < 1e-6 for r in rates[3:]), rates
    cumulative = [t / s for t, s, _ in points]
    assert cumulative[-1] < 19.0  # what the old plot showed, still ramping
