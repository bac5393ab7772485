"""The engine worker process: one ``engine.session.Session`` serving requests from
``engine.facade.EngineClient`` over a pipe.

``serve`` loads llama.cpp's shared libraries before anything imports numpy: on CUDA builds a
process that imports numpy first crashes inside llama.cpp's model load (measured on an H100;
see README). This module imports nothing at the top that pulls in numpy, so the parent (the
UI process) can name ``serve`` without loading llama.cpp, and the spawned child's first import
of note is llama.cpp's.

Not for: the request API (``engine.facade``) or answering (``engine.session``).
"""

from __future__ import annotations

import json
import sys
import threading
import traceback
from dataclasses import asdict
from multiprocessing.connection import Client

NATIVE_FIRST = "numpy" not in sys.modules  # read before anything below can import numpy


def main() -> None:
    """``python -m engine.worker``: read the address and key of the parent's listener from
    stdin, connect twice (requests, control) and serve until the parent goes away."""
    hello = json.loads(sys.stdin.readline())
    key = bytes.fromhex(hello["authkey"])
    conn = Client(hello["address"], authkey=key)
    control = Client(hello["address"], authkey=key)
    cancel = threading.Event()
    threading.Thread(target=_listen, args=(control, cancel), daemon=True).start()
    serve(conn, cancel)


def _listen(control, cancel: threading.Event) -> None:
    while True:
        try:
            if control.recv() == "cancel":
                cancel.set()
        except (EOFError, OSError):
            return


def serve(conn, cancel: threading.Event) -> None:
    import llama_cpp  # noqa: F401  (before numpy: see the module docstring)

    from engine import compat, hardware, models, recommend
    from engine.errors import TandemError
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
                result = {**session.info(), "native_libraries_first": NATIVE_FIRST}
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


if __name__ == "__main__":
    main()
