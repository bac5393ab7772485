"""The one door between the UI and the engine.

``EngineClient`` runs an ``engine.session.Session`` in a worker process and talks to it with
plain data: requests are dicts, replies are dicts, a chat streams event dicts. A crash in the
worker (a hostile model file, an out-of-memory kill) surfaces as an error event with a clear
message; the next call starts a fresh worker and reloads the last model pair.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import traceback
from collections.abc import Iterator
from dataclasses import asdict

from engine.errors import EngineCrashed, TandemError

POLL_SECONDS = 0.25


def _worker(conn, cancel) -> None:
    from engine import compat, hardware, models, recommend
    from engine.session import ChatRequest, LoadRequest, Session

    session = Session()
    while True:
        try:
            op, payload = conn.recv()
        except (EOFError, OSError):
            return
        try:
            if op == "chat":
                cancel.clear()
                for event in session.chat(ChatRequest(**payload), cancel):
                    conn.send(event)
                continue
            if op == "load":
                result = session.load(LoadRequest(**payload))
            elif op == "info":
                result = session.info()
            elif op == "recalibrate":
                result = session.recalibrate()
            elif op == "hardware":
                result = hardware.describe()
            elif op == "compat":
                c = compat.analyse_files(models.resolve(payload["target"]),
                                         models.resolve(payload["draft"]))
                result = {**asdict(c), "label": c.label()}
            elif op == "recommend":
                session.close()  # scoring loads each candidate; one model pair at a time
                result = recommend.recommend(payload["target"])
            elif op == "fit":
                result = _fit(payload["models"], payload.get("n_ctx", 4096))
            elif op == "add_local":
                result = models.add_local(payload["path"])
            elif op == "stop":
                session.close()
                conn.send({"type": "result", "value": None})
                return
            else:
                raise TandemError(f"unknown request '{op}'")
            conn.send({"type": "result", "value": result})
        except TandemError as error:
            conn.send({"type": "error", "message": str(error)})
        except Exception as error:  # a bug: report it rather than die silently
            conn.send({"type": "error", "message": f"{type(error).__name__}: {error}",
                       "trace": traceback.format_exc()})


def _fit(model_ids: list[str], n_ctx: int) -> dict:
    from engine import catalog, hardware, models
    from engine.errors import NotInstalled

    files, not_downloaded = [], 0
    for model_id in model_ids:
        try:
            files.append(models.resolve(model_id))
        except NotInstalled:
            not_downloaded += catalog.by_id(model_id).size
    return hardware.fit_report(files, n_ctx, not_downloaded)


class EngineClient:
    def __init__(self) -> None:
        self._ctx = mp.get_context("spawn")
        self._proc = None
        self._conn = None
        self._cancel = self._ctx.Event()
        self._lock = threading.Lock()
        self.last_load: dict | None = None
        self.crashed = ""

    # ---- process management ------------------------------------------------------------
    def _ensure(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_worker, args=(child, self._cancel), daemon=True,
                                       name="tandem-engine")
        self._proc.start()
        self._conn = parent
        if self.last_load is not None and self.crashed:
            self.crashed = ""
            self._request("load", self.last_load)

    def _receive(self) -> dict:
        while True:
            if self._conn.poll(POLL_SECONDS):
                try:
                    return self._conn.recv()
                except (EOFError, OSError):
                    pass
            if not self._proc.is_alive():
                code = self._proc.exitcode
                self._proc = None
                self.crashed = f"exit code {code}"
                raise EngineCrashed(self.crashed)

    def _request(self, op: str, payload: dict | None = None):
        self._conn.send((op, payload or {}))
        reply = self._receive()
        if reply["type"] == "error":
            raise TandemError(reply["message"])
        return reply["value"]

    def call(self, op: str, payload: dict | None = None):
        with self._lock:
            self._ensure()
            return self._request(op, payload)

    # ---- the API the UI uses -----------------------------------------------------------
    def load(self, target: str, draft: str | None, **options) -> dict:
        payload = {"target": target, "draft": draft, **options}
        result = self.call("load", payload)
        self.last_load = payload
        return result

    def reload(self) -> dict:
        if self.last_load is None:
            raise TandemError("No model pair was loaded yet.")
        return self.load(**self.last_load)

    def chat(self, request: dict) -> Iterator[dict]:
        """Stream event dicts; the last one is "done" or "error". Holds the engine meanwhile
        (one reply at a time)."""
        with self._lock:
            final = False
            try:
                self._ensure()
                self._conn.send(("chat", request))
                while not final:
                    event = self._receive()
                    final = event["type"] in ("done", "error")
                    yield event
            except EngineCrashed as error:
                yield {"type": "error", "message": str(error), "crashed": True}
            except GeneratorExit:
                if not final:  # the consumer went away mid-reply: stop the engine, drain
                    self._cancel.set()
                    self._drain()
                raise

    def _drain(self) -> None:
        try:
            while True:
                event = self._receive()
                if event["type"] in ("done", "error"):
                    return
        except EngineCrashed:
            return

    @staticmethod
    def known_models() -> list[dict]:
        """Every model Tandem knows (a directory listing: no worker needed)."""
        from engine import models

        return [{**asdict(m), "path": str(m.path) if m.path else None}
                for m in models.known_models()]

    def cancel(self) -> None:
        """Stop the reply in flight after the current engine step."""
        self._cancel.set()

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                with self._lock:
                    self._request("stop")
            except Exception:
                pass
            self._proc.join(timeout=5)
            if self._proc.is_alive():
                self._proc.kill()
        self._proc = None
