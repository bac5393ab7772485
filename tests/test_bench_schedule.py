"""The bench's run order: plain interleaved before every other mode, and plain alone when
only plain is asked for (it used to run nothing then)."""
from engine.bench import interleaved


def test_plain_runs_before_each_other_mode():
    assert interleaved(["fixed:4", "auto"], ["ngram", "suffix"]) == [
        ("plain", "plain", "none"), ("fixed:4/ngram", "fixed:4", "ngram"),
        ("plain", "plain", "none"), ("fixed:4/suffix", "fixed:4", "suffix"),
        ("plain", "plain", "none"), ("auto", "auto", "both")]


def test_plain_alone_still_runs_plain():
    assert interleaved(["plain"], ["ngram"]) == [("plain", "plain", "none")]
