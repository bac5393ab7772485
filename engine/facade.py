"""The one door between the UI and the engine.

``EngineClient`` runs an ``engine.session.Session`` in a worker process (``engine.worker``, a
fresh interpreter, so llama.cpp loads before numpy whatever this process imported) and talks
to it with plain data: requests are dicts, replies are dicts, a chat streams event dicts. A
crash in the worker (a hostile model file, an out-of-memory kill) surfaces as an error event
with a clear message; the next call starts a fresh worker and reloads the last model pair.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from multiprocessing.connection import Listener
from pathlib import Path

from engine.errors import EngineCrashed, TandemError

POLL_SECONDS = 0.25
START_SECONDS = 120  # a worker that has not connected by then is reported as crashed
ROOT = Path(__file__).resolve().parent.parent


class _Worker:
    """The worker process (``python -m engine.worker``, a fresh interpreter whatever the
    parent imported) and its two authenticated connections: requests, and control (cancel)."""

    def __init__(self) -> None:
        key = secrets.token_bytes(32)
        listener = Listener(authkey=key)  # a Unix socket or a Windows named pipe
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
        self.proc = subprocess.Popen([sys.executable, "-m", "engine.worker"],
                                     stdin=subprocess.PIPE, env=env)
        try:
            self.proc.stdin.write((json.dumps({"address": listener.address,
                                               "authkey": key.hex()}) + "\n").encode())
            self.proc.stdin.close()
            self.conn = self._accept(listener)
            self.control = self._accept(listener)
        except BaseException:
            self.kill()
            raise
        finally:
            listener.close()

    def _accept(self, listener: Listener):
        accepted: list = []
        thread = threading.Thread(target=lambda: accepted.append(listener.accept()),
                                  daemon=True)
        thread.start()
        deadline = time.monotonic() + START_SECONDS
        while thread.is_alive():
            thread.join(0.05)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise EngineCrashed(f"the worker did not start, exit code {self.proc.poll()}")
        if not accepted:
            raise EngineCrashed("the worker did not connect")
        return accepted[0]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def cancel(self) -> None:
        try:
            self.control.send("cancel")
        except (OSError, ValueError):
            pass

    def kill(self) -> None:
        if self.is_alive():
            self.proc.kill()
        self.proc.wait()


class EngineClient:
    def __init__(self) -> None:
        self._proc: _Worker | None = None
        self._conn = None
        self._lock = threading.Lock()
        self.last_load: dict | None = None
        self.crashed = ""

    # ---- process management ------------------------------------------------------------
    def _ensure(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        self._proc = _Worker()
        self._conn = self._proc.conn
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
                code = self._proc.proc.returncode
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
                    self.cancel()
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
        worker = self._proc
        if worker is not None:
            worker.cancel()

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                with self._lock:
                    self._request("stop")
                self._proc.proc.wait(timeout=5)
            except Exception:
                pass
            self._proc.kill()
        self._proc = None
