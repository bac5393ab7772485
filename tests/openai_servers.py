"""OpenAI-compatible servers on loopback for the server-backend tests: llama-cpp-python's own
``python -m llama_cpp.server`` (a real third-party server) with a tiny model, and small
misbehaving servers (silent, garbage, cut short) built on ``http.server``."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from app_process import free_port

MODELS = json.dumps({"object": "list", "data": [{"id": "tiny", "object": "model"}]}).encode()


@contextmanager
def llama_cpp_server(model: Path, log: Path):
    """``python -m llama_cpp.server`` serving ``model`` as "tiny"; yields its /v1 URL."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias",
             "tiny", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096",
             "--n_threads", "1"], stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/v1"
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
                try:
                    if httpx.get(url + "/models", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("llama_cpp.server did not start")
                time.sleep(0.3)
            yield url, proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


@contextmanager
def misbehaving_server(kind: str):
    """A server that lists a model but answers chats badly: "silent" (never answers),
    "html" (a web page), "not-json" (events that are not JSON), "cut" (a stream that stops
    before it says it finished), "error" (HTTP 500 with an OpenAI-shaped error), "drip" (a
    slow stream: one word every 50 ms for half a minute). ``seen["closed"]`` is set when a
    dripping reply's client went away."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self._send(200, "application/json", MODELS)

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if kind == "silent":
                time.sleep(30)
                return
            if kind == "drip":
                self._drip()
                return
            if kind == "html":
                self._send(200, "text/html", b"<html><body>Welcome to nginx!</body></html>")
            elif kind == "error":
                self._send(500, "application/json", json.dumps(
                    {"error": {"message": "CUDA out of memory", "type": "server_error"}}).encode())
            else:
                chunk = {"choices": [{"index": 0, "delta": {"content": "partial text"}}]}
                lines = [f"data: {json.dumps(chunk)}\n\n"]
                lines += ["data: {this is not json\n\n"] if kind == "not-json" else []
                self._send(200, "text/event-stream", "".join(lines).encode())

        def _drip(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            chunk = {"choices": [{"index": 0, "delta": {"content": "word "}}]}
            try:
                for _ in range(600):
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                seen["closed"] = True

        def _send(self, status: int, kind_: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind_)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    seen: dict[str, bool] = {}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()
