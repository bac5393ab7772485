"""The typed door and the OpenAI format, without models: errors cross the door as data and come
back as the same class with the same attributes; requests are checked field by field; the
OpenAI parser answers every malformed body with an OpenAI-shaped error naming the field; the
engine's line is first come, first served and bounded; the API key file is private and
replaceable."""

from __future__ import annotations

import json
import os
import pickle
import stat
import threading
import time

import pytest

from app.api import api_error
from app.api_format import ApiError, finish_reason, parse_chat, timings
from app.api_keys import ApiKey
from engine import protocol as p
from engine.errors import ContextTooLong, DoesNotFit, QueueFull, TandemError
from engine.facade import EngineClient, _Line
from engine.stats import MessageStats


def body(**fields) -> bytes:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({**base, **fields}).encode()


def test_failures_rebuild_the_error_class_and_its_numbers():
    for error in (ContextTooLong(5000, 4096), DoesNotFit(9 * 2**30, 2**30, "x.gguf"),
                  QueueFull(3, 12)):
        failure = pickle.loads(pickle.dumps(p.Failure.of(error)))  # as the pipe carries it
        rebuilt = failure.error()
        assert type(rebuilt) is type(error) and str(rebuilt) == str(error)
        assert vars(rebuilt) == vars(error)
    assert "5000" in str(ContextTooLong(5000, 4096)) and "4096" in str(ContextTooLong(5000, 4096))
    bug = p.Failure.of(KeyError("x"))
    assert bug.kind == "InternalError" and type(bug.error()) is TandemError


def test_chat_requests_are_checked_field_by_field():
    hi = (p.Message("user", "hi"),)
    p.ChatRequest(hi)  # the defaults are valid
    bad = [dict(messages=()), dict(max_tokens=0), dict(max_tokens=True), dict(temperature=-1),
           dict(temperature=float("nan")), dict(top_p=0), dict(mode="sometimes"),
           dict(window=0), dict(window=17), dict(drafter="oracle"),
           dict(stop=("a", "b", "c", "d", "e")), dict(stop=("",))]
    for fields in bad:
        with pytest.raises(TandemError):
            p.ChatRequest(**{"messages": hi, **fields})
    with pytest.raises(TandemError, match="role"):
        p.Message("tool", "x")


