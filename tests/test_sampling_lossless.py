"""Speculative sampling follows the target's own distribution: the joint distribution of the
first two generated tokens matches the exact one computed from the target's logits, and the
same test rejects a verifier that is deliberately broken (always accept)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from helpers import run_to_end
from stats_tools import chi_square, chi_square_critical

import engine.speculative
from engine.drafters.model import ModelDrafter
from engine.drafters.ngram import NgramDrafter
from engine.runtime import Model, RuntimeOptions
from engine.sampling import SamplingParams, distribution
from engine.speculative import GenerationParams
from engine.window import FixedWindow

RUNS = 1500
SAMPLING = SamplingParams(temperature=1.0, top_k=5, seed=0)


@pytest.fixture(scope="module")
def far_draft(tiny_dir):
    path = tiny_dir / "far-draft.gguf"
    from tiny_models import write_tiny_model

    write_tiny_model(path, "a", seed=9, noise_from=0, noise=0.6)
    model = Model(path, RuntimeOptions(n_ctx=512, n_batch=64))
    yield model
    model.close()


def exact_joint(model: Model, prompt: list[int]) -> dict[tuple[int, int], float]:
    model.reset()
    first = distribution(model.decode(prompt, "last")[0], SAMPLING)
    joint = {}
    for t1 in np.flatnonzero(first):
        model.truncate(len(prompt))
        second = distribution(model.decode([int(t1)], "last")[0], SAMPLING)
        for t2 in np.flatnonzero(second):
            joint[(int(t1), int(t2))] = float(first[t1] * second[t2])
    model.reset()
    return joint


def sample_pairs(model: Model, prompt: list[int], policy_factory) -> Counter:
    counts: Counter = Counter()
    for seed in range(RUNS):
        params = GenerationParams(3, SamplingParams(SAMPLING.temperature, SAMPLING.top_k,
                                                    seed=seed))
        result = run_to_end(model, prompt, params, policy_factory())
        counts[tuple(result.tokens[:2])] += 1
    return counts


def fits(counts: Counter, joint: dict) -> tuple[bool, float, float]:
    stat, df = chi_square(counts, joint, RUNS)
    critical = chi_square_critical(df)
    return stat < critical, stat, critical


def test_plain_sampling_matches_exact_distribution(tiny_target):
    prompt = tiny_target.tokenize("The quick brown fox")
    joint = exact_joint(tiny_target, prompt)
    ok, stat, critical = fits(sample_pairs(tiny_target, prompt, lambda: None), joint)
    assert ok, (stat, critical)


def test_speculative_sampling_matches_and_broken_verifier_is_caught(tiny_target, far_draft,
                                                                    monkeypatch):
    prompt = tiny_target.tokenize("The quick brown fox")
    joint = exact_joint(tiny_target, prompt)
    counts = sample_pairs(tiny_target, prompt,
                          lambda: FixedWindow(ModelDrafter(far_draft), 3))
    ok, stat, critical = fits(counts, joint)
    assert ok, (stat, critical)

    def always_accept(p_rows, draft, q_rows, rng):
        from engine.sampling import draw

        return len(draft), draw(p_rows[len(draft)], rng)

    monkeypatch.setattr(engine.speculative, "verify_sampling", always_accept)
    broken = sample_pairs(tiny_target, prompt, lambda: FixedWindow(ModelDrafter(far_draft), 3))
    ok, stat, critical = fits(broken, joint)
    assert not ok, f"a verifier that accepts everything passed the test ({stat} < {critical})"


def test_deterministic_drafter_sampling_matches(tiny_target):
    # n-gram drafts have a one-hot q: a repetitive prompt makes it propose often
    prompt = tiny_target.tokenize("for item in items: print(item) for item in items:")
    joint = exact_joint(tiny_target, prompt)
    counts = sample_pairs(tiny_target, prompt, lambda: FixedWindow(NgramDrafter(min_ngram=1), 3))
    ok, stat, critical = fits(counts, joint)
    assert ok, (stat, critical)
