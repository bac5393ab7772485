"""The OpenAI-compatible API through real clients, on the launched app with tiny models: the
official ``openai`` package (streaming and not, a multi-turn conversation with a system
prompt, stop strings, seeded sampling), ``curl``, four clients at once, bad requests, keys and
foreign web pages, a model loaded on request, a prompt longer than the context, a disconnect
mid-stream, a full queue; and the app's own process never maps llama.cpp.

Greedy replies are compared with the engine's own reply for the same request, computed here in
a ``Session`` of the same model files."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import httpx
import openai
import pytest
from helpers import message_text
from tiny_models import write_tiny_model

from app.store import Store
from engine.launched_app import LaunchedApp
from engine.session import ChatRequest, LoadRequest, Session

TARGET, DRAFT, SMALL, HUGE = "local:target", "local:draft", "local:small-ctx", "local:huge"
SLOW = "local:slow"
SYSTEM_CHAT = [{"role": "system", "content": "You are terse. Answer about foxes."},
               {"role": "user", "content": "Tell me about the quick brown fox."},
               {"role": "assistant", "content": "It jumps over the lazy dog."},
               {"role": "user", "content": "And then what happens?"}]


def home_with_models(home: Path, tiny_dir: Path, huge: Path) -> Path:
    """A data directory whose local models are the tiny files (ids ``local:<name>``)."""
    home.mkdir(parents=True, exist_ok=True)
    files = {TARGET: tiny_dir / "target.gguf", DRAFT: tiny_dir / "draft.gguf",
             SMALL: tiny_dir / "small-ctx.gguf", HUGE: huge}
    (home / "local_models.json").write_text(json.dumps({k: str(v) for k, v in files.items()}))
    return home


@pytest.fixture(scope="module")
def shared_home(tiny_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("api")
    huge = folder / "huge.gguf"
    shutil.copy(tiny_dir / "target.gguf", huge)
    os.truncate(huge, 256 * 1024**3)  # sparse: looks like a 256 GiB model, costs no disk
    return home_with_models(folder / "tandem-home", tiny_dir, huge)


class App:
    def __init__(self, url: str, proc, home: Path):
        self.url, self.proc, self.home = url, proc, home
        self.base = url + "v1"
        self.key = (home / "api-key.txt").read_text().strip()
        self.log = next(home.parent.glob(f"app-{url.rstrip('/').rsplit(':', 1)[1]}.log"))

    def client(self, max_retries: int = 0) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base, api_key=self.key, max_retries=max_retries)

    def post(self, payload: bytes | dict, **headers) -> httpx.Response:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return httpx.post(self.base + "/chat/completions", content=data, timeout=120,
                          headers={"Authorization": f"Bearer {self.key}",
                                   "Content-Type": "application/json", **headers})


@pytest.fixture(scope="module")
def app(shared_home):
    with LaunchedApp(shared_home, TARGET, DRAFT) as launched:
        launched.wait_ready(TARGET, timeout=300)
        yield App(launched.url, launched.proc, shared_home)


@pytest.fixture(scope="module")
def engine_reply(tiny_dir, shared_home):
    """The engine's own greedy reply for a request, in a Session of the same files."""
    session = Session()
    with pytest.MonkeyPatch.context() as patch:  # module scope: before isolated_home
        patch.setenv("TANDEM_HOME", str(shared_home))
        session.load(LoadRequest(str(tiny_dir / "target.gguf"), str(tiny_dir / "draft.gguf")))

    def reply(messages: list[dict], max_tokens: int, **options) -> dict:
        request = ChatRequest(messages, max_tokens=max_tokens, temperature=0.0, **options)
        return [e for e in session.chat(request) if e["type"] == "done"][0]

    yield reply
    session.close()


def greedy(client: openai.OpenAI, messages, max_tokens: int, **extra):
    return client.chat.completions.create(model=TARGET, messages=messages, temperature=0,
                                          max_tokens=max_tokens, **extra)


def test_models_are_listed_with_the_loaded_pair_marked(app):
    listed = {m.id: m for m in app.client().models.list().data}
    assert listed[TARGET].model_extra["loaded"] == "target"
    assert listed[DRAFT].model_extra["loaded"] == "draft"
    assert listed[SMALL].model_extra["loaded"] is None
    assert app.client().models.retrieve(TARGET).id == TARGET
    with pytest.raises(openai.NotFoundError) as missing:
        app.client().models.retrieve("no-such-model")
    assert missing.value.body["code"] == "model_not_found"


