"""The engine worker process: one ``engine.session.Session`` serving the typed requests of
``engine.facade.EngineClient`` (``engine.protocol``) over a pipe.

Requests arrive as ``Envelope``s; a chat answers with ``Started``, ``Chunk``s and a final
``Done`` or ``Failed``; anything else with one ``Result`` or ``Failure``. The session speaks
plain dicts; this module is where they become the protocol's dataclasses. A second
connection carries ``Cancel(id)``, which stops that reply (and no other) after the current
step, even when it arrives before the reply started; when it closes, the parent is gone and
the worker exits at once.

``serve`` loads llama.cpp's shared libraries before anything imports numpy: on CUDA builds a
process that imports numpy first crashes inside llama.cpp's model load (measured on an H100;
see README). This module imports nothing at the top that pulls in numpy, so the parent (the
UI process) can name ``serve`` without loading llama.cpp, and the spawned child's first import
of note is llama.cpp's.

Not for: the request API (``engine.facade``) or answering (``engine.session``).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import asdict

from engine import protocol as p

NATIVE_FIRST = "numpy" not in sys.modules  # read before anything below can import numpy


class Cancels:
    """Which reply is running and which were cancelled (a cancel may overtake its reply)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._lock = threading.Lock()
        self._current: int | None = None
        self._cancelled: deque[int] = deque(maxlen=256)

    def begin(self, request_id: int) -> None:
        with self._lock:
            self._current = request_id
            self.event.clear()
            if request_id in self._cancelled:
                self.event.set()

    def end(self) -> None:
        with self._lock:
            self._current = None

    def cancel(self, request_id: int) -> None:
        with self._lock:
            self._cancelled.append(request_id)
            if request_id == self._current:
                self.event.set()


def main() -> None:
    """``python -m engine.worker``: read the address and key of the parent's listener from
    stdin, connect twice (requests, control) and serve until the parent goes away."""
    from multiprocessing.connection import Client

    hello = json.loads(sys.stdin.readline())
    key = bytes.fromhex(hello["authkey"])
    conn = Client(hello["address"], authkey=key)
    control = Client(hello["address"], authkey=key)
    cancels = Cancels()
    threading.Thread(target=_listen, args=(control, cancels), daemon=True).start()
    serve(conn, cancels)


def _listen(control, cancels: Cancels) -> None:
    while True:
        try:
            message = control.recv()
        except (EOFError, OSError):
            # the parent is gone (closed, killed): leave now, not when the work in hand (a
            # model load and its calibration, seconds of both cores) next tries to answer
            os._exit(0)
        if isinstance(message, p.Cancel):
            cancels.cancel(message.id)


def serve(conn, cancels: Cancels) -> None:
    import llama_cpp  # noqa: F401  (before numpy: see the module docstring)

    from engine.session import Session

    session = Session()
    while True:
        try:
            envelope = conn.recv()
        except (EOFError, OSError):
            return
        request = envelope.request
        if isinstance(request, p.ChatRequest):
            cancels.begin(envelope.id)
            try:
                _chat(session, request, cancels.event, conn.send)
            finally:
                cancels.end()
            continue
        if isinstance(request, p.StopRequest):
            session.close()
            conn.send(p.Result(None))
            return
        try:
            conn.send(p.Result(_answer(session, request)))
        except Exception as error:  # TandemError: for the user; anything else: a bug
            conn.send(_failure(error))


def _failure(error: BaseException) -> p.Failure:
    failure = p.Failure.of(error)
    if failure.kind == "InternalError":  # a bug: keep where it happened
        print(traceback.format_exc(), file=sys.stderr, flush=True)
    return failure


def _answer(session, request: p.Request) -> object:
    from engine import hardware, models, recommend
    from engine import session as sessions
    from engine.errors import TandemError

    if isinstance(request, p.LoadRequest):
        session.load(sessions.LoadRequest(**asdict(request)))
        return engine_info(session.info())
    if isinstance(request, p.InfoRequest):
        return engine_info(session.info())
    if isinstance(request, p.RecalibrateRequest):
        return engine_info(session.recalibrate())
    if isinstance(request, p.HardwareRequest):
        return p.Hardware(**hardware.describe())
    if isinstance(request, p.PairRequest):
        return _pair(request)
    if isinstance(request, p.RecommendRequest):
        session.close()  # scoring loads each candidate; one model pair at a time
        result = recommend.recommend(request.target)
        return p.Recommendation(result["target"], tuple(p.DraftCandidate(**c)
                                                        for c in result["candidates"]),
                                result["recommended"], result["reason"])
    if isinstance(request, p.AddLocalRequest):
        return models.add_local(request.path)
    raise TandemError(f"unknown request {type(request).__name__}")


