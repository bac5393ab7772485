"""The web server is locked down: launched for real (tiny models), then probed over HTTP the way
a hostile web page or a hostile environment would try it: DNS-rebinding Host headers (on every
bind address, 0.0.0.0 included), foreign Origins on every kind of endpoint (pages, reads, the
Gradio API, the queue, websockets), GRADIO_* overrides, the data directory, uploads."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from urllib.parse import urlparse

import psutil
from app_process import ROOT, free_port, running_app

from app.security import host_name, is_allowed_host, is_allowed_origin

HOSTILE_ENV = {"GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SHARE": "True",
               "GRADIO_MCP_SERVER": "True", "GRADIO_ROOT_PATH": "/elsewhere"}


def request(url: str, path: str, headers: dict[str, str] | None = None, method: str = "GET",
            body: bytes | None = None) -> http.client.HTTPResponse:
    parsed = urlparse(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    response.read()
    return response


def non_loopback_ipv4() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


def test_host_header_parsing():
    assert host_name("localhost:7860") == "localhost"
    assert host_name("[::1]:7860") == "::1"
    assert host_name("127.0.0.1") == "127.0.0.1"
    assert is_allowed_host("127.0.0.5:80") and is_allowed_host("LOCALHOST:1")
    assert not is_allowed_host("evil.example:7860")
    assert not is_allowed_host("localhost.evil.example")
    assert not is_allowed_host("")


def test_server_refuses_rebinding_hosts_env_overrides_and_data_paths(tiny_dir, isolated_home):
    model = tiny_dir / "target.gguf"
    # ask for every dangerous thing through the environment and a model directory to serve
    hostile = {**HOSTILE_ENV, "GRADIO_ALLOWED_PATHS": str(isolated_home)}
    with running_app(isolated_home, model, None, extra_env=hostile) as (url, _):
        assert request(url, "/").status == 200
        assert request(url, "/", {"Host": "localhost"}).status == 200

        # DNS rebinding: the browser sends the attacker's name as Host
        for path in ("/", "/gradio_api/info", "/config"):
            response = request(url, path, {"Host": "rebind.evil.example"})
            assert response.status == 403, path

        # strict CORS: a foreign origin is not echoed back
        response = request(url, "/gradio_api/info", {"Origin": "http://evil.example"})
        assert response.getheader("access-control-allow-origin") != "http://evil.example"

        # GRADIO_SERVER_NAME=0.0.0.0 was ignored: other interfaces are not listening
        address = non_loopback_ipv4()
        if address is not None:
            with socket.socket() as probe:
                probe.settimeout(2)
                assert probe.connect_ex((address, urlparse(url).port)) != 0

        # the data directory (conversations, models) is not served even when asked for
        db = isolated_home / "conversations.sqlite3"
        assert db.exists()
        for path in (f"/gradio_api/file={db}", f"/file={db}", f"/gradio_api/file={model}"):
            assert request(url, path).status in (403, 404), path

        # no MCP server, and uploads are capped (the UI has none: models are added by path)
        assert request(url, "/gradio_api/mcp/sse").status == 404
        boundary = "tandemboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; "
                f"filename=\"big.gguf\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                ).encode() + b"\0" * (1024 * 1024) + f"\r\n--{boundary}--\r\n".encode()
        response = request(url, "/gradio_api/upload", {
            "Content-Type": f"multipart/form-data; boundary={boundary}"}, "POST", body)
        assert response.status in (400, 413), response.status


def test_origin_parsing():
    assert is_allowed_origin("http://127.0.0.1:7860", 7860)
    assert is_allowed_origin("http://localhost:7860", 7860)
    assert is_allowed_origin("http://[::1]:7860", 7860)
    for foreign in ("http://127.0.0.1:8000", "http://localhost:7861", "https://127.0.0.1:7860",
                    "http://evil.example:7860", "http://localhost.evil.example:7860", "null",
                    "", "http://127.0.0.1", "http://127.0.0.1:7860/path", "file://"):
        assert not is_allowed_origin(foreign, 7860), foreign


def state_changing_requests(model: str) -> list[tuple[str, str, bytes | None, str]]:
    """(method, path, body, content type): every kind of request a hostile page could send."""
    call = json.dumps({"data": [model]}).encode()
    join = json.dumps({"data": [model], "fn_index": 14, "trigger_id": 54,
                       "session_hash": "cross-site", "event_data": None}).encode()
    return [("GET", "/", None, ""), ("GET", "/config", None, ""),
            ("GET", "/gradio_api/info", None, ""),
            ("POST", "/gradio_api/call/conversations", b'{"data": []}', "application/json"),
            ("POST", "/gradio_api/call/add_local", call, "application/json"),
            ("POST", "/gradio_api/call/add_local", call, "text/plain"),
            ("POST", "/gradio_api/call/load_pair", json.dumps({"data": [model, "none"]}).encode(),
             "application/json"),
            ("POST", "/gradio_api/queue/join", join, "application/json"),
            ("POST", "/gradio_api/queue/join", join, "text/plain"),
            ("GET", "/gradio_api/queue/data?session_hash=cross-site", None, ""),
            ("OPTIONS", "/gradio_api/call/add_local", None, ""),
            ("POST", "/gradio_api/upload", b"x", "multipart/form-data; boundary=b")]


def websocket_status(url: str, origin: str) -> int:
    parsed = urlparse(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=30) as sock:
        sock.sendall((f"GET /gradio_api/queue/join HTTP/1.1\r\nHost: 127.0.0.1:{parsed.port}\r\n"
                      "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      f"Sec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n\r\n").encode())
        return int(sock.recv(200).split(b" ")[1])


def test_foreign_origins_are_refused_on_every_endpoint(tiny_dir, isolated_home):
    model = str(tiny_dir / "target.gguf")
    with running_app(isolated_home, tiny_dir / "target.gguf", None) as (url, _):
        port = urlparse(url).port
        own = {"Origin": f"http://127.0.0.1:{port}"}
        assert request(url, "/", own).status == 200
        assert request(url, "/gradio_api/info", {"Origin": f"http://localhost:{port}"}
                       ).status == 200
        foreign = ("http://evil.example", f"http://127.0.0.1:{free_port()}",
                   f"http://localhost:{port + 1}", "null", f"https://127.0.0.1:{port}")
        for origin in foreign:
            for method, path, body, ctype in state_changing_requests(model):
                headers = {"Origin": origin, **({"Content-Type": ctype} if ctype else {})}
                if method == "OPTIONS":  # a CORS preflight, as a browser sends it
                    headers |= {"Access-Control-Request-Method": "POST",
                                "Access-Control-Request-Headers": "content-type"}
                response = request(url, path, headers, method, body)
                assert response.status == 403, (origin, method, path, response.status)
            assert websocket_status(url, origin) == 403, origin
        # requests without an Origin that a page can still make (<script>, <img>, frames)
        for dest in ("script", "image", "iframe", "empty"):
            response = request(url, "/gradio_api/info", {
                "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors",
                "Sec-Fetch-Dest": dest})
            assert response.status == 403, dest
        # a link from another site to the app still opens it; the app's own page is let in
        assert request(url, "/", {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
                                  "Sec-Fetch-Dest": "document"}).status == 200
        assert request(url, "/gradio_api/info", {**own, "Sec-Fetch-Site": "same-origin",
                                                 "Sec-Fetch-Mode": "cors"}).status == 200
        time.sleep(1.0)  # a request that got through would have been processed by now
        assert not (isolated_home / "local_models.json").exists()
        # the app itself still works for its own origin
        response = request(url, "/gradio_api/call/conversations", {
            **own, "Content-Type": "application/json"}, "POST", b'{"data": []}')
        assert response.status == 200


@contextmanager
def app_bound_to(home, model, host: str):
    """The app launched with ``--host`` (running_app always binds 127.0.0.1)."""
    port = free_port()
    env = dict(os.environ, TANDEM_HOME=str(home), GRADIO_ANALYTICS_ENABLED="False")
    log = open(home.parent / f"app-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "app", "--host", host, "--port", str(port),
                             "--no-browser", "--target", str(model), "--draft", "none"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "app did not start"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def test_host_check_applies_on_a_wildcard_bind(tiny_dir, isolated_home):
    with app_bound_to(isolated_home, tiny_dir / "target.gguf", "0.0.0.0") as url:
        assert request(url, "/").status == 200
        for path in ("/", "/gradio_api/info", "/config"):
            assert request(url, path, {"Host": "rebind.evil.example"}).status == 403, path
        address = non_loopback_ipv4()
        if address is not None:  # the machine's own address is how a remote user reaches it
            port = urlparse(url).port
            assert request(url, "/", {"Host": f"{address}:{port}"}).status == 200
            assert request(url, "/", {"Host": f"{address}:{port}",
                                      "Origin": "http://evil.example"}).status == 403