def test_openai_client_streaming_and_not_give_the_engines_own_greedy_text(app, engine_reply):
    client = app.client()
    whole = greedy(client, SYSTEM_CHAT, 32)
    own = engine_reply(SYSTEM_CHAT, 32)
    assert whole.choices[0].message.content == own["text"]  # token for token: same text,
    assert whole.usage.completion_tokens == own["stats"]["tokens"]  # same number of tokens
    assert whole.choices[0].finish_reason == ("length" if own["reason"] == "length"
                                              else "stop")
    timings = whole.model_extra["timings"]
    assert timings["predicted_n"] == whole.usage.completion_tokens
    assert timings["predicted_per_second"] > 0 and "draft_n_accepted" in timings
    assert whole.usage.prompt_tokens == own["stats"]["prompt_tokens"]

    pieces, finish, usage, last_timings = [], None, None, None
    for chunk in greedy(client, SYSTEM_CHAT, 32, stream=True,
                        stream_options={"include_usage": True}):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
            last_timings = (chunk.model_extra or {}).get("timings") or last_timings
        if chunk.usage is not None:
            usage = chunk.usage
    assert len([p for p in pieces if p]) > 1, "the reply did not stream"
    assert "".join(pieces) == own["text"] and finish == whole.choices[0].finish_reason
    assert usage.completion_tokens == own["stats"]["tokens"]
    assert last_timings["predicted_n"] == usage.completion_tokens
    # the system prompt and the earlier turns reached the model: without them it differs
    assert greedy(client, SYSTEM_CHAT[-1:], 32).choices[0].message.content != own["text"]


def test_speculation_can_be_asked_for_and_never_changes_the_greedy_text(app, engine_reply):
    client = app.client()
    own = engine_reply(SYSTEM_CHAT, 48, mode="off")["text"]
    for speculation in ("off", "auto", {"fixed": 3}):
        reply = greedy(client, SYSTEM_CHAT, 48, extra_body={"speculation": speculation})
        assert reply.choices[0].message.content == own, speculation
        timings = reply.model_extra["timings"]
        if speculation == "off":
            assert timings["draft_n"] == 0 and "plain decoding" in timings["speculation_note"]
        if isinstance(speculation, dict):
            assert timings["draft_n"] > 0 and timings["window"] == 3


