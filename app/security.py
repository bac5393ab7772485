"""The web server's lock: which hosts may talk to it and which GRADIO_* settings are ignored.

Tandem serves one person on one computer. A page on another site can still reach 127.0.0.1
through DNS rebinding (its own domain re-pointed at loopback), so every request must name this
computer in its Host header (the fix Ollama shipped for CVE-2024-28224). Not for: CORS (Gradio's
strict_cors) or authentication (there is none; the server is loopback-only).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


def scrub_gradio_environment() -> list[str]:
    """Drop every GRADIO_* variable (share, server name, allowed paths, MCP, root path …) so
    nothing outside the code can open the server up; returns the names removed."""
    removed = [name for name in os.environ if name.startswith("GRADIO_")]
    for name in removed:
        del os.environ[name]
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    return removed


def host_name(host_header: str) -> str:
    """The host part of a Host header: 'localhost:7860' -> 'localhost', '[::1]:80' -> '::1'."""
    value = host_header.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def is_allowed_host(host_header: str, extra: Iterable[str] = ()) -> bool:
    name = host_name(host_header)
    if name in LOOPBACK_NAMES or name in {h.lower() for h in extra}:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostAllowList:
    """ASGI middleware: answer 403 to any HTTP or WebSocket request whose Host is not this
    computer (or a host the user explicitly allowed with --allow-remote)."""

    def __init__(self, app: ASGIApp, extra_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.extra_hosts = tuple(extra_hosts)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            host = headers.get(b"host", b"").decode("latin-1")
            if not is_allowed_host(host, self.extra_hosts):
                await _refuse(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _refuse(scope: Scope, receive: Callable, send: Callable) -> None:
    if scope["type"] == "websocket":
        await receive()  # the connect message
        await send({"type": "websocket.close", "code": 1008})
        return
    body = b"Tandem only answers requests addressed to localhost / 127.0.0.1."
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
