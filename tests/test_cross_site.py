"""A real second web page, served on another loopback port and opened in headless Chromium, tries
to drive the running app: the Gradio queue and call API (chat, add a local model, load a pair,
remove a model, download), the conversations API, the reads (config, API info, the event
stream), a WebSocket, a JSON-as-text/plain form post, and embedding the app in a script, an
image and a frame. Every request that reaches the app is answered 403, nothing changes on disk
or in the engine, and the app's own page keeps working in the same browser."""

from __future__ import annotations

import http.client
import json
import shutil
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pytest
from app_process import running_app
from local_servers import _Quiet, serve
from tiny_models import write_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REMOVABLE = "smollm2-135m-instruct-q4_1"  # a catalog id whose file the attack tries to delete

HOSTILE_PAGE = """<!doctype html><html><body><h1>Totally harmless page</h1>
<iframe name="sink" id="sink"></iframe>
<script>
const app = APP, ids = IDS, model = MODEL, evil = EVIL;
const results = {};
async function attempt(name, work) {
  try { results[name] = "answered: " + await work(); }
  catch (error) { results[name] = "blocked: " + error; }
}
function json(body) {
  return {method: "POST", headers: {"Content-Type": "application/json"},
          body: JSON.stringify(body)};
}
function join(name, data) {
  return json({data: data, fn_index: ids[name][0], trigger_id: ids[name][1],
               session_hash: "cross-site-" + name, event_data: null});
}
async function read(response) { return response.status + " " + (await response.text()); }
function formPost(path, enctype, fields) {
  const form = document.createElement("form");
  form.method = "POST"; form.action = app + path; form.target = "sink"; form.enctype = enctype;
  for (const [name, value] of fields) {
    const input = document.createElement("input");
    input.name = name; input.value = value; form.appendChild(input);
  }
  document.body.appendChild(form); form.submit();
}
function load(tag, attrs) {
  return new Promise(done => {
    const element = document.createElement(tag);
    element.onload = () => done("loaded"); element.onerror = () => done("error");
    Object.assign(element, attrs); document.body.appendChild(element);
    setTimeout(() => done("timeout"), 3000);
  });
}
window.attack = async () => {
  await attempt("read config", async () => read(await fetch(app + "config")));
  await attempt("read api info", async () => read(await fetch(app + "gradio_api/info")));
  await attempt("list conversations", async () =>
    read(await fetch(app + "gradio_api/call/conversations", json({data: []}))));
  await attempt("add local model", async () =>
    read(await fetch(app + "gradio_api/call/add_local", json({data: [model]}))));
  await attempt("load pair", async () =>
    read(await fetch(app + "gradio_api/call/load_pair", json({data: [evil, "none"]}))));
  await attempt("queue: chat", async () => read(await fetch(app + "gradio_api/queue/join",
    join("chat", ["hello from another site", null, "", 0, 1, 16, "off", 1, "ngram", false]))));
  await attempt("queue: add local", async () =>
    read(await fetch(app + "gradio_api/queue/join", join("add_local", [model]))));
  await attempt("queue: remove model", async () =>
    read(await fetch(app + "gradio_api/queue/join", join("remove_model", [REMOVABLE]))));
  await attempt("queue: download", async () =>
    read(await fetch(app + "gradio_api/queue/join", join("download", [REMOVABLE]))));
  await attempt("no-cors text/plain", async () => (await fetch(
    app + "gradio_api/call/add_local", {method: "POST", mode: "no-cors",
    headers: {"Content-Type": "text/plain"}, body: JSON.stringify({data: [model]})})).type);
  await attempt("no-cors queue join", async () => (await fetch(app + "gradio_api/queue/join",
    {...join("add_local", [model]), mode: "no-cors",
     headers: {"Content-Type": "text/plain"}})).type);
  formPost("gradio_api/call/add_local", "text/plain",
           [['{"data": ["' + model + '"], "x": "', '"}']]);
  formPost("gradio_api/call/load_pair", "application/x-www-form-urlencoded", [["data", evil]]);
  await attempt("event stream", () => new Promise(done => {
    const source = new EventSource(app + "gradio_api/queue/data?session_hash=cross-site-chat");
    source.onmessage = event => { source.close(); done("message " + event.data); };
    source.onerror = () => { source.close(); done("error"); };
  }));
  await attempt("websocket", () => new Promise(done => {
    const socket = new WebSocket(app.replace("http", "ws") + "gradio_api/queue/join");
    socket.onopen = () => done("OPEN"); socket.onerror = () => done("error");
  }));
  await attempt("script tag", () => load("script", {src: app + "gradio_api/info"}));
  await attempt("image tag", () => load("img", {src: app + "gradio_api/info"}));
  await attempt("frame", () => load("iframe", {src: app + "?embedded"}));
  await new Promise(done => setTimeout(done, 1500));  // let the form posts land
  return results;
};
</script></body></html>"""


