"""Numerics deep in the context, on a tiny model with quantized weights (whose passes of any
size compute bit-identical logits near the start, as a real model's 1-3 row passes do):
once 512 cache cells are in view, llama.cpp's CPU flash attention splits a one-token query
across threads and rounds differently from the batched kernel. The probe looks deep enough
to see it, and the pass shape then verifies in batches only as deep as the probe saw them
hold; with K and V cached in different types the kernels stay one and the limit goes away.
Also how ``numerics.choose`` weighs padding plain decoding against its cost."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import run_to_end
from tiny_models import write_tiny_model

from engine import numerics
from engine.calibration import PROBE_SPAN, _probe_context, _rows, probe_numerics
from engine.drafters.ngram import NgramDrafter
from engine.numerics import PassShape, Probe
from engine.runtime import Model, RuntimeOptions
from engine.speculative import GenerationParams
from engine.window import FixedWindow

DEEP, SHALLOW, SPAN = 600, 24, 12
MIXED = ("bf16", "f16")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("q8") / "q8.gguf", "a", seed=0,
                            weights="q8_0")


@pytest.fixture(scope="module", params=[None, MIXED], ids=["f16-cache", "mixed-cache"])
def model(request, quantized):
    # two threads: the split runs one chunk per thread (a single thread would not split)
    model = Model(quantized, RuntimeOptions(n_ctx=2048, n_batch=64, n_threads=2,
                                            cache_types=request.param))
    yield model
    model.close()


def one_and_batched(model: Model, depth: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    context = _probe_context(model, depth + SPAN)
    prefix, span = context[:depth], context[depth:]
    one, _ = _rows(model, prefix, span, 1, 1)
    batched, _ = _rows(model, prefix, span, width, width)
    model.reset()
    return one, batched


@pytest.mark.parametrize("width", [2, 3])
def test_one_token_and_batched_passes_agree_near_the_start(model, width):
    one, batched = one_and_batched(model, SHALLOW, width)
    assert np.array_equal(one, batched)


@pytest.mark.parametrize("width", [2, 3])
def test_deep_in_the_context_they_agree_only_with_mixed_cache_types(model, width):
    one, batched = one_and_batched(model, DEEP, width)
    if model.cache_types == MIXED:
        assert np.array_equal(one, batched), float(np.abs(one - batched).max())
    else:  # the control: the split kernel is live in this build and rounds differently
        assert not np.array_equal(one, batched)


def test_the_probe_sees_how_deep_batched_passes_stay_exact(model):
    probe = probe_numerics(model)
    near_start = next(group for group in probe.classes_at[0] if 1 in group)
    assert probe.depths[-1] >= DEEP and len(near_start) > 1, probe
    shape = numerics.choose(probe)
    if model.cache_types == MIXED:
        assert probe.verified_until(near_start) is None, probe
        assert shape == PassShape("exact", 1, near_start)
    else:
        assert 200 < probe.verified_until(near_start) < DEEP, probe
        # verification limited to that depth, or (where padding is cheap, as it can be for a
        # model this small) plain decoding padded into a class that holds at every depth
        assert (shape.exact_until == probe.verified_until(near_start)
                or (shape.plain_rows > 1 and shape.exact_until is None)), (probe, shape)


def test_a_limited_shape_verifies_one_token_per_pass_past_its_limit():
    shape = PassShape("exact", 1, (1, 2, 3), exact_until=240)
    assert shape.split(3, 237) == [(3, 3)]
    assert shape.split(3, 238) == [(1, 1)] * 3
    assert shape.draft_room(230) == 9 and shape.draft_room(245) == 0
    assert PassShape("exact", 1, (1, 2, 3)).draft_room(10_000) is None


def test_greedy_text_deep_in_the_context_matches_plain_decoding(model):
    """A reply that runs past the probe's depth: speculation there would have changed it (the
    control above); with the shape's limit every token matches plain decoding."""
    model.shape = numerics.choose(probe_numerics(model))
    try:
        prompt = _probe_context(model, 200)
        params = GenerationParams(400)
        plain = run_to_end(model, prompt, params)
        fast = run_to_end(model, prompt, params, FixedWindow(NgramDrafter(), 3))
        assert fast.tokens == plain.tokens
        assert fast.stats.drafted > 0
        if model.shape.exact_until is not None:
            assert "plain decoding from token" in fast.stats.controller_note
    finally:
        model.shape = PassShape()


def test_the_probe_fits_a_small_context(tiny_dir):
    model = Model(tiny_dir / "small-ctx.gguf", RuntimeOptions(n_ctx=4096))  # n_batch 512
    try:
        probe = probe_numerics(model)
        assert max(probe.depths) + PROBE_SPAN + numerics.PROBE_SIZES[-1] <= model.n_ctx
    finally:
        model.close()


def probe(seconds_2: float) -> Probe:
    """A backend where only padded 2- and 3-row passes agree with each other (as the split
    kernel leaves a CPU with f16 values): the one-token pass has no partner."""
    classes = ((1,), (2, 3), (4, 5, 6, 8, 12, 16))
    return Probe(classes, {2: True, 4: True},
                 {1: 1.0, 2: seconds_2, 3: seconds_2 * 1.4, 4: 2.2}, 0.5, (24, 600),
                 (classes, classes), 16)


def test_batched_verification_stops_where_the_probe_saw_it_stop():
    near_start = ((1, 2, 3), (4, 5, 6, 8, 12, 16))
    deep = ((1,), (2, 3), (4, 5, 6, 8, 12, 16))
    found = Probe(((1,), (2, 3), (4, 5, 6, 8, 12, 16)), {}, {1: 1.0, 2: 1.7}, 0.5,
                  (24, 224, 600), (near_start, near_start, deep), 16)
    assert numerics.choose(found) == PassShape("exact", 1, (1, 2, 3), exact_until=240)


def test_padding_is_chosen_where_it_is_cheap():
    assert numerics.choose(probe(1.11)) == PassShape("exact", 2, (2, 3))


def test_padding_that_would_slow_every_plain_token_is_not_chosen():
    shape = numerics.choose(probe(1.7))
    assert shape.plain_rows == 1 and shape.pieces == (1,)


def test_an_explicit_reference_class_is_padded_into_whatever_it_costs():
    assert numerics.choose(probe(1.7), "exact:2") == PassShape("exact", 2, (2, 3))


def test_probes_round_trip_with_their_depths():
    original = probe(1.2)
    assert Probe.from_dict(original.to_dict()) == original


def test_the_cache_types_setting_is_read_and_checked(monkeypatch):
    from engine.errors import TandemError
    from engine.runtime import requested_cache_types

    monkeypatch.setenv("TANDEM_KV_CACHE", "f16, Q8_0")
    assert requested_cache_types() == ("f16", "q8_0")
    monkeypatch.setenv("TANDEM_KV_CACHE", "bf16")
    assert requested_cache_types() == ("bf16", "bf16")
    monkeypatch.setenv("TANDEM_KV_CACHE", "f16,q4_9")
    with pytest.raises(TandemError, match="TANDEM_KV_CACHE"):
        requested_cache_types()
    monkeypatch.delenv("TANDEM_KV_CACHE")
    assert requested_cache_types() is None
