"""Lossless speculative decoding on tiny f32 models: every drafter gives exactly the plain
output, token for token, in every pass shape the numerics probe can choose, and the edge cases
of the loop behave."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import run_to_end

from engine import numerics
from engine.calibration import probe_numerics
from engine.drafters.base import Draft, Drafter
from engine.drafters.model import ModelDrafter
from engine.drafters.ngram import NgramDrafter
from engine.drafters.suffix import SuffixDrafter
from engine.runtime import Model, RuntimeOptions
from engine.sampling import SamplingParams
from engine.speculative import GenerationParams
from engine.window import FixedWindow

PROMPTS = [
    "The quick brown fox",
    "def merge(a, b): return",
    "for item in items: print(item) for item in items:",
    "Hello world! café 東京 🙂",
]


class RandomDrafter(Drafter):
    """Proposes random tokens: nearly everything is rejected."""

    name = "random"

    def __init__(self, n_vocab: int, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.n_vocab = n_vocab

    def propose(self, context, k):
        return Draft([int(t) for t in self.rng.integers(3, self.n_vocab, size=k)])


@pytest.fixture(scope="module")
def tiny_draft(tiny_dir):
    model = Model(tiny_dir / "draft.gguf", RuntimeOptions(n_ctx=2048, n_batch=64))
    yield model
    model.close()


@pytest.fixture(scope="module")
def target_copy(tiny_dir):
    model = Model(tiny_dir / "target.gguf", RuntimeOptions(n_ctx=2048, n_batch=64))
    yield model
    model.close()


def plain(model, prompt, max_tokens=48, **kwargs):
    return run_to_end(model, model.tokenize(prompt), GenerationParams(max_tokens, **kwargs))


@pytest.fixture(params=["exact", "exact:4", "exact:8"])
def shaped_target(request, tiny_target):
    """The tiny target in the pass shape the probe chooses for each setting ("exact:N": the
    class of N-row passes is the reference; where it lacks the one-token pass, plain decoding
    is padded into it)."""
    tiny_target.shape = numerics.choose(probe_numerics(tiny_target, request.param),
                                        request.param)
    yield tiny_target
    tiny_target.shape = numerics.PassShape()


@pytest.mark.parametrize("k", [1, 3, 6, 12])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_every_drafter_matches_plain_greedy(shaped_target, tiny_draft, target_copy, prompt, k):
    target = shaped_target
    expected = plain(target, prompt)
    drafters = [NgramDrafter(), SuffixDrafter(), ModelDrafter(tiny_draft),
                ModelDrafter(target_copy), RandomDrafter(target.n_vocab)]
    for drafter in drafters:
        got = run_to_end(target, target.tokenize(prompt), GenerationParams(48),
                         FixedWindow(drafter, k))
        assert got.tokens == expected.tokens, (drafter.name, target.shape)
        assert got.text == expected.text


def test_controls_accept_everything_or_nothing(tiny_target, target_copy):
    prompt = tiny_target.tokenize(PROMPTS[0])
    own = run_to_end(tiny_target, prompt, GenerationParams(40),
                     FixedWindow(ModelDrafter(target_copy), 4))
    assert own.stats.drafted > 0 and own.stats.accepted == own.stats.drafted
    assert own.stats.target_passes < own.stats.tokens / 3
    rand = run_to_end(tiny_target, prompt, GenerationParams(40),
                      FixedWindow(RandomDrafter(tiny_target.n_vocab), 4))
    assert rand.stats.drafted > 0 and rand.stats.acceptance < 0.05
    assert own.tokens == rand.tokens


def test_noisy_draft_is_partly_accepted_and_chunks_carry_origin(tiny_target, tiny_draft):
    result = run_to_end(tiny_target, tiny_target.tokenize(PROMPTS[1]), GenerationParams(64),
                        FixedWindow(ModelDrafter(tiny_draft), 4))
    assert 0.1 < result.stats.acceptance < 1.0
    origins = {origin for chunk in result.chunks for _, origin in chunk.pieces}
    assert origins == {"draft-model", "target"}
    assert "".join(text for chunk in result.chunks for text, _ in chunk.pieces) == result.text
    stats = result.stats
    assert sum(stats.drafted_at) == stats.drafted and sum(stats.accepted_at) == stats.accepted
    assert stats.accepted_at[0] >= stats.accepted_at[-1]


def test_draft_longer_than_budget_stops_exactly_at_max_tokens(tiny_target, target_copy):
    expected = plain(tiny_target, PROMPTS[0], max_tokens=5)
    got = run_to_end(tiny_target, tiny_target.tokenize(PROMPTS[0]), GenerationParams(5),
                     FixedWindow(ModelDrafter(target_copy), 16))
    assert got.tokens == expected.tokens and len(got.tokens) == 5
    assert got.reason == "length"


def test_eos_inside_an_accepted_run_ends_the_reply(tiny_target, target_copy):
    reference = plain(tiny_target, PROMPTS[2], max_tokens=30)
    # make the 6th generated token the end-of-generation token by treating it as EOS
    eos_token = reference.tokens[5]
    original = tiny_target.is_eog
    tiny_target.is_eog = lambda token: token == eos_token or original(token)
    try:
        expected = plain(tiny_target, PROMPTS[2], max_tokens=30)
        got = run_to_end(tiny_target, tiny_target.tokenize(PROMPTS[2]), GenerationParams(30),
                         FixedWindow(ModelDrafter(target_copy), 8))
    finally:
        tiny_target.is_eog = original
    assert got.reason == expected.reason == "eos"
    assert got.tokens == expected.tokens == reference.tokens[:reference.tokens.index(eos_token)]


def test_stop_string_straddling_tokens(tiny_target, target_copy):
    reference = plain(tiny_target, PROMPTS[0], max_tokens=40)
    text = reference.text
    assert len(text) > 12
    stop = text[8:12]  # very likely spans a token boundary; the result must cut before it
    got = run_to_end(tiny_target, tiny_target.tokenize(PROMPTS[0]),
                     GenerationParams(40, stop=(stop,)), FixedWindow(ModelDrafter(target_copy), 6))
    assert got.reason == "stop"
    assert got.text == text[:text.index(stop)]


def test_context_full_ends_with_a_clear_message(tiny_dir):
    model = Model(tiny_dir / "small-ctx.gguf", RuntimeOptions(n_ctx=64, n_batch=64))
    try:
        prompt = model.tokenize(PROMPTS[0])
        got = run_to_end(model, prompt, GenerationParams(500), FixedWindow(NgramDrafter(), 4))
        assert got.reason == "context"
        assert "context window" in got.message
        # the cache is full; the last token was chosen from the last position's logits
        assert len(model.kv_tokens) == model.n_ctx
        assert len(prompt) + len(got.tokens) == model.n_ctx + 1
    finally:
        model.close()


def test_cancel_mid_reply(tiny_target, tiny_draft):
    cancel = threading.Event()
    from engine.speculative import Chunk, generate

    events = generate(tiny_target, tiny_target.tokenize(PROMPTS[1]), GenerationParams(200),
                      FixedWindow(ModelDrafter(tiny_draft), 4), cancel=cancel)
    seen = 0
    for event in events:
        if isinstance(event, Chunk):
            seen += 1
            if seen == 2:
                cancel.set()
        else:
            assert event.reason == "cancelled"
            assert len(event.tokens) < 20
            break


def test_more_than_n_batch_tokens(tiny_target, tiny_draft):
    # the tiny target uses n_batch=64: generate well past it, plain and speculative
    expected = plain(tiny_target, PROMPTS[3], max_tokens=150)
    got = run_to_end(tiny_target, tiny_target.tokenize(PROMPTS[3]), GenerationParams(150),
                     FixedWindow(ModelDrafter(tiny_draft), 5))
    assert len(got.tokens) == 150 and got.tokens == expected.tokens


def test_multibyte_characters_split_across_tokens_stream_whole(tiny_target):
    from engine.text_stream import TextStream

    stream = TextStream()
    data = "東京 🙂 café".encode()
    pieces = []
    for i in range(len(data)):  # one byte per "token"
        pieces += stream.push(data[i:i + 1], "target")
    pieces += stream.finish()
    assert "".join(t for t, _ in pieces) == "東京 🙂 café"
    assert all("\ufffd" not in t for t, _ in pieces)


def test_ngram_drafter_finds_the_copy():
    drafter = NgramDrafter()
    context = [1, 2, 3, 4, 5, 6, 7, 9, 9, 3, 4]
    assert drafter.propose(context, 3).tokens == [5, 6, 7]
    assert drafter.propose([1, 2, 3], 3).tokens == []


def test_sampling_reproducible_with_seed(tiny_target, tiny_draft):
    params = GenerationParams(30, SamplingParams(temperature=0.9, top_k=20, seed=3))
    prompt = tiny_target.tokenize(PROMPTS[0])
    first = run_to_end(tiny_target, prompt, params, FixedWindow(ModelDrafter(tiny_draft), 3))
    second = run_to_end(tiny_target, prompt, params, FixedWindow(ModelDrafter(tiny_draft), 3))
    assert first.tokens == second.tokens


def test_an_interrupt_during_a_pass_leaves_the_model_usable(tiny_target, target_copy,
                                                             monkeypatch):
    """An exception raised while llama.cpp evaluates a pass (Ctrl-C, a timeout) must not leave
    the cache holding tokens the model does not know about: the next reply is the plain one."""
    import engine.runtime as runtime

    expected = plain(target_copy, PROMPTS[1], max_tokens=24)
    real_decode = runtime.llama_cpp.llama_decode

    def decode_then_interrupt(ctx, batch):
        real_decode(ctx, batch)  # the pass went into the cache...
        raise KeyboardInterrupt  # ...and the interrupt arrived before it was recorded

    prompt = tiny_target.tokenize(PROMPTS[1])
    monkeypatch.setattr(runtime.llama_cpp, "llama_decode", decode_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_to_end(tiny_target, prompt, GenerationParams(24))
    monkeypatch.setattr(runtime.llama_cpp, "llama_decode", real_decode)
    assert plain(tiny_target, PROMPTS[1], max_tokens=24).tokens == expected.tokens