def test_stop_strings_end_the_reply_before_them(app):
    client = app.client()
    full = greedy(client, SYSTEM_CHAT, 48).choices[0].message.content
    stop = next(full[i:i + 3] for i in range(8, len(full) - 3) if full[i:i + 3].strip()
                and "\ufffd" not in full[i:i + 3])
    stopped = greedy(client, SYSTEM_CHAT, 48, stop=[stop, "never-in-the-text"])
    assert stopped.choices[0].message.content == full[:full.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_seeded_sampling_gives_the_same_text_twice(app):
    client = app.client()

    def sample(seed: int, stream: bool = False) -> str:
        reply = client.chat.completions.create(
            model=TARGET, messages=SYSTEM_CHAT, temperature=1.0, top_p=0.95, seed=seed,
            max_tokens=32, stream=stream)
        if stream:
            return "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
        assert "same seed" in reply.model_extra["timings"]["speculation_note"]
        return reply.choices[0].message.content

    first = sample(1234)
    assert sample(1234) == first
    for _ in range(2):  # streamed too, and after other replies changed what drafts remember
        greedy(client, SYSTEM_CHAT, 16)
        assert sample(1234, stream=True) == first
    assert sample(4321) != first  # the seed matters (so the test above could fail)


def test_curl_streams_server_sent_events(app):
    payload = json.dumps({"model": TARGET, "stream": True, "temperature": 0, "max_tokens": 16,
                          "messages": SYSTEM_CHAT})
    done = subprocess.run(
        ["curl", "-sN", app.base + "/chat/completions", "-H", f"Authorization: Bearer {app.key}",
         "-H", "Content-Type: application/json", "-d", payload],
        capture_output=True, text=True, timeout=120)
    events = [line[6:] for line in done.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == greedy(app.client(), SYSTEM_CHAT, 16).choices[0].message.content
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert "timings" in chunks[-1]


def test_four_clients_at_once_each_get_their_complete_reply(app):
    prompts = [f"client {i}: tell me about the fox" for i in range(4)]
    replies: dict[int, str] = {}

    def run(index: int) -> None:
        client = app.client()
        text = []
        for chunk in client.chat.completions.create(
                model=TARGET, messages=[{"role": "user", "content": prompts[index]}],
                temperature=0, max_tokens=40, stream=True):
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
                if chunk.choices[0].finish_reason:
                    replies[index] = "".join(text)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert sorted(replies) == [0, 1, 2, 3], "a client did not get a finished reply"
    client = app.client()
    for index, prompt in enumerate(prompts):  # each is its own, as if it had been alone
        alone = greedy(client, [{"role": "user", "content": prompt}], 40)
        assert replies[index] == alone.choices[0].message.content, index


def test_bad_requests_get_openai_shaped_errors_and_the_engine_keeps_serving(app):
    cases = [(b"{not json", 400, None), (b'"just a string"', 400, None),
             ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
             ({"model": TARGET}, 400, "messages"),
             ({"model": TARGET, "messages": "hi"}, 400, "messages"),
             ({"model": TARGET, "messages": [{"role": "user", "content": "hi"}],
               "max_tokens": "many"}, 400, "max_tokens"),
             ({"model": TARGET, "messages": [{"role": "user", "content": "hi"}],
               "temperature": [1]}, 400, "temperature"),
             ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404,
              "model"),
             (b"x" * (9 * 1024 * 1024), 413, None)]
    for payload, status, param in cases:
        response = app.post(payload)
        assert response.status_code == status, (payload[:40], response.text)
        error = response.json()["error"]
        assert error["message"] and error["param"] == param and "type" in error
    unknown = httpx.get(app.base + "/embeddings", headers={"Authorization": f"Bearer {app.key}"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_url"
    with pytest.raises(openai.BadRequestError):
        app.client().chat.completions.create(model=TARGET, messages=[], max_tokens=4)
    assert greedy(app.client(), SYSTEM_CHAT, 4).choices[0].message.content  # still serving


def test_the_key_is_required_foreign_pages_are_refused_and_the_key_is_never_logged(app):
    chat = {"model": TARGET, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    no_key = httpx.post(app.base + "/chat/completions", json=chat)
    assert no_key.status_code == 401 and no_key.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=app.base, api_key="tdm-guessed", max_retries=0).models.list()
    assert httpx.get(app.base + "/models").status_code == 401
    port = app.url.rstrip("/").rsplit(":", 1)[1]
    foreign = [{"Origin": "https://evil.example"}, {"Origin": "http://127.0.0.1:1"},
               {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
               {"Host": "evil.example"}, {"Host": f"attacker.example:{port}"}]
    for headers in foreign:  # a web page gets nothing even with the right key
        assert app.post(chat, **headers).status_code == 403, headers
        response = httpx.options(app.base + "/chat/completions", headers={
            **headers, "Access-Control-Request-Method": "POST"})
        assert response.status_code == 403, headers
    assert app.post(chat, Origin=f"http://127.0.0.1:{port}").status_code == 200  # the app's page

    from app.api_keys import ApiKey
    old = app.key
    new = ApiKey(app.home / "api-key.txt").replace()  # as the API tab's button does
    try:
        assert app.post(chat).status_code == 401  # the old key stopped working at once
        app.key = new
        assert app.post(chat).status_code == 200
    finally:
        app.key = new
    log = app.log.read_text()
    assert old not in log and new not in log and "tdm-guessed" not in log


def test_the_apps_own_process_never_maps_llama_cpp(app):
    import psutil

    def maps(pid: int) -> str:
        return Path(f"/proc/{pid}/maps").read_text()

    if not Path(f"/proc/{app.proc.pid}/maps").exists():
        pytest.skip("needs /proc (Linux)")
    assert "libllama" not in maps(app.proc.pid) and "llama_cpp" not in maps(app.proc.pid)
    workers = [c for c in psutil.Process(app.proc.pid).children(recursive=True)
               if "engine.worker" in " ".join(c.cmdline())]
    assert workers and any("libllama" in maps(w.pid) for w in workers)  # the check can see it


def test_a_disconnect_mid_stream_frees_the_engine_at_once(app):
    client = app.client()
    plain = {"speculation": "off"}
    rate = greedy(client, SYSTEM_CHAT, 64, extra_body=plain).model_extra["timings"][
        "predicted_per_second"]
    with httpx.Client(timeout=120) as http:
        with http.stream("POST", app.base + "/chat/completions",
                         headers={"Authorization": f"Bearer {app.key}"},
                         json={"model": TARGET, "messages": SYSTEM_CHAT, "temperature": 0,
                               "max_tokens": 4000, "stream": True, **plain}) as response:
            seen = 0
            for line in response.iter_lines():
                seen += line.startswith("data: ")
                if seen >= 4:
                    break
    # the connection is closed: the next request waits only for the cancelled step
    after = greedy(client, SYSTEM_CHAT, 4, extra_body=plain).model_extra["timings"]
    left = (4000 - 64) / rate * 1000  # ms the abandoned reply would still have taken
    assert after["queue_ms"] < left / 8, (after["queue_ms"], left)


def test_the_server_backend_shows_what_a_tandem_server_reports(app, tmp_path):
    """The chat UI's Server backend pointed at this app's API: llama-server-shaped timings
    come back and the indicators show them; the conversation is saved as usual."""
    from app.main import Controller
    from engine.facade import EngineClient

    ctl = Controller(EngineClient(), Store(tmp_path / "c.sqlite3"), None, None)
    line, _ = ctl.use_backend("Server", app.base, app.key, TARGET)
    assert line.startswith("The chat uses") and TARGET in line
    outputs = list(ctl.send("Tell me about the fox", None, "", 0.0, 1.0, 24, "auto", 3, "both",
                            False))
    _, conv, history, indicators, *_ = outputs[-1]
    assert "tokens/s (server)" in indicators
    reply = ctl.store.messages(conv)[-1]
    assert reply["role"] == "assistant" and reply["complete"] and reply["content"]
    assert "reported by the server" in reply["stats"]["summary"]
    assert reply["stats"]["tokens"] == 24 or reply["stats"]["reason"] == "stop"
    assert "reported by the server" in message_text(history[-1])


def test_an_installed_model_is_loaded_on_request_and_a_long_prompt_is_refused(app):
    client = app.client()
    long_prompt = [{"role": "user", "content": "the quick brown fox " * 40}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=SMALL, messages=long_prompt, max_tokens=4)
    error = refused.value.body
    assert error["code"] == "context_length_exceeded"
    # both lengths named: the prompt, and the context (64 trained, 256 as llama.cpp pads it)
    prompt_tokens, n_ctx = map(int, re.findall(r"(\d+) tokens", error["message"]))
    assert prompt_tokens > 400 and n_ctx in (64, 256)
    listed = {m.id: m.model_extra["loaded"] for m in client.models.list().data}
    assert listed[SMALL] == "target"  # asking for it loaded it
    short = client.chat.completions.create(model=SMALL, max_tokens=4,
                                           messages=[{"role": "user", "content": "hi"}])
    assert short.choices[0].message.content

    with pytest.raises(openai.BadRequestError) as too_big:
        client.chat.completions.create(model=HUGE, max_tokens=4,
                                       messages=[{"role": "user", "content": "hi"}])
    assert too_big.value.body["code"] == "model_does_not_fit"
    assert "GiB" in too_big.value.body["message"]
    back = greedy(client, SYSTEM_CHAT, 4)  # and back to the first model
    assert back.choices[0].message.content
    assert {m.id: m.model_extra["loaded"] for m in client.models.list().data}[TARGET] == \
        "target"


@pytest.fixture()
def slow_target(shared_home, tmp_path):
    """A target slow enough that its reply is still being generated when a second request
    comes (the tiny target writes 4000 tokens in well under a second on a fast machine, and a
    streamed reply is generated at the engine's pace, not the reader's), listed as ``SLOW``
    in the module's data directory while the test runs."""
    slow = write_tiny_model(tmp_path / "slow.gguf", "a", seed=0, n_embd=512, n_layer=8,
                            n_head=8, n_head_kv=4, n_ff=2048)
    listing = shared_home / "local_models.json"
    listed = listing.read_text()
    listing.write_text(json.dumps({**json.loads(listed), SLOW: str(slow)}))
    yield slow
    listing.write_text(listed)  # the module's other tests share this data directory


def test_a_full_queue_answers_429_with_retry_after(shared_home, slow_target):
    with LaunchedApp(shared_home, slow_target, None,
                     extra_env={"TANDEM_API_QUEUE": "0"}) as launched:
        launched.wait_ready(SLOW, timeout=300)
        busy = App(launched.url, launched.proc, shared_home)
        with httpx.Client(timeout=120) as http:
            with http.stream("POST", busy.base + "/chat/completions",
                             headers={"Authorization": f"Bearer {busy.key}"},
                             json={"model": SLOW, "messages": SYSTEM_CHAT, "max_tokens": 4000,
                                   "temperature": 0, "stream": True,
                                   "speculation": "off"}) as running:
                lines = running.iter_lines()
                next(line for line in lines if '"content": "' in line)  # the role chunk
                next(line for line in lines if '"content": "' in line)  # the first token
                refused = busy.post({"model": SLOW, "max_tokens": 2,
                                     "messages": [{"role": "user", "content": "hi"}]})
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        # once the running reply is gone the engine takes requests again (openai retries 429)
        client = busy.client(max_retries=5)
        assert greedy(client, SYSTEM_CHAT, 4).choices[0].message.content
