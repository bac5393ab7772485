"""The one door between the UI (and the HTTP API) and the engine.

``EngineClient`` runs an ``engine.session.Session`` in a worker process (``engine.worker``, a
fresh interpreter, so llama.cpp loads before numpy whatever this process imported) and talks
to it only in the typed messages of ``engine.protocol``. Model files are managed here too
(listing, download, removal: pure Python, no model loaded); compatibility checks and memory
fit run in the worker. This process never imports ``llama_cpp``.

Every use of the worker waits its turn in one first-come-first-served line: the UI's replies,
the API's and the Models tab's checks alike. ``chat(..., bounded=True)`` (the HTTP API) is
refused with ``QueueFull`` when ``max_waiting`` requests already wait. Each reply is a
``EngineStream`` whose ``cancel`` stops that reply and no other, whether it is waiting in line
or running (then within one engine step).

A crash in the worker (a hostile model file, an out-of-memory kill) surfaces as a ``Failed``
event (``EngineCrashed``); the next call starts a fresh worker and reloads the last pair.

Not for: answering (``engine.session``), the worker's side (``engine.worker``).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing.connection import Listener
from pathlib import Path

from engine import protocol as p
from engine.errors import EngineCrashed, ModelInUse, ModelNotFound, QueueFull, TandemError

POLL_SECONDS = 0.25
START_SECONDS = 120  # a worker that has not connected by then is reported as crashed
DEFAULT_MAX_WAITING = 16
ROOT = Path(__file__).resolve().parent.parent


class _Worker:
    """The worker process (``python -m engine.worker``, a fresh interpreter whatever the
    parent imported) and its two authenticated connections: requests, and control (cancel)."""

    def __init__(self) -> None:
        key = secrets.token_bytes(32)
        listener = Listener(authkey=key)  # a Unix socket or a Windows named pipe
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            path for path in (str(ROOT), os.environ.get("PYTHONPATH", "")) if path))
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
        self._control_lock = threading.Lock()

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

    def is_alive(self) -> bool:
        return self.proc.poll() is None

    def cancel(self, request_id: int) -> None:
        try:
            with self._control_lock:
                self.control.send(p.Cancel(request_id))
        except (OSError, ValueError):
            pass

    def kill(self) -> None:
        if self.is_alive():
            self.proc.kill()
        self.proc.wait()


class _Line:
    """First come, first served: the head of the line holds the worker."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._tickets: deque[object] = deque()

    def join(self, limit: int | None = None) -> object:
        """A place in line; with ``limit``, refused (``None``) when that many already wait
        behind the one being served."""
        with self._cond:
            if limit is not None and len(self._tickets) > limit:
                return None
            ticket = object()
            self._tickets.append(ticket)
            return ticket

    def wait(self, ticket: object, cancelled: threading.Event | None = None) -> bool:
        """Block until ``ticket`` is at the head; False (and out of line) if cancelled first."""
        with self._cond:
            while self._tickets[0] is not ticket:
                if cancelled is not None and cancelled.is_set():
                    self._tickets.remove(ticket)
                    self._cond.notify_all()
                    return False
                self._cond.wait(0.1)
            return True

    def leave(self, ticket: object) -> None:
        with self._cond:
            if ticket in self._tickets:
                self._tickets.remove(ticket)
                self._cond.notify_all()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._tickets)


class EngineStream:
    """One reply: iterate for its events (``Started``, ``Chunk``s, then ``Done`` or
    ``Failed``); ``cancel()`` from any thread stops it. Iterate it or ``close()`` it: until
    then it holds its place in line."""

    def __init__(self, client: EngineClient, request: p.ChatRequest, ticket: object) -> None:
        self.id = next(client._ids)
        self.request = request
        self._client, self._ticket = client, ticket
        self._cancelled = threading.Event()
        self._in_flight = False
        self._used = False
        self._last: p.Event | None = None

    def cancel(self) -> None:
        self._cancelled.set()
        worker = self._client._proc
        if self._in_flight and worker is not None:
            worker.cancel(self.id)
        self._client._line.wake()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def close(self) -> None:
        """Give up the place in line if the reply never started."""
        if not self._used:
            self._used = True
            self._client._line.leave(self._ticket)

    def __del__(self) -> None:
        self.close()

    def __iter__(self) -> Iterator[p.Event]:
        if self._used:
            raise TandemError("a reply's events can be read once")
        self._used = True
        return self._events()

    def _events(self) -> Iterator[p.Event]:
        """The line is left before the last event is handed over, so a reader that stops at
        ``Done`` (as ``any()`` does) never holds the engine."""
        client, line = self._client, self._client._line
        asked = time.monotonic()
        last: p.Event | None = None
        try:
            if line.wait(self._ticket, self._cancelled):
                yield from self._run(asked)
                last = self._last
            else:
                last = p.Done("", "cancelled", "Cancelled before it started.", None, "")
        finally:
            worker = client._proc
            if self._in_flight and last is None and worker is not None:  # the reader went
                worker.cancel(self.id)  # away mid-reply: stop the engine, read what is left
                client._drain()
            self._in_flight = False
            line.leave(self._ticket)
        yield last

    def _run(self, asked: float) -> Iterator[p.Event]:
        """Send the request and hand over its events; the last one is kept in ``_last``."""
        client = self._client
        served = time.monotonic()
        try:
            client._ensure()
            client._conn.send(p.Envelope(self.id, self.request))
            self._in_flight = True
            if self._cancelled.is_set():  # cancelled while it was being sent
                client._proc.cancel(self.id)
            while True:
                event = client._receive()
                if isinstance(event, p.Started):
                    event = replace(event, queued_seconds=served - asked)
                if isinstance(event, (p.Done, p.Failed)):
                    self._last = event
                    return
                yield event
        except TandemError as error:  # the worker died, or could not be restarted
            self._last = p.Failed(p.Failure.of(error))
        finally:
            client._record(time.monotonic() - served)