@pytest.fixture()
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (python3 launcher.py test installs it "
                    "with apt when it can)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield instance
        instance.close()


def event_ids(url: str) -> dict[str, tuple[int, int]]:
    """(fn_index, trigger id) of each named event, read from the app's own config (what an
    attacker reads in the source code)."""
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    connection.request("GET", "/config")
    config = json.loads(connection.getresponse().read())
    return {dep["api_name"]: (dep["id"], dep["targets"][0][0] if dep["targets"] else 0)
            for dep in config["dependencies"] if dep.get("api_name")}


@contextmanager
def hostile_site(page: str):
    body = page.encode()

    class Handler(_Quiet):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serve(Handler) as (url, _):
        yield url.replace("127.0.0.1", "localhost") + "/"


def attack_page(url: str, model: Path, evil: Path) -> str:
    values = {"APP": json.dumps(url), "IDS": json.dumps(event_ids(url)),
              "MODEL": json.dumps(str(model)), "EVIL": json.dumps(str(evil)),
              "REMOVABLE": json.dumps(REMOVABLE)}
    page = HOSTILE_PAGE
    for name, value in values.items():
        page = page.replace(name, value) if name != "REMOVABLE" else page.replace(
            f"[{name}]", f"[{value}]")
    return page


def conversations(home: Path) -> int:
    with sqlite3.connect(home / "conversations.sqlite3") as db:
        return db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]


def test_another_page_cannot_drive_the_app(browser, tiny_dir, isolated_home, tmp_path):
    target = tiny_dir / "target.gguf"
    evil = write_tiny_model(tmp_path / "evil.gguf", seed=9)
    removable = isolated_home / "models" / f"{REMOVABLE}.gguf"
    removable.parent.mkdir(parents=True, exist_ok=True)
    removable.write_bytes(b"a model the user downloaded")
    with running_app(isolated_home, target, None) as (url, _):
        own = browser.new_page()
        own.goto(url)
        own.wait_for_selector("#tdm-indicators :text('Ready')", timeout=240_000)

        with hostile_site(attack_page(url, target, evil)) as site:
            hostile = browser.new_page()
            seen: list[tuple[str, int | str]] = []
            hostile.on("response", lambda r: seen.append((r.url, r.status)))
            hostile.on("requestfailed", lambda r: seen.append((r.url, "failed")))
            hostile.goto(site)
            results = hostile.evaluate("window.attack()")
            hostile.wait_for_timeout(1000)

        to_app = [(u, status) for u, status in seen if u.startswith(url)]
        assert len(to_app) >= 15, to_app
        assert all(status in (403, "failed") for _, status in to_app), to_app
        assert any(status == 403 for _, status in to_app)  # they reached the app: refused
        for name, outcome in results.items():  # nothing readable came back
            assert not outcome.startswith("answered: 2"), (name, outcome)
            assert "OPEN" not in outcome and "message" not in outcome, (name, outcome)
        time.sleep(2)  # anything that got in would have been processed by now
        assert not (isolated_home / "local_models.json").exists()
        assert removable.exists() and conversations(isolated_home) == 0
        assert not (isolated_home / "cache" / "packages").exists()  # no download started

        # the app's own page still works: the same pair is loaded, a message gets a reply
        own.reload()
        own.wait_for_selector("#tdm-indicators :text('Ready')", timeout=60_000)
        status = own.locator("#tdm-indicators").inner_text()
        assert "target.gguf" in status and "evil" not in status, status
        own.locator("#tdm-input textarea").fill("hello from the app's own page")
        own.locator("#tdm-send").click()
        own.locator("#tdm-chat .tdm-stats", has_text="tok/s").wait_for(timeout=120_000)
        assert conversations(isolated_home) == 1
