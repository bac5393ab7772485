"""The web server's lock: which hosts and origins may talk to it, and which GRADIO_* settings
are ignored.

Tandem serves one person on one computer, yet any web page the browser opens can send requests
to 127.0.0.1. Two checks run before anything else sees a request (HTTP and WebSocket alike,
pages, reads and the Gradio API), so no input is parsed for a refused one:

- Host: every request must name this computer in its Host header, on every bind address
  (0.0.0.0 included), which defeats DNS rebinding (the fix Ollama shipped for CVE-2024-28224);
- Origin: a request that carries an ``Origin`` header (browsers send it on cross-origin
  requests, every POST and every WebSocket) must come from the app's own origin — http, a
  loopback name or an allowed host, and the server's own port. Another site, or another
  program's page on another loopback port, gets 403, as with Ollama's Origin allow-list.
  Gradio's own CORS rules would let any localhost port in;
- Sec-Fetch-Site (sent by current browsers on every request): anything but a request from
  the app's own page, or a top-level navigation to it, is refused — so another page cannot
  embed the app or its API in a ``<script>``, ``<img>`` or frame either (those carry no Origin).

Not for: authentication: the page has none (loopback only unless the user asks); the /v1 API
checks its bearer key (``app.api_keys``) after these checks.
"""

from __future__ import annotations

import ipaddress
import os
import socket
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


def is_allowed_origin(origin: str, port: int, extra: Iterable[str] = ()) -> bool:
    """Whether an ``Origin`` header is this app's own: http, a loopback name (or a host the
    user allowed), and the server's port. 'null', other ports and other schemes are not."""
    scheme, sep, rest = origin.strip().lower().partition("://")
    if scheme != "http" or not sep or not rest or "/" in rest:
        return False
    name = host_name(rest)
    rest_port = rest.rsplit(":", 1)[1] if rest.count(":") == 1 or "]:" in rest else ""
    if not rest_port.isdigit() or int(rest_port) != port:
        return False
    return is_allowed_host(name, extra)


def own_addresses() -> list[str]:
    """This machine's names and interface addresses: the hosts a remote user may name when the
    app binds every interface (0.0.0.0 / ::)."""
    import psutil

    names = [socket.gethostname(), socket.getfqdn()]
    for addresses in psutil.net_if_addrs().values():
        names += [a.address.split("%")[0] for a in addresses
                  if a.family in (socket.AF_INET, socket.AF_INET6)]
    return sorted({name.lower() for name in names if name})


def allowed_hosts(bind: str) -> list[str]:
    """Host names besides loopback that requests may carry for a server bound to ``bind``."""
    if bind in ("0.0.0.0", "::", ""):
        return own_addresses()
    return [] if is_allowed_host(bind) else [bind]


class HostAllowList:
    """ASGI middleware: answer 403 to any HTTP or WebSocket request whose Host is not this
    computer (or a host the user explicitly allowed), or whose Origin is not the app's own."""

    def __init__(self, app: ASGIApp, extra_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.extra_hosts = tuple(extra_hosts)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] in ("http", "websocket") and not self.allows(scope):
            await _refuse(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def allows(self, scope: Scope) -> bool:
        headers: dict[bytes, list[bytes]] = {}
        for key, value in scope.get("headers") or []:
            headers.setdefault(key.lower(), []).append(value)
        hosts = headers.get(b"host", [b""])
        if len(hosts) != 1 or not is_allowed_host(hosts[0].decode("latin-1"),
                                                  self.extra_hosts):
            return False
        if not _same_site_or_navigation(scope, headers):
            return False
        origins = headers.get(b"origin")
        if origins is None:
            return True  # not a cross-origin browser request (curl, the address bar)
        port = (scope.get("server") or (None, 0))[1] or 0
        return len(origins) == 1 and is_allowed_origin(origins[0].decode("latin-1"), port,
                                                       self.extra_hosts)


def _same_site_or_navigation(scope: Scope, headers: dict[bytes, list[bytes]]) -> bool:
    site = headers.get(b"sec-fetch-site", [b"none"])[0]
    if site in (b"same-origin", b"none"):
        return True
    navigation = (headers.get(b"sec-fetch-mode", [b""])[0] == b"navigate"
                  and headers.get(b"sec-fetch-dest", [b""])[0] == b"document")
    return scope["type"] == "http" and scope.get("method") in ("GET", "HEAD") and navigation


def locked_app(extra_hosts: Iterable[str] = ()):
    """A Gradio server app whose outermost layer is ``HostAllowList``: Gradio adds its own CORS
    and compression layers outside any middleware passed to it, so a CORS preflight would
    otherwise be answered before the check. Import Gradio only after
    ``scrub_gradio_environment``."""
    from fastapi.responses import ORJSONResponse
    from gradio.routes import App

    hosts = tuple(extra_hosts)

    class LockedApp(App):
        def build_middleware_stack(self) -> ASGIApp:
            return HostAllowList(super().build_middleware_stack(), extra_hosts=hosts)

    return LockedApp(default_response_class=ORJSONResponse)


async def _refuse(scope: Scope, receive: Callable, send: Callable) -> None:
    if scope["type"] == "websocket":
        await receive()  # the connect message
        await send({"type": "websocket.close", "code": 1008})
        return
    body = (b"Tandem only answers requests addressed to localhost / 127.0.0.1 from its own "
            b"page.")
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
