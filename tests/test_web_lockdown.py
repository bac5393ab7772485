"""The web server is locked down: launched for real (tiny models), then probed over HTTP the way
a hostile web page or a hostile environment would try it."""

from __future__ import annotations

import http.client
import socket
from urllib.parse import urlparse

import psutil
from app_process import running_app

from app.security import host_name, is_allowed_host

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
