"""Universal drafting across vocabularies.

1. TLI sampling on two tiny models with different vocabularies follows the target's exact
   distribution; a drafter whose reported draft distribution is scattered into the wrong
   target ids (a broken vocabulary bridge) is caught by the same test.
2. The vocabulary bridge on the real offline tokenizers (vocabulary only): every tokenizer
   round-trips code, whitespace, emoji, accents, CJK and right-to-left text byte for byte;
   every mapped draft token has exactly the target token's bytes; SLEM carries drafted text
   into target tokens with the same bytes; and the overlap per pair is what the README states.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import offline_model
from test_sampling_lossless import exact_joint, fits, sample_pairs

from engine.compat import analyse, vocab_map
from engine.drafters.universal import UniversalDrafter
from engine.runtime import Model, RuntimeOptions
from engine.window import FixedWindow


@pytest.fixture(scope="module")
def other_vocab_draft(tiny_dir):
    model = Model(tiny_dir / "other-vocab-aligned.gguf", RuntimeOptions(n_ctx=512, n_batch=64))
    yield model
    model.close()


def test_tli_sampling_matches_target_and_broken_bridge_is_caught(tiny_target, other_vocab_draft,
                                                                 monkeypatch):
    assert analyse(tiny_target, other_vocab_draft).kind == "universal"
    # a prompt both vocabularies split into the same pieces, so the draft sees the same text
    prompt = tiny_target.tokenize("for item in items")
    joint = exact_joint(tiny_target, prompt)
    accepted: list[int] = []

    def policy():
        drafter = UniversalDrafter(other_vocab_draft, tiny_target)
        original = drafter.accepted
        drafter.accepted = lambda n, k: (accepted.append(n), original(n, k))[1]
        return FixedWindow(drafter, 3)

    ok, stat, critical = fits(sample_pairs(tiny_target, prompt, policy), joint)
    assert ok, (stat, critical)
    assert sum(accepted) > len(accepted) // 4, "cross-vocabulary drafts were rarely accepted"

    # a bridge that restricts the draft to the shared tokens but forgets to renormalise
    # reports a q smaller than the one it sampled from: it over-accepts, and is caught
    def not_renormalised(self, q):
        out = np.zeros(self.target.n_vocab, dtype=np.float64)
        keep = np.flatnonzero(q)
        np.add.at(out, self.to_target[keep], q[keep] * 0.25)
        return out

    monkeypatch.setattr(UniversalDrafter, "_q_in_target", not_renormalised)
    ok, stat, critical = fits(sample_pairs(tiny_target, prompt, policy), joint)
    assert not ok, f"a bridge that misreports q passed ({stat} < {critical})"


def test_tli_with_a_broken_mapping_is_caught(tiny_target, other_vocab_draft):
    """Draft tokens sent to the wrong target ids (off by one) while their probabilities are
    reported at the right ones: the distribution test fails."""
    prompt = tiny_target.tokenize("for item in items")
    joint = exact_joint(tiny_target, prompt)

    def broken_policy():
        drafter = UniversalDrafter(other_vocab_draft, tiny_target)
        correct = drafter.to_target.copy()
        drafter.to_target = np.where(correct >= 0, (correct + 1) % tiny_target.n_vocab, -1)
        report_q = UniversalDrafter._q_in_target

        def q_with_correct_map(q):
            drafter.to_target, broken = correct, drafter.to_target
            try:
                return report_q(drafter, q)
            finally:
                drafter.to_target = broken

        drafter._q_in_target = q_with_correct_map
        return FixedWindow(drafter, 3)

    ok, stat, critical = fits(sample_pairs(tiny_target, prompt, broken_policy), joint)
    assert not ok, f"a broken vocabulary mapping passed ({stat} < {critical})"


TEXTS = {
    "code": "def merge(a: dict, b: dict) -> dict:\n\tresult = {**a}\n    return result  # done\n",
    "whitespace": "  leading, double  space,\n\n\nnewlines\t\ttabs   \r\n trailing   ",
    "emoji": "Ship it 🚀🔥 — thumbs 👍🏽, family 👨‍👩‍👧, flag 🇫🇷",
    "accents": "Crème brûlée, naïve café, São Paulo, Zürich, Ångström",
    "cjk": "東京は日本の首都です。我喜欢编程。한국어도 됩니다。",
    "rtl": "مرحبا بالعالم — שלום עולם",
}
PAIRS = {  # draft -> (target, smallest acceptable overlap)
    "qwen2.5-coder-0.5b-instruct-q4_k_m": 0.99,
    "smollm2-135m-instruct-q4_1": 0.5,
    "gemma-3-270m-q4_k_m": 0.2,
}
TARGET = "qwen2.5-coder-1.5b-instruct-q4_k_m"


@pytest.fixture(scope="module")
def vocabularies():
    loaded = {name: Model(offline_model(name), vocab_only=True) for name in [TARGET, *PAIRS]}
    yield loaded
    for model in loaded.values():
        model.close()


def token_bytes(model: Model, tokens) -> bytes:
    return b"".join(model.token_bytes(t) for t in tokens)


@pytest.mark.slow
def test_every_tokenizer_round_trips_bytes(vocabularies):
    for name, model in vocabularies.items():
        for kind, text in TEXTS.items():
            tokens = model.tokenize(text, add_special=False, parse_special=False)
            assert token_bytes(model, tokens) == text.encode(), (name, kind)


@pytest.mark.slow
def test_bridge_maps_identical_bytes_and_overlap_per_pair(vocabularies):
    target = vocabularies[TARGET]
    for name, minimum in PAIRS.items():
        draft = vocabularies[name]
        mapping = vocab_map(target, draft)
        mapped = np.flatnonzero(mapping >= 0)
        for d in mapped[:: max(len(mapped) // 2000, 1)]:
            assert target.token_bytes(int(mapping[d])) == draft.token_bytes(int(d)), (name, d)
        compat = analyse(target, draft)
        assert compat.overlap >= minimum, (name, compat.overlap)
        assert (compat.kind == "native") == (name.startswith("qwen")), (name, compat.reason)
        for kind, text in TEXTS.items():  # what SLEM does with drafted text
            drafted = draft.tokenize(text, add_special=False, parse_special=False)
            as_text = token_bytes(draft, drafted).decode("utf-8")
            carried = target.tokenize(as_text, add_special=False, parse_special=False)
            assert token_bytes(target, carried) == text.encode(), (name, kind)