def _chat(session, request: p.ChatRequest, cancel: threading.Event,
          send: Callable[[object], None]) -> None:
    from engine import session as sessions
    from engine.errors import ContextTooLong, ModelSwitched, NoModelLoaded
    from engine.prompting import prompt_tokens

    try:
        if session.target is None or session.loaded is None:
            raise NoModelLoaded()
        if request.target is not None and request.target != session.loaded.target:
            raise ModelSwitched(request.target, session.loaded.target)
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        n_prompt, n_ctx = len(prompt_tokens(session.target, messages)), session.target.n_ctx
        if n_prompt >= n_ctx:  # no room for a single token of reply
            raise ContextTooLong(n_prompt, n_ctx)
        send(p.Started(n_prompt, n_ctx))
        chat = sessions.ChatRequest(
            messages, max_tokens=request.max_tokens, temperature=request.temperature,
            top_p=request.top_p, top_k=request.top_k, seed=request.seed, mode=request.mode,
            window=request.window, drafter=request.drafter, stop=list(request.stop))
        for event in session.chat(chat, cancel):
            send(_event(event, n_prompt))
    except Exception as error:
        send(p.Failed(_failure(error)))


def _event(event: dict, n_prompt: int) -> p.Event:
    """A session event dict -> the protocol's event."""
    from engine.errors import NoModelLoaded
    from engine.stats import MessageStats

    stats = MessageStats.from_dict(event["stats"]) if event.get("stats") else None
    if event["type"] == "chunk":
        return p.Chunk(tuple((str(text), str(origin)) for text, origin in event["pieces"]),
                       stats)
    if event["type"] == "done":
        return p.Done(event["text"], event["reason"], event.get("message") or "", stats,
                      event.get("summary") or "", event.get("category") or "", n_prompt)
    if event.get("message") == "No model is loaded.":
        return p.Failed(p.Failure.of(NoModelLoaded()))
    return p.Failed(p.Failure("TandemError", str(event.get("message"))))


def engine_info(info: dict) -> p.EngineInfo | None:
    """``Session.info()`` -> ``EngineInfo`` (None when nothing is loaded)."""
    if not info.get("loaded"):
        return None
    shape, cal, compat = info.get("numerics"), info.get("calibration"), info.get("compatibility")
    numerics = None if not shape else p.NumericsInfo(
        shape["mode"], shape["label"], int(shape["plain_rows"]), tuple(shape["pieces"]),
        float(shape["rounding"]))
    calibration = None
    if cal:
        probe = cal.get("probe")
        calibration = p.CalibrationInfo(
            tuple(float(s) for s in cal["target_seconds"]),
            {str(k): float(v) for k, v in cal["draft_token_seconds"].items()},
            float(cal["plain_tok_per_s"]), float(cal["step_overhead"]),
            {int(k): float(v) for k, v in cal["seen_seconds"].items()},
            {str(k): float(v) for k, v in cal["ceilings"].items()},
            None if not probe else p.ProbeInfo(
                tuple(tuple(int(n) for n in c) for c in probe["classes"]),
                {int(k): float(v) for k, v in probe["seconds"].items()},
                float(probe["max_difference"])))
    return p.EngineInfo(
        target=str(info["target"]), draft=info.get("draft"), target_path=info["target_path"],
        compatibility=compat["label"] if compat else None,
        compatibility_kind=compat["kind"] if compat else None, n_ctx=int(info["n_ctx"]),
        threads=int(info["threads"]), gpu_layers=int(info["gpu_layers"]), numerics=numerics,
        calibration=calibration, native_libraries_first=NATIVE_FIRST,
        suffix_memory=(int(memory["used"]), int(memory["limit"]))
        if (memory := info.get("suffix_memory")) else None)


def _pair(request: p.PairRequest) -> p.PairReport:
    from engine import compat, models
    from engine.errors import TandemError

    label, compat_error, small = None, "", None
    if request.draft:
        try:
            label = compat.analyse_files(models.resolve(request.target),
                                         models.resolve(request.draft)).label()
        except TandemError as error:
            compat_error = str(error)
        sizes = _sizes([request.target, request.draft])
        if sizes[0] and sizes[1]:
            small = compat.small_enough_to_draft(sizes[1], sizes[0])
    fit, fit_error = None, ""
    try:
        fit = _fit([m for m in (request.target, request.draft) if m], request.n_ctx)
    except TandemError as error:
        fit_error = str(error)
    return p.PairReport(label, compat_error, small, fit, fit_error)


def _sizes(model_ids: list[str]) -> list[int]:
    """File sizes (catalog sizes for models not downloaded; 0 when unknown)."""
    from engine import catalog, models
    from engine.errors import TandemError

    out = []
    for model_id in model_ids:
        try:
            out.append(models.resolve(model_id).stat().st_size)
        except (TandemError, OSError):
            entry = catalog.by_id(model_id)
            out.append(entry.size if entry else 0)
    return out


def _fit(model_ids: list[str], n_ctx: int) -> p.FitReport:
    from engine import catalog, hardware, models
    from engine.errors import NotInstalled

    files, not_downloaded = [], 0
    for model_id in model_ids:
        try:
            files.append(models.resolve(model_id))
        except NotInstalled:
            not_downloaded += catalog.by_id(model_id).size
    return p.FitReport(**hardware.fit_report(files, n_ctx, not_downloaded))


if __name__ == "__main__":
    main()
