"""Speculative sampling at the edges: where the reply ends, and native pairs whose vocabulary
sizes differ by a few tokens.

The tiny models here give the end token real probability (its output row is a frequent
token's), and the draft over-proposes it (q(end) 0.44 against p(end) 0.25 after the prompt):
the full distribution of short replies — their length and every token, the end included —
must be the target's own, while a drafter that drops the end tokens it samples (what Tandem did
before) is caught by the same test."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from helpers import run_to_end
from stats_tools import chi_square, chi_square_critical
from tiny_models import write_tiny_model

from engine.drafters.model import ModelDrafter
from engine.runtime import Model, RuntimeOptions
from engine.sampling import SamplingParams, distribution
from engine.session import ChatRequest, LoadRequest, Session
from engine.speculative import GenerationParams
from engine.window import FixedWindow

RUNS = 1500
SAMPLING = SamplingParams(temperature=1.0, top_k=5)
END_LIKE = "Î"  # the second most likely token after the prompt: the end token ties with it
OPTIONS = RuntimeOptions(n_ctx=256, n_batch=64)


@pytest.fixture(scope="module")
def ending_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ending")
    target = Model(write_tiny_model(folder / "t.gguf", "a", seed=0, eos_like=END_LIKE), OPTIONS)
    draft = Model(write_tiny_model(folder / "d.gguf", "a", seed=9, noise_from=0, noise=0.3,
                                   eos_like=END_LIKE), OPTIONS)
    yield target, draft
    target.close()
    draft.close()


def exact_outcomes(model: Model, prompt: list[int], max_tokens: int) -> dict[tuple, float]:
    """Probability of every reply of at most ``max_tokens`` tokens: the tokens, then "end" if
    the target ended it."""
    outcomes: dict[tuple, float] = {}

    def walk(prefix: list[int], probability: float) -> None:
        model.reset()
        p = distribution(model.decode(prompt + prefix, "last")[0], SAMPLING)
        for token in map(int, np.flatnonzero(p)):
            share = probability * float(p[token])
            if model.is_eog(token):
                outcomes[(*prefix, "end")] = outcomes.get((*prefix, "end"), 0.0) + share
            elif len(prefix) + 1 == max_tokens:
                outcomes[(*prefix, token)] = share
            else:
                walk([*prefix, token], share)

    walk([], 1.0)
    model.reset()
    return outcomes


def sampled_outcomes(model: Model, prompt: list[int], max_tokens: int, policy) -> Counter:
    counts: Counter = Counter()
    for seed in range(RUNS):
        params = GenerationParams(max_tokens, SamplingParams(1.0, 5, seed=seed))
        result = run_to_end(model, prompt, params, policy())
        counts[(*result.tokens, "end") if result.reason == "eos" else tuple(result.tokens)] += 1
    return counts


def fits(counts: Counter, exact: dict) -> tuple[bool, float, float]:
    stat, df = chi_square(counts, exact, RUNS)
    return stat < chi_square_critical(df), stat, chi_square_critical(df)


class DropsEndTokens(ModelDrafter):
    """Tandem's drafter before the fix: an end token it sampled was dropped, not proposed."""

    def draft_tokens(self, logits, k, logit_mask=None):
        tokens, q_rows = super().draft_tokens(logits, k, logit_mask)
        if tokens and self.model.is_eog(tokens[-1]):
            tokens.pop()
            if q_rows:
                q_rows.pop()
        return tokens, q_rows


def test_reply_lengths_and_last_tokens_follow_the_target_and_dropping_ends_is_caught(
        ending_pair):
    target, draft = ending_pair
    prompt = target.tokenize("The quick brown fox")
    exact = exact_outcomes(target, prompt, 3)
    ended = sum(p for outcome, p in exact.items() if outcome[-1] == "end")
    assert 0.2 < ended < 0.9  # the end token matters
    plain = sampled_outcomes(target, prompt, 3, lambda: None)
    assert fits(plain, exact)[0]
    spec = sampled_outcomes(target, prompt, 3, lambda: FixedWindow(ModelDrafter(draft), 3))
    ok, stat, critical = fits(spec, exact)
    assert ok, (stat, critical)
    old = sampled_outcomes(target, prompt, 3, lambda: FixedWindow(DropsEndTokens(draft), 3))
    ok, stat, critical = fits(old, exact)
    assert not ok, f"dropping sampled end tokens passed the test ({stat} < {critical})"
    lengths = Counter(len([t for t in o if t != "end"]) for o in old.elements())
    assert lengths[0] < sum(p for o, p in exact.items() if o == ("end",)) * RUNS  # under-counted


@pytest.fixture(scope="module")
def size_pairs(tmp_path_factory):
    """Same vocabulary, sizes differing by 3 (native by llama.cpp's rule), both ways round;
    the draft with the bigger vocabulary strongly prefers the tokens the target lacks."""
    folder = tmp_path_factory.mktemp("sizes")
    return {
        "target-bigger": (write_tiny_model(folder / "tb.gguf", "a", seed=0, extra_tokens=3),
                          write_tiny_model(folder / "ds.gguf", "a", seed=9, noise_from=0,
                                           noise=0.3)),
        "draft-bigger": (write_tiny_model(folder / "ts.gguf", "a", seed=0),
                         write_tiny_model(folder / "db.gguf", "a", seed=9, noise_from=0,
                                          noise=0.3, extra_tokens=3, extra_scale=4.0)),
    }


@pytest.mark.parametrize("case", ["target-bigger", "draft-bigger"])
def test_native_pairs_with_different_vocabulary_sizes(size_pairs, case):
    target_path, draft_path = size_pairs[case]
    session = Session()
    try:
        info = session.load(LoadRequest(str(target_path), str(draft_path), n_ctx=256))
        assert info["compatibility"]["kind"] == "native"
        messages = [{"role": "user", "content": "for item in items: print(item)"}]

        def reply(mode: str, **sampling) -> dict:
            request = ChatRequest(messages, max_tokens=24, mode=mode, window=3,
                                  drafter="model", **sampling)
            return [e for e in session.chat(request) if e["type"] in ("done", "error")][-1]

        plain = reply("off")
        greedy = reply("fixed")
        assert greedy["type"] == "done" and greedy["text"] == plain["text"]
        assert greedy["stats"]["drafted"] > 0
        for seed in range(30):  # rejections happen: the first one used to raise
            sampled = reply("fixed", temperature=1.0, top_k=5, seed=seed)
            assert sampled["type"] == "done", sampled
        target = session.target
        prompt = target.tokenize("The quick brown fox")
        exact = exact_outcomes(target, prompt, 2)
        drafter = session.drafters()["model"]
        counts = sampled_outcomes(target, prompt, 2, lambda: FixedWindow(drafter, 3))
        ok, stat, critical = fits(counts, exact)
        assert ok, (stat, critical)
    finally:
        session.close()