@pytest.mark.parametrize("raw, param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(), "model"),
    (json.dumps({"model": "m"}).encode(), "messages"),
    (body(messages="hi"), "messages"),
    (body(messages=[]), "messages"),
    (body(messages=[{"content": "hi"}]), "messages[0].role"),
    (body(messages=[{"role": "wizard", "content": "hi"}]), "messages[0].role"),
    (body(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (body(messages=[{"role": "user", "content": [{"type": "image_url"}]}]),
     "messages[0].content"),
    (body(max_tokens="ten"), "max_tokens"),
    (body(max_tokens=0), "max_tokens"),
    (body(max_completion_tokens=-5), "max_completion_tokens"),
    (body(temperature="hot"), "temperature"),
    (body(temperature=3), "temperature"),
    (body(top_p=0), "top_p"),
    (body(seed="abc"), "seed"),
    (body(stop=5), "stop"),
    (body(stop=["a", "b", "c", "d", "e"]), "stop"),
    (body(stream="yes"), "stream"),
    (body(stream=True, stream_options=[1]), "stream_options"),
    (body(n=2), "n"),
    (body(speculation="always"), "speculation"),
    (body(speculation={"fixed": 99}), "speculation"),
])
def test_malformed_requests_get_openai_shaped_errors(raw, param):
    with pytest.raises(ApiError) as refused:
        parse_chat(raw)
    error = refused.value
    assert error.status == 400
    shaped = error.body()["error"]
    assert set(shaped) == {"message", "type", "param", "code"} and shaped["message"]
    assert shaped["type"] == "invalid_request_error" and shaped["param"] == param


def test_a_full_request_maps_onto_the_engine():
    parsed = parse_chat(body(
        messages=[{"role": "developer", "content": "be brief"},
                  {"role": "user", "content": [{"type": "text", "text": "a"},
                                               {"type": "text", "text": "b"}]},
                  {"role": "assistant", "content": None}],
        max_tokens=7, max_completion_tokens=9, temperature=0.5, top_p=0.9, seed=3,
        stop="END", stream=True, stream_options={"include_usage": True},
        speculation={"fixed": 4}, presence_penalty=0.1, user="someone"))
    request = parsed.request
    assert [m.role for m in request.messages] == ["system", "user", "assistant"]
    assert request.messages[1].content == "ab" and request.messages[2].content == ""
    assert request.max_tokens == 9  # max_completion_tokens wins, as in OpenAI's API
    assert (request.temperature, request.top_p, request.seed) == (0.5, 0.9, 3)
    assert request.stop == ("END",) and (request.mode, request.window) == ("fixed", 4)
    assert parsed.stream and parsed.include_usage
    assert parse_chat(body(speculation="off")).request.mode == "off"
    default = parse_chat(body()).request
    assert default.temperature == 1.0 and default.mode == "auto"  # OpenAI's defaults


def test_seeded_sampling_is_decoded_plainly_unless_speculation_is_asked_for():
    seeded = parse_chat(body(seed=7, temperature=0.8))
    assert seeded.request.mode == "off" and "same seed" in seeded.note
    assert "same seed" in timings(None, None, seeded.request, seeded.note)["speculation_note"]
    assert parse_chat(body(seed=7)).request.mode == "off"  # temperature 1 by default
    assert parse_chat(body(seed=7, temperature=0)).request.mode == "auto"  # greedy: no need
    asked = parse_chat(body(seed=7, temperature=0.8, speculation="auto"))
    assert asked.request.mode == "auto" and not asked.note


def test_timings_are_shaped_like_llama_servers():
    stats = MessageStats(tokens=40, seconds=2.0, prompt_tokens=10, prompt_seconds=0.5,
                         drafted=20, accepted=15, drafter="ngram", window=2,
                         plain_tok_per_s=16.0, controller_note="ngram, window 2")
    request = p.ChatRequest((p.Message("user", "hi"),))
    out = timings(stats, p.Started(10, 4096, 0.25), request)
    assert (out["predicted_n"], out["predicted_ms"], out["predicted_per_second"]) == (
        40, 2000.0, 20.0)
    assert (out["prompt_n"], out["prompt_ms"], out["draft_n"], out["draft_n_accepted"]) == (
        10, 500.0, 20, 15)
    assert out["speedup_estimate"] == 20.0 / 16.0 and out["queue_ms"] == 250.0
    assert out["drafter"] == "ngram" and out["speculation_note"] == "ngram, window 2"
    off = timings(MessageStats(), None, p.ChatRequest(request.messages, mode="off"))
    assert "plain decoding" in off["speculation_note"] and off["speedup_estimate"] is None
    assert [finish_reason(r) for r in ("eos", "stop", "length", "context")] == [
        "stop", "stop", "length", "length"]


def test_engine_errors_map_to_http_statuses():
    assert api_error(ContextTooLong(5000, 4096)).status == 400
    assert api_error(ContextTooLong(5000, 4096)).code == "context_length_exceeded"
    full = api_error(QueueFull(16, 30))
    assert full.status == 429 and full.headers["Retry-After"] == "30"
    assert api_error(TandemError("odd")).status == 500


def test_the_line_is_first_come_first_served_and_bounded():
    line = _Line()
    first = line.join()
    order: list[int] = []

    def wait(ticket, index):
        line.wait(ticket)
        order.append(index)
        line.leave(ticket)

    tickets = [line.join(limit=3) for _ in range(3)]
    assert line.join(limit=3) is None  # one served + three waiting: full
    threads = [threading.Thread(target=wait, args=(t, i)) for i, t in enumerate(tickets)]
    for thread in reversed(threads):  # started in reverse: the line decides, not the start
        thread.start()
        time.sleep(0.05)
    cancelled = threading.Event()
    late = line.join()
    cancelled.set()
    assert line.wait(late, cancelled) is False  # gave up its place while waiting
    line.leave(first)
    for thread in threads:
        thread.join(10)
    assert order == [0, 1, 2] and len(line) == 0


def test_a_full_line_refuses_with_retry_after():
    client = EngineClient(max_waiting=0)
    blocker = client._line.join()
    with pytest.raises(QueueFull) as refused:
        client.chat(p.ChatRequest((p.Message("user", "hi"),)), bounded=True)
    assert refused.value.retry_after >= 1
    unbounded = client.chat(p.ChatRequest((p.Message("user", "hi"),)))  # the page waits
    unbounded.close()
    client._line.leave(blocker)
    assert len(client._line) == 0


def test_the_api_key_file_is_private_and_replaceable(tmp_path):
    key = ApiKey(tmp_path / "api-key.txt")
    first = key.value()
    assert first.startswith("tdm-") and len(first) > 40
    if os.name == "posix":
        assert stat.S_IMODE((tmp_path / "api-key.txt").stat().st_mode) == 0o600
    assert ApiKey(tmp_path / "api-key.txt").value() == first  # kept across starts
    assert key.matches(first) and not key.matches(first[:-1]) and not key.matches("")
    second = key.replace()
    assert second != first and key.matches(second) and not key.matches(first)
    other = ApiKey(tmp_path / "api-key.txt")  # another process replaces it
    third = other.replace()
    time.sleep(0.01)
    assert key.matches(third) and not key.matches(second)
