"""The API on the real offline pair (Qwen2.5-Coder 1.5B + 0.5B): the greedy text a streaming
``openai`` client receives for a multi-turn conversation with a system prompt is token for token
the engine's own reply to the same request (a ``Session`` of the same files, here), with
speculation auto or a fixed window; and a client that disconnects mid-stream frees the engine
at once (the next request waits for one step, not for the abandoned reply)."""

from __future__ import annotations

import httpx
import openai
import pytest
from app_process import running_app
from conftest import offline_model

from engine.session import ChatRequest, LoadRequest, Session

pytestmark = pytest.mark.slow

TARGET, DRAFT = "qwen2.5-coder-1.5b-instruct-q4_k_m", "qwen2.5-coder-0.5b-instruct-q4_k_m"
CONVERSATION = [
    {"role": "system", "content": "You are a careful Python reviewer. Answer briefly."},
    {"role": "user", "content": "Write a function that returns the squares of a list."},
    {"role": "assistant", "content": "def squares(xs):\n    return [x * x for x in xs]"},
    {"role": "user", "content": "Now add type hints and a docstring."}]


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    home = tmp_path_factory.mktemp("api-real") / "tandem-home"
    home.mkdir()
    # the real models are looked up by path: this data directory has none downloaded
    with running_app(home, offline_model(TARGET), offline_model(DRAFT)) as (url, _):
        key = (home / "api-key.txt").read_text().strip()
        client = openai.OpenAI(base_url=url + "v1", api_key=key, max_retries=0, timeout=900)
        model = client.models.list().data[0].id
        client.chat.completions.create(model=model, max_tokens=1,  # waits for the load
                                       messages=[{"role": "user", "content": "hi"}])
        yield client, model, url, key, home


def stream_text(client: openai.OpenAI, model: str, **extra) -> tuple[str, int]:
    pieces, tokens = [], 0
    for chunk in client.chat.completions.create(
            model=model, messages=CONVERSATION, temperature=0, max_tokens=64, stream=True,
            stream_options={"include_usage": True}, **extra):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return "".join(pieces), tokens


def test_greedy_text_through_the_api_is_the_engines_own(api, monkeypatch):
    client, model, _, _, home = api
    through_api = {name: stream_text(client, model, extra_body={"speculation": speculation})
                   for name, speculation in (("auto", "auto"), ("fixed", {"fixed": 3}))}
    monkeypatch.setenv("TANDEM_HOME", str(home))  # the app's calibration, measured already
    session = Session()
    session.load(LoadRequest(str(offline_model(TARGET)), str(offline_model(DRAFT))))
    try:
        own = {}
        for name, options in (("auto", {}), ("fixed", {"mode": "fixed", "window": 3})):
            done = [e for e in session.chat(ChatRequest(CONVERSATION, max_tokens=64,
                                                        temperature=0.0, **options))
                    if e["type"] == "done"][0]
            own[name] = (done["text"], done["stats"]["tokens"])
    finally:
        session.close()
    assert "def " in own["auto"][0]  # a real answer, with the system prompt and history
    assert through_api == own
    assert own["auto"][0] == own["fixed"][0]  # and speculation changed nothing


def test_a_disconnect_frees_the_engine_within_a_step(api):
    client, model, url, key, _ = api
    reply = client.chat.completions.create(model=model, messages=CONVERSATION, temperature=0,
                                           max_tokens=32, extra_body={"speculation": "off"})
    per_token_ms = reply.model_extra["timings"]["predicted_per_token_ms"]
    with httpx.Client(timeout=600) as http:
        with http.stream("POST", url + "v1/chat/completions",
                         headers={"Authorization": f"Bearer {key}"},
                         json={"model": model, "messages": CONVERSATION, "temperature": 0,
                               "max_tokens": 1500, "stream": True,
                               "speculation": "off"}) as response:
            seen = 0
            for line in response.iter_lines():
                seen += '"content": "' in line
                if seen >= 3:
                    break
    after = client.chat.completions.create(model=model, messages=CONVERSATION, temperature=0,
                                           max_tokens=2, extra_body={"speculation": "off"})
    waited = after.model_extra["timings"]["queue_ms"]
    # a few steps at most (the step in flight, the drain), against ~1500 had it run on
    assert waited < 20 * per_token_ms + 500, (waited, per_token_ms)