class EngineClient:
    """The engine, seen from the UI and the API. ``max_waiting``: how many bounded requests
    may wait in line (default ``DEFAULT_MAX_WAITING``)."""

    def __init__(self, max_waiting: int | None = None) -> None:
        self._proc: _Worker | None = None
        self._conn = None
        self._line = _Line()
        self._ids = itertools.count(1)
        self.max_waiting = DEFAULT_MAX_WAITING if max_waiting is None else max_waiting
        self.last_load: p.LoadRequest | None = None
        self._loading: p.LoadRequest | None = None
        self.crashed = ""
        self._turn_seconds = 5.0  # recent time a turn takes (for Retry-After)

    # ---- process management ------------------------------------------------------------
    def _ensure(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        self._proc = _Worker()
        self._conn = self._proc.conn
        if self.last_load is not None and self.crashed:
            self.crashed = ""
            self._request(self.last_load)

    def _receive(self) -> object:
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

    def _request(self, request: p.Request) -> object:
        self._conn.send(p.Envelope(next(self._ids), request))
        reply = self._receive()
        if isinstance(reply, p.Failure):
            raise reply.error()
        return reply.value

    def _drain(self) -> None:
        try:
            while not isinstance(self._receive(), (p.Done, p.Failed)):
                pass
        except EngineCrashed:
            return

    def _record(self, seconds: float) -> None:
        self._turn_seconds = 0.7 * self._turn_seconds + 0.3 * seconds

    @contextmanager
    def _turn(self):
        ticket = self._line.join()
        try:
            self._line.wait(ticket)
            self._ensure()
            yield
        finally:
            self._line.leave(ticket)

    def _call(self, request: p.Request) -> object:
        with self._turn():
            return self._request(request)

    @property
    def worker_pid(self) -> int | None:
        worker = self._proc
        return worker.proc.pid if worker is not None and worker.is_alive() else None

    # ---- answering -----------------------------------------------------------------------
    def chat(self, request: p.ChatRequest, bounded: bool = False) -> EngineStream:
        """A reply, in line behind the requests already waiting. ``bounded``: refuse with
        ``QueueFull`` (and a Retry-After estimate) when ``max_waiting`` already wait."""
        ticket = self._line.join(self.max_waiting if bounded else None)
        if ticket is None:
            waiting = len(self._line)
            raise QueueFull(waiting, max(1, min(3600, math.ceil(self._turn_seconds * waiting))))
        return EngineStream(self, request, ticket)

    def waiting(self) -> int:
        """Requests in line, the one being served included."""
        return len(self._line)

    # ---- the loaded pair and the machine -------------------------------------------------
    def load(self, request: p.LoadRequest) -> p.EngineInfo:
        self._loading = request
        try:
            info = self._call(request)
        finally:
            self._loading = None
        self.last_load = request
        return info

    @property
    def current(self) -> p.LoadRequest | None:
        """The pair being loaded, else the pair loaded last (known without asking the
        worker, so it never waits in line)."""
        return self._loading or self.last_load

    def reload(self) -> p.EngineInfo:
        if self.last_load is None:
            raise TandemError("No model pair was loaded yet.")
        return self.load(self.last_load)

    def info(self) -> p.EngineInfo | None:
        return self._call(p.InfoRequest())

    def recalibrate(self) -> p.EngineInfo:
        return self._call(p.RecalibrateRequest())

    def hardware(self) -> p.Hardware:
        return self._call(p.HardwareRequest())

    def pair_report(self, target: str, draft: str | None, n_ctx: int = 4096) -> p.PairReport:
        """Compatibility (vocabularies only) and memory fit, before loading anything."""
        return self._call(p.PairRequest(target, draft, n_ctx))

    def recommend(self, target: str) -> p.Recommendation:
        """Score every installed draft for ``target`` (unloads the pair; reload after)."""
        return self._call(p.RecommendRequest(target))

    # ---- model files (no worker needed, except to validate a file added by path) ---------
    def add_local(self, path: str) -> str:
        """Validate a GGUF in the worker (a hostile file cannot hurt this process) and add it;
        returns its id."""
        return self._call(p.AddLocalRequest(str(path)))

    @staticmethod
    def known_models() -> list[p.ModelRow]:
        """Every model Tandem knows: a directory listing."""
        from engine import models

        return [p.ModelRow(m.id, m.family, m.params, m.size, m.installed, m.source,
                           str(m.path) if m.path else None, m.verified, m.note,
                           not m.id.startswith(models.LOCAL_PREFIX))
                for m in models.known_models()]

    @staticmethod
    def download(model_id: str, progress: Callable[[int, int], None] | None = None,
                 cancel: threading.Event | None = None) -> None:
        """Fetch a catalog model, checked against its trusted SHA-256; ``progress(done,
        total)``; ``cancel`` stops it and keeps nothing partial."""
        from engine import catalog, models

        entry = catalog.by_id(model_id)
        if entry is None:
            raise ModelNotFound(model_id)
        models.fetch(entry, (lambda done, total, _: progress(done, total or entry.size))
                     if progress else None, cancel)

    def remove(self, model_id: str) -> None:
        """Delete a downloaded model (or forget a file added by path); refuses a model of the
        loaded pair."""
        from engine import models

        if self.last_load is not None and model_id in (self.last_load.target,
                                                        self.last_load.draft):
            raise ModelInUse(model_id)
        models.remove(model_id)

    def close(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            try:
                self._conn.send(p.Envelope(0, p.StopRequest()))
                self._proc.proc.wait(timeout=5)
            except Exception:
                pass
            self._proc.kill()
        self._proc = None
