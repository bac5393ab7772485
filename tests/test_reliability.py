"""Reliability through the real pieces: the engine worker process (crash, hostile files, too
big for memory), the session (no state between conversations), and the launched app (clients
served in turn, cancel frees the engine, the store survives kill -9 with the text of the reply
in flight kept up to the last chunk written, and a crash of the worker or of the app while a
reply is regenerated loses neither the old reply nor the new one's text)."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time

import psutil
import pytest
from app_process import running_app
from conftest import offline_model
from gradio_client import Client
from helpers import message_text
from test_model_files import hostile_corpus

from app.store import Store
from engine import protocol as p
from engine.errors import DoesNotFit, TandemError
from engine.facade import EngineClient
from engine.session import ChatRequest, LoadRequest, Session

MESSAGES = [{"role": "user", "content": "Tell me about the quick brown fox."}]


def chat_request(max_tokens: int = 24, **extra) -> p.ChatRequest:
    return p.ChatRequest(tuple(p.Message(**m) for m in MESSAGES), max_tokens=max_tokens,
                         temperature=0.0, **extra)


@pytest.fixture()
def engine():
    client = EngineClient()
    yield client
    client.close()


def test_worker_killed_mid_reply_is_reported_then_recovered(engine, tiny_dir):
    engine.load(p.LoadRequest(str(tiny_dir / "target.gguf"), str(tiny_dir / "draft.gguf")))
    events = iter(engine.chat(chat_request(max_tokens=4000, mode="fixed", window=3)))
    assert isinstance(next(events), p.Started)
    assert isinstance(next(events), p.Chunk)
    os.kill(engine.worker_pid, signal.SIGKILL)  # what the OOM killer or a segfault does
    rest = list(events)
    assert isinstance(rest[-1], p.Failed) and rest[-1].crashed
    assert "stopped unexpectedly" in rest[-1].message
    # the next request starts a fresh worker that reloads the same pair by itself
    done = list(engine.chat(chat_request()))[-1]
    assert isinstance(done, p.Done) and done.stats.tokens > 0
    assert engine.info().target == str(tiny_dir / "target.gguf")


def test_hostile_files_are_refused_by_the_worker_and_it_stays_usable(engine, tiny_dir,
                                                                      tmp_path):
    valid = (tiny_dir / "target.gguf").read_bytes()
    corpus = hostile_corpus(valid, tiny_dir)
    for name, data in corpus.items():
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(data)
        with pytest.raises(TandemError) as refused:
            engine.load(p.LoadRequest(str(path)))
        assert "not a usable GGUF" in str(refused.value), name
        assert "PWNED" not in str(refused.value), name
    assert len(corpus) >= 30
    engine.load(p.LoadRequest(str(tiny_dir / "target.gguf")))
    assert isinstance(list(engine.chat(chat_request()))[-1], p.Done)


def test_pair_too_big_for_memory_is_refused_before_loading(tiny_dir, tmp_path):
    huge = tmp_path / "huge.gguf"
    shutil.copy(tiny_dir / "target.gguf", huge)
    os.truncate(huge, 256 * 1024**3)  # sparse: looks like a 256 GiB model, costs no disk
    session = Session()
    with pytest.raises(DoesNotFit) as refused:
        session.load(LoadRequest(str(huge)))
    assert "GiB" in str(refused.value) and "available" in str(refused.value)
    assert session.target is None  # nothing was loaded
    with pytest.raises(DoesNotFit):  # a context too long for memory: same guard
        session.load(LoadRequest(str(tiny_dir / "target.gguf"), n_ctx=2**31))


def test_no_state_leaks_between_conversations(tiny_dir):
    second = [{"role": "user", "content": "Hello world!"}]

    def reply(session: Session, messages) -> str:
        request = ChatRequest(messages, max_tokens=40, temperature=0.0, mode="fixed", window=3)
        return [e for e in session.chat(request) if e["type"] == "done"][0]["text"]

    fresh = Session()
    fresh.load(LoadRequest(str(tiny_dir / "target.gguf"), str(tiny_dir / "draft.gguf")))
    expected = reply(fresh, second)
    fresh.close()
    used = Session()
    used.load(LoadRequest(str(tiny_dir / "target.gguf"), str(tiny_dir / "draft.gguf")))
    reply(used, MESSAGES)
    reply(used, [*MESSAGES, {"role": "assistant", "content": "fox"},
                 {"role": "user", "content": "more"}])
    assert reply(used, second) == expected
    used.close()


APP_SETTINGS = dict(param_2="", param_3=0.0, param_4=1.0, param_5=64, param_6="fixed",
                    param_7=3, param_8="both", param_9=False)


def submit(client: Client, text: str, max_tokens: int = 64):
    return client.submit(text, *{**APP_SETTINGS, "param_5": max_tokens}.values(),
                         api_name="/chat")


def final_reply(job) -> str:
    return message_text(job.outputs()[-1][1][-1])  # (box, chatbot, …): State is not sent


def greedy_reply(tiny_dir, messages: list[dict], max_tokens: int) -> str:
    """What the app's settings produce for ``messages`` (greedy, so speculation changes
    nothing), computed in a fresh session."""
    session = Session()
    session.load(LoadRequest(str(tiny_dir / "target.gguf"), str(tiny_dir / "draft.gguf")))
    request = ChatRequest(messages, max_tokens=max_tokens, temperature=0.0, mode="fixed",
                          window=3)
    done = [e for e in session.chat(request) if e["type"] == "done"][0]["text"]
    session.close()
    return done


def wait_for_outputs(job, count: int) -> None:
    while len(job.outputs()) < count and not job.done():
        time.sleep(0.05)


def test_app_serves_clients_in_turn_cancels_at_once_and_survives_kill_9(tiny_dir,
                                                                        isolated_home):
    target, draft = tiny_dir / "target.gguf", tiny_dir / "draft.gguf"
    with running_app(isolated_home, target, draft) as (url, proc):
        clients = [Client(url, verbose=False) for _ in range(4)]
        jobs = [submit(c, f"client {i}: tell me about the fox") for i, c in enumerate(clients)]
        for job in jobs:
            job.result(timeout=300)
        for job in jobs:
            assert "tok/s" in final_reply(job), "a client did not get a complete reply"

        # a cancelled request frees the engine at once
        long_job = submit(clients[0], "a very long answer please", max_tokens=4000)
        while len(long_job.outputs()) < 2 and not long_job.done():
            time.sleep(0.05)
        started = time.monotonic()
        clients[1].predict(api_name="/stop")
        long_job.result(timeout=60)
        quick = submit(clients[1], "and now a short one")
        quick.result(timeout=60)
        assert time.monotonic() - started < 30
        assert "tok/s" in final_reply(quick)

        # kill -9 in the middle of a reply
        doomed = submit(clients[2], "this reply will be cut off", max_tokens=4000)
        wait_for_outputs(doomed, 3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert not doomed.done() or len(doomed.outputs()) >= 3
        seen = message_text(doomed.outputs()[-1][1][-1])  # what the user saw last

    db = sqlite3.connect(isolated_home / "conversations.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = db.execute("SELECT c.title, m.role, m.complete FROM messages m "
                      "JOIN conversations c ON c.id = m.conversation_id").fetchall()
    finished = [r for r in rows if r[1] == "assistant" and r[2]]
    assert len(finished) >= 5  # four clients + the short one, all intact
    assert sum(1 for r in rows if r[1] == "user") >= 7
    cut = [r for r in rows if r[1] == "assistant" and not r[2]]
    assert len(cut) == 1 and cut[0][0].startswith("client 2")  # only the reply in flight
    # its text: everything the user saw, and exactly the reply's own text up to the last chunk
    # written (greedy: the same reply a fresh session gives for the same conversation)
    cut_id, conv_id, kept = db.execute("SELECT id, conversation_id, content FROM messages "
                                       "WHERE role = 'assistant' AND complete = 0").fetchone()
    history = [{"role": r, "content": c} for r, c in db.execute(
        "SELECT role, content FROM messages WHERE conversation_id = ? AND id < ? ORDER BY id",
        (conv_id, cut_id))]
    assert seen.strip() and kept.lstrip().startswith(seen.strip()), (seen, kept)  # Gradio trims
    assert greedy_reply(tiny_dir, history, 4000).startswith(kept)
    # and the app starts again on the same data
    with running_app(isolated_home, target, draft) as (url, _):
        assert "/chat" in Client(url, verbose=False).view_api(
            return_format="dict", print_info=False)["named_endpoints"]


REGENERATE = dict(temperature=1.0, top_p=1.0, max_tokens=4000, mode="fixed", window=3,
                  drafter="both", show_drafts=False)


def worker_processes(app_pid: int) -> list[psutil.Process]:
    return [child for child in psutil.Process(app_pid).children(recursive=True)
            if "engine" in " ".join(child.cmdline()) or "multiprocessing" in
            " ".join(child.cmdline())]


@pytest.mark.slow
def test_the_worker_goes_when_the_app_is_closed_while_models_load(isolated_home):
    """Closing the app while its worker loads and calibrates the models (seconds of work with
    nothing sent back, on the real 1.5B target) must not leave the worker running on, holding
    the CPU and the memory."""
    with running_app(isolated_home, offline_model("qwen2.5-coder-1.5b-instruct-q4_k_m"),
                     None) as (_, proc):
        deadline = time.monotonic() + 60
        while not (workers := worker_processes(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert workers, "the app started no worker"
        assert workers[0].cpu_percent(1.0) > 50, "the worker is not loading"
    _, running = psutil.wait_procs(workers, timeout=5)
    for worker in running:
        worker.kill()
    assert not running, "the worker outlived the app"


def thread_of(home, title: str) -> list[tuple[str, str, bool]]:
    store = Store(home / "conversations.sqlite3")
    conv = next(cid for cid, t in store.list() if t == title)
    out = [(m["role"], m["content"], m["complete"]) for m in store.messages(conv)]
    store.close()
    return out


def alternatives_of_last(home, title: str) -> list[dict]:
    store = Store(home / "conversations.sqlite3")
    conv = next(cid for cid, t in store.list() if t == title)
    out = store.alternatives(store.messages(conv)[-1]["id"])
    store.close()
    return out


def test_a_crash_while_regenerating_loses_neither_reply(tiny_dir, isolated_home):
    target, draft = tiny_dir / "target.gguf", tiny_dir / "draft.gguf"
    title = "regenerate me: tell me about the fox"
    with running_app(isolated_home, target, draft) as (url, proc):
        client = Client(url, verbose=False)
        submit(client, title, max_tokens=48).result(timeout=300)
        before = thread_of(isolated_home, title)
        assert before[-1][0] == "assistant" and before[-1][2] and before[-1][1]

        # the engine worker dies while the new reply streams
        job = client.submit(*REGENERATE.values(), api_name="/regenerate")
        wait_for_outputs(job, 3)
        workers = worker_processes(proc.pid)
        assert workers, "no engine worker found"
        for worker in workers:
            worker.kill()
        job.result(timeout=120)
        assert thread_of(isolated_home, title) == before  # the old reply is still the reply
        partial = alternatives_of_last(isolated_home, title)
        assert len(partial) == 1 and partial[0]["content"] and not partial[0]["complete"]

        # the app itself is killed while another new reply streams
        job = client.submit(*REGENERATE.values(), api_name="/regenerate")
        wait_for_outputs(job, 3)
        seen = message_text(job.outputs()[-1][0][-1])  # (chatbot, indicators, plot)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    db = sqlite3.connect(isolated_home / "conversations.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert thread_of(isolated_home, title) == before
    partials = alternatives_of_last(isolated_home, title)
    assert len(partials) == 2 and not any(m["complete"] for m in partials)
    assert seen.strip() and any(m["content"].lstrip().startswith(seen.strip())
               for m in partials), (seen, partials)
    with running_app(isolated_home, target, draft) as (url, _):  # and it starts again
        assert title in Client(url, verbose=False).predict(api_name="/conversations")
    assert thread_of(isolated_home, title) == before
