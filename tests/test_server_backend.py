"""The chat UI's Server backend against a real third-party server, llama-cpp-python's own
``python -m llama_cpp.server`` with a tiny model, started here on loopback: the reply streams,
Stop ends it, the conversation is saved as usual, and the indicators say plainly that this
server reports no speed statistics. Servers that are down, silent or answer garbage give a
clear message in the chat and lose nothing. (The same backend against a Tandem server, whose
llama-server-shaped timings are shown, is in tests/test_api.py.)"""

from __future__ import annotations

import threading
import time

import pytest
from conftest import offline_model
from helpers import message_text
from openai_servers import llama_cpp_server, misbehaving_server

from app.main import Controller
from app.store import Store
from engine.facade import EngineClient
from engine.remote import ServerSettings

SETTINGS = ("", 0.0, 1.0, 32, "auto", 3, "both", False)  # system … show_drafts


@pytest.fixture()
def controller(tmp_path):
    engine = EngineClient()  # never started: the chat talks to the server
    ctl = Controller(engine, Store(tmp_path / "conversations.sqlite3"), None, None)
    yield ctl
    engine.close()


@pytest.fixture(scope="module")
def server(tiny_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("llama-cpp-server") / "server.log"
    with llama_cpp_server(tiny_dir / "target.gguf", log) as (url, proc):
        yield url, proc


def send(ctl: Controller, text: str, conv=None, max_tokens: int = 32):
    settings = list(SETTINGS)
    settings[3] = max_tokens
    return list(ctl.send(text, conv, *settings))


def test_chat_streams_from_llama_cpp_server_and_is_saved(controller, server):
    url, _ = server
    line, status = controller.use_backend("Server", url, "", "")
    assert "tiny" in line and "Server: tiny" in status  # it took the model the server lists
    assert ServerSettings.saved().enabled  # remembered for the next start
    outputs = send(controller, "Tell me about the quick brown fox.")
    assert len(outputs) >= 2, "the reply did not stream"
    _, conv, history, indicators, *_ = outputs[-1]
    assert "reports no speed statistics" in indicators
    messages = controller.store.messages(conv)
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["complete"] and messages[1]["content"]
    assert messages[1]["stats"]["source"] == "server"
    assert "reports no speed statistics" in message_text(history[-1])
    # a second turn carries the first: the conversation continues on the server
    outputs = send(controller, "And then?", conv)
    assert [m["role"] for m in controller.store.messages(conv)] == [
        "user", "assistant", "user", "assistant"]
    # back to the local engine
    line, _ = controller.use_backend("Local engine", url, "", "")
    assert "local engine" in line and controller.backend()[1] is False


def stop_mid_reply(controller: Controller) -> int:
    """Send, Stop after the first update, and return the conversation."""
    outputs: list = []
    started = threading.Event()

    def run():
        for output in controller.send("Count to a thousand.", None, *SETTINGS[:3], 2000,
                                      *SETTINGS[4:]):
            outputs.append(output)
            started.set()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    assert started.wait(120)
    controller.stop()
    worker.join(30)
    assert not worker.is_alive(), "Stop did not end the server reply"
    return outputs[-1][1]


def test_stop_ends_a_slow_servers_reply_and_keeps_its_text(controller):
    with misbehaving_server("drip") as (url, seen):
        controller.use_backend("Server", url, "", "tiny")
        conv = stop_mid_reply(controller)
        reply = controller.store.messages(conv)[-1]
        assert reply["role"] == "assistant" and reply["content"].startswith("word ")
        assert reply["stats"]["reason"] == "cancelled" and reply["complete"]
        for _ in range(40):  # the connection is closed, so the server stops generating
            if seen.get("closed"):
                break
            time.sleep(0.05)
        assert seen.get("closed")


@pytest.mark.slow
def test_stop_ends_a_llama_cpp_server_reply(controller, tmp_path):
    model = offline_model("smollm2-135m-instruct-q4_1")  # real: slow enough to stop
    with llama_cpp_server(model, tmp_path / "s.log") as (url, _):
        controller.use_backend("Server", url, "", "tiny")
        conv = stop_mid_reply(controller)
    reply = controller.store.messages(conv)[-1]
    assert reply["content"] and reply["stats"]["reason"] == "cancelled"
    assert len(reply["content"].split()) < 1500  # it did not run to its length


def test_a_server_that_goes_down_gives_a_clear_message_and_loses_nothing(controller, tiny_dir,
                                                                         tmp_path):
    with llama_cpp_server(tiny_dir / "target.gguf", tmp_path / "s.log") as (url, _):
        controller.use_backend("Server", url, "", "tiny")
        conv = send(controller, "first message")[-1][1]
    before = controller.store.messages(conv)
    outputs = send(controller, "the server is gone now", conv)
    indicators = outputs[-1][3]
    assert "Could not reach the server" in indicators and "conversation is safe" in indicators
    after = controller.store.messages(conv)
    assert after[:len(before)] == before  # nothing lost
    assert after[len(before)]["content"] == "the server is gone now"


@pytest.mark.parametrize("kind, words", [
    ("silent", "sent nothing for 2 s"),
    ("html", "not an event stream"),
    ("not-json", "not JSON"),
    ("cut", "ended before the server said it was finished"),
    ("error", "CUDA out of memory"),
])
def test_a_server_that_answers_badly_gives_a_clear_message(controller, kind, words):
    with misbehaving_server(kind) as (url, _):
        line, _ = controller.use_backend("Server", url, "", "", timeout=2)
        assert line.startswith("The chat uses"), line
        outputs = send(controller, f"hello {kind}")
    conv, indicators = outputs[-1][1], outputs[-1][3]
    assert words in indicators, indicators
    messages = controller.store.messages(conv)
    assert messages[0]["content"] == f"hello {kind}"  # the user's message is kept
    if kind in ("cut", "not-json"):  # what did arrive is kept, marked interrupted
        assert messages[1]["content"] == "partial text" and not messages[1]["complete"]


def test_a_wrong_url_or_model_is_refused_before_switching(controller, server):
    url, _ = server
    line, _ = controller.use_backend("Server", "ftp://nowhere", "", "")
    assert line.startswith("⚠") and controller.backend()[1] is False
    line, _ = controller.use_backend("Server", url, "", "no-such-model")
    assert "does not list" in line and controller.backend()[1] is False
