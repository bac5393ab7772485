"""End to end: the real app, launched as a process on the offline models, driven with
gradio_client."""

from __future__ import annotations

import sqlite3

import pytest
from app_process import running_app
from conftest import offline_model
from gradio_client import Client
from helpers import message_text

pytestmark = pytest.mark.slow

TARGET = "qwen2.5-coder-1.5b-instruct-q4_k_m"
SETTINGS = dict(param_2="", param_3=0.0, param_4=1.0, param_5=48, param_6="auto", param_7=3,
                param_8="both", param_9=True)


def chat(client: Client, text: str, **overrides):
    args = {**SETTINGS, **overrides}
    job = client.submit(text, *args.values(), api_name="/chat")
    outputs = job.result(timeout=600) and job.outputs()
    return job, outputs


def test_chat_stream_stats_cross_family_stop_and_restart(isolated_home):
    target = offline_model(TARGET)
    draft = offline_model("qwen2.5-coder-0.5b-instruct-q4_k_m")
    with running_app(isolated_home, target, draft) as (url, _):
        client = Client(url, verbose=False)
        job, outputs = chat(client, "Write a Python function that adds two numbers.")
        assert len(outputs) >= 2, "the reply did not stream"
        final = outputs[-1]
        history, indicators = final[1], final[2]
        assert history[-1]["role"] == "assistant"
        reply = message_text(history[-1])
        assert "def " in reply and "tok/s" in reply  # answer plus its stats line
        assert "acceptance" in indicators or "tokens/s" in indicators

        # switch the draft to a cross-family model and chat again
        smollm = offline_model("smollm2-135m-instruct-q4_1")
        status = client.predict(str(target), str(smollm), api_name="/load_pair")
        assert "universal" in status
        _, outputs = chat(client, "Now say hello in one word.")
        assert outputs[-1][1][-1]["role"] == "assistant"

        # stop mid-stream: the reply ends early and is kept
        job = client.submit("Count from 1 to 300, one number per line.",
                            *{**SETTINGS, "param_5": 1500}.values(), api_name="/chat")
        while len(job.outputs()) < 3 and not job.done():
            pass
        client.predict(api_name="/stop")
        job.result(timeout=300)
        final = message_text(job.outputs()[-1][1][-1])
        assert final.count("\n") < 300

    # the conversations survive a restart
    db = sqlite3.connect(isolated_home / "conversations.sqlite3")
    titles = [row[0] for row in db.execute("SELECT title FROM conversations")]
    assert any("adds two numbers" in t for t in titles)
    with running_app(isolated_home, target, None) as (url, _):
        client = Client(url, verbose=False)
        listed = client.predict(api_name="/conversations")
        assert any("adds two numbers" in title for title in listed), listed


def test_an_idle_app_leaves_the_cores_to_the_engine(isolated_home, tiny_dir):
    """The app process (UI and API server) must not poll while nothing happens: on 2 cores
    every tick it burns is taken from llama.cpp's threads while a reply is generated (Gradio's
    queue polled every millisecond: 9% of a core, idle)."""
    import time

    import psutil

    with running_app(isolated_home, tiny_dir / "target.gguf", None) as (_, proc):
        time.sleep(3)  # startup work done
        app = psutil.Process(proc.pid)
        before, started = app.cpu_times(), time.monotonic()
        time.sleep(6)
        after, elapsed = app.cpu_times(), time.monotonic() - started
    busy = (after.user + after.system - before.user - before.system) / elapsed
    assert busy < 0.02, f"the idle app used {busy:.1%} of a core"
