# ruff: noqa: E402  (imports follow the sys.path set-up below)
"""The reliability bar, as one script: drive the engine worker and the launched app with every
hostile input the tests know, and print one line per case — refused or survived, and whether
anything was lost. Exit status 0 only when every case passes.

    python tests/reliability_cases.py [--skip-browser]

Cases: the hostile GGUF corpus (``test_model_files``) loaded through the worker; the hostile
chat templates (``test_templates``) inside real GGUF files, through the worker; role-token
injection strings (``test_prompting``) on the real Qwen and Gemma tokenizers and through the
launched app; foreign Origins on every kind of endpoint, and a real cross-site page in
headless Chromium (``test_cross_site``); the engine worker and then the whole app killed while
a reply is regenerated (``test_reliability``). The worker must answer normally after every
refusal, and the conversation must keep every reply.

Run by the test suite through ``tests/test_reliability_cases.py``. Not for: measuring speed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import conftest

TMP = Path(tempfile.mkdtemp(prefix="tandem-reliability-"))
os.environ["TANDEM_HOME"] = str(TMP / "home")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from app_process import running_app
from gradio_client import Client
from helpers import message_text
from test_model_files import hostile_corpus, tensor_offset_position
from test_prompting import (
    GEMMA,
    GEMMA_TEMPLATE,
    INJECTIONS,
    QWEN,
    controls,
    conversation,
    text_runs,
)
from test_reliability import (
    REGENERATE,
    alternatives_of_last,
    submit,
    thread_of,
    wait_for_outputs,
    worker_processes,
)
from test_templates import HOSTILE_TEMPLATES
from test_web_lockdown import request, state_changing_requests, websocket_status
from tiny_models import write_tiny_model

from engine import protocol as p
from engine.errors import TandemError
from engine.facade import EngineClient
from engine.prompting import prompt_tokens
from engine.runtime import Model

CHAT = p.ChatRequest((p.Message("user", "hello"),), max_tokens=8, temperature=0.0, mode="off")


@dataclass
class Case:
    group: str
    name: str
    outcome: str  # "refused", "survived" or "skipped"
    ok: bool
    detail: str = ""

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return f"{mark} {self.outcome:8} {self.group}: {self.name}" + (
            f" — {self.detail}" if self.detail else "")


RESULTS: list[Case] = []


def record(case: Case) -> None:
    RESULTS.append(case)
    print(case.line(), flush=True)


def attempt(group: str, name: str, outcome: str, check: Callable[[], str]) -> None:
    """Run one case: ``check`` returns a detail line, or raises when the case fails."""
    try:
        record(Case(group, name, outcome, True, check()))
    except Exception as error:  # a failing case is reported, and the others still run
        record(Case(group, name, outcome, False, f"{type(error).__name__}: {error}"[:300]))


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


# ---- the worker ----------------------------------------------------------------------------
def worker_answers(engine: EngineClient, good: Path, pid: int) -> str:
    engine.load(p.LoadRequest(str(good)))
    done = list(engine.chat(CHAT))[-1]
    expect(isinstance(done, p.Done) and done.stats.tokens > 0, f"no reply: {done}")
    expect(engine.worker_pid == pid, "the worker was restarted: it had died")
    return f"same worker (pid {pid}) answered {done.stats.tokens} tokens"


def hostile_files(engine: EngineClient, folder: Path, good: Path) -> None:
    valid = good.read_bytes()
    corpus = hostile_corpus(valid, folder)
    at = tensor_offset_position(valid, "blk.0.attn_q.weight")
    for label, offset in (("tensor-outside-file", 2**40), ("tensor-overlap", 0)):
        corpus[label] = valid[:at] + struct.pack("<Q", offset) + valid[at + 8:]
    engine.load(p.LoadRequest(str(good)))
    pid = engine.worker_pid
    for name, data in corpus.items():
        path = folder / f"{name}.gguf"
        path.write_bytes(data)

        def check(path: Path = path) -> str:
            try:
                engine.load(p.LoadRequest(str(path)))
            except TandemError as error:
                message = str(error)
                expect("not a usable GGUF" in message, message)
                expect("PWNED" not in message and message.isprintable(), "echoes the file")
                return message.split(": ", 1)[-1][:90]
            raise AssertionError("loaded")
        attempt("hostile file", name, "refused", check)
    attempt("hostile file", f"worker after {len(corpus)} files", "survived",
            lambda: worker_answers(engine, good, pid))


def hostile_templates(engine: EngineClient, folder: Path, good: Path) -> None:
    engine.load(p.LoadRequest(str(good)))
    pid = engine.worker_pid
    for name, source in HOSTILE_TEMPLATES.items():
        path = write_tiny_model(folder / f"template-{name}.gguf", chat_template=source)

        def check(path: Path = path) -> str:
            engine.load(p.LoadRequest(str(path)))
            started = time.monotonic()
            last = list(engine.chat(CHAT))[-1]
            seconds = time.monotonic() - started
            expect(isinstance(last, p.Failed) and not last.crashed, f"not refused: {last}")
            expect("chat template was refused" in last.message, last.message)
            expect(engine.worker_pid == pid, "the worker died")
            return f"{last.message.split('refused: ', 1)[-1][:60]} ({seconds:.1f} s)"
        attempt("hostile template", name, "refused", check)
    attempt("hostile template", f"worker after {len(HOSTILE_TEMPLATES)} templates", "survived",
            lambda: worker_answers(engine, good, pid))


# ---- role-token injection -------------------------------------------------------------------
def injections_on_real_tokenizers() -> None:
    for model_id, template in ((QWEN, None), (GEMMA, GEMMA_TEMPLATE), (GEMMA, None)):
        model = Model(conftest.offline_model(model_id), vocab_only=True)
        label = model_id.split("-instruct")[0] + (" (own fallback)" if template is None and
                                                  model_id == GEMMA else "")
        benign = controls(model, prompt_tokens(model, conversation("(quoted)"), template))
        for injected in INJECTIONS:
            def check(injected: str = injected, model: Model = model,
                      template: str | None = template, benign: list = benign) -> str:
                tokens = prompt_tokens(model, conversation(injected), template)
                expect(controls(model, tokens) == benign, "the role markers changed")
                found = sum(run.count(injected.strip()) for run in text_runs(model, tokens))
                expect(found == 4, f"the text came back {found} times of 4")
                return f"{len(benign)} role markers unchanged, text kept in 4 messages"
            attempt(f"injection on {label}", repr(injected[:38]), "survived", check)
        model.close()


def injection_through_app(url: str, home: Path) -> None:
    client = Client(url, verbose=False)
    for injected in INJECTIONS[:2]:
        def check(injected: str = injected) -> str:
            text = f"Summarise: {injected}"
            job = submit(client, text, max_tokens=16)
            job.result(timeout=300)
            expect("tok/s" in message_text(job.outputs()[-1][1][-1]), "no complete reply")
            db = sqlite3.connect(home / "conversations.sqlite3")
            stored = [c for (c,) in db.execute("SELECT content FROM messages WHERE role='user'")]
            expect(text in stored, "the message was not stored verbatim")
            return "reply complete, message stored verbatim"
        attempt("injection through the app", repr(injected[:38]), "survived", check)


# ---- web pages ------------------------------------------------------------------------------
def foreign_origins(url: str, home: Path, model: Path) -> None:
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    origins = ("http://evil.example", f"http://127.0.0.1:{port + 1}", "null")
    for method, path, body, ctype in state_changing_requests(str(model)):
        def check(method=method, path=path, body=body, ctype=ctype) -> str:
            for origin in origins:
                headers = {"Origin": origin, **({"Content-Type": ctype} if ctype else {})}
                status = request(url, path, headers, method, body).status
                expect(status == 403, f"{origin} got {status}")
            return f"403 for {len(origins)} foreign origins"
        attempt("foreign origin", f"{method} {path.split('?')[0]} {ctype}".strip(), "refused",
                check)
    attempt("foreign origin", "websocket", "refused",
            lambda: f"{websocket_status(url, 'http://evil.example')} on the handshake")

    def unchanged() -> str:
        expect(not (home / "local_models.json").exists(), "a model was added")
        status = request(url, "/", {"Origin": f"http://127.0.0.1:{port}"}).status
        expect(status == 200, f"the app's own origin got {status}")
        return "no model added; the app's own origin is still answered (200)"
    attempt("foreign origin", "nothing changed", "survived", unchanged)


def cross_site_page(url: str, home: Path, model: Path, evil: Path, skip: bool) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if skip or chromium is None:
        record(Case("cross-site page", "Chromium", "skipped", skip,
                    "--skip-browser" if skip else "chromium is not installed"))
        return
    from playwright.sync_api import sync_playwright
    from test_cross_site import attack_page, hostile_site

    def check() -> str:
        before = conversations(home)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=[
                "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
            with hostile_site(attack_page(url, model, evil)) as site:
                page = browser.new_page()
                seen: list = []
                page.on("response", lambda r: seen.append((r.url, r.status)))
                page.on("requestfailed", lambda r: seen.append((r.url, "failed")))
                page.goto(site)
                results = page.evaluate("window.attack()")
                page.wait_for_timeout(1000)
            own = browser.new_page()
            own.goto(url)
            own.wait_for_selector("#tdm-indicators :text('Ready')", timeout=120_000)
            status = own.locator("#tdm-indicators").inner_text()
            browser.close()
        to_app = [status for u, status in seen if u.startswith(url)]
        expect(to_app and all(s in (403, "failed") for s in to_app), f"answered: {to_app}")
        expect(not any(v.startswith("answered: 2") or "OPEN" in v for v in results.values()),
               f"the page read something: {results}")
        time.sleep(2)
        expect(conversations(home) == before, "a conversation was created")
        expect("evil" not in status, "the pair was changed")
        return (f"{len(results)} attempts, {len(to_app)} requests reached the app, all 403; "
                "the app's own page still ready")
    attempt("cross-site page", "Chromium on another loopback port", "refused", check)


def conversations(home: Path) -> int:
    with sqlite3.connect(home / "conversations.sqlite3") as db:
        return db.execute("SELECT COUNT(*) FROM conversations").fetchone()[0]


# ---- crashes while regenerating --------------------------------------------------------------
def crash_during_regenerate(url: str, proc, home: Path) -> tuple[str, list]:
    client = Client(url, verbose=False)
    title = "regenerate me: the quick brown fox"
    submit(client, title, max_tokens=48).result(timeout=300)
    before = thread_of(home, title)

    def worker_killed() -> str:
        job = client.submit(*REGENERATE.values(), api_name="/regenerate")
        wait_for_outputs(job, 3)
        for worker in worker_processes(proc.pid):
            worker.kill()
        job.result(timeout=120)
        expect(thread_of(home, title) == before, "the old reply changed")
        partial = alternatives_of_last(home, title)
        expect(len(partial) == 1 and partial[0]["content"], "the new reply's text is gone")
        return (f"nothing lost: old reply intact ({len(before[-1][1])} chars), new one kept "
                f"as an alternative ({len(partial[0]['content'])} chars)")
    attempt("crash while regenerating", "engine worker killed", "survived", worker_killed)

    job = client.submit(*REGENERATE.values(), api_name="/regenerate")
    wait_for_outputs(job, 3)
    seen = message_text(job.outputs()[-1][0][-1])
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return title, [before, seen]


def after_app_kill(home: Path, title: str, before, seen: str) -> None:
    def check() -> str:
        db = sqlite3.connect(home / "conversations.sqlite3")
        expect(db.execute("PRAGMA integrity_check").fetchone()[0] == "ok", "database damaged")
        expect(thread_of(home, title) == before, "the old reply changed")
        partials = alternatives_of_last(home, title)
        expect(any(m["content"].lstrip().startswith(seen.strip()) for m in partials),
               "the text the user saw is not stored")
        return (f"nothing lost: database ok, old reply intact, {len(partials)} unfinished "
                "replies kept with all the text the user saw")
    attempt("crash while regenerating", "app killed (SIGKILL)", "survived", check)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-browser", action="store_true")
    args = parser.parse_args(argv)
    folder = TMP / "files"
    folder.mkdir(parents=True)
    home = Path(os.environ["TANDEM_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    good = write_tiny_model(folder / "target.gguf")
    draft = write_tiny_model(folder / "draft.gguf", seed=5, noise_from=0, noise=0.03)
    evil = write_tiny_model(folder / "evil.gguf", seed=9)
    started = time.monotonic()
    engine = EngineClient()
    try:
        hostile_files(engine, folder, good)
        hostile_templates(engine, folder, good)
    finally:
        engine.close()
    injections_on_real_tokenizers()
    with running_app(home, good, draft) as (url, proc):
        foreign_origins(url, home, good)
        cross_site_page(url, home, good, evil, args.skip_browser)
        injection_through_app(url, home)
        title, (before, seen) = crash_during_regenerate(url, proc, home)
    after_app_kill(home, title, before, seen)
    with running_app(home, good, draft) as (url, _):
        def restarted() -> str:
            titles = Client(url, verbose=False).predict(api_name="/conversations")
            expect(title in titles and thread_of(home, title) == before, "conversation changed")
            return f"{len(titles)} conversations listed, the regenerated one as it was"
        attempt("crash while regenerating", "app restarted on the same data", "survived",
                restarted)
    failed = [case for case in RESULTS if not case.ok]
    refused = sum(case.outcome == "refused" for case in RESULTS)
    survived = sum(case.outcome == "survived" for case in RESULTS)
    skipped = sum(case.outcome == "skipped" for case in RESULTS)
    print(f"\n{len(RESULTS)} cases: {refused} refused, {survived} survived, {skipped} skipped; "
          f"{len(failed)} failed ({time.monotonic() - started:.0f} s)")
    shutil.rmtree(TMP, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
