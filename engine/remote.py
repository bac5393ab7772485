"""A server backend: the chat UI talking to an existing OpenAI-compatible server (a team's
vLLM or SGLang, llama.cpp's llama-server, llama-cpp-python's server, another Tandem) instead
of the local engine, with the same events as ``engine.facade`` (``engine.protocol``).

``RemoteClient.chat`` streams ``POST {url}/chat/completions``; what the server reports about
speed (llama-server's ``timings``) becomes the reply's statistics, and a server that reports
nothing gets ``stats=None`` and says so. A server that is down, silent for ``timeout``
seconds, refuses, or answers something that is not an OpenAI stream ends the reply with a
``Failed`` event whose message says which (``ServerUnavailable``, ``ServerTimeout``,
``ServerRefused``, ``ServerGarbage``); the text received until then stays with the caller.

The key is sent only in the Authorization header and never logged. The settings are kept in
``server-backend.json`` in the user data directory (this user only).

Not for: the local engine (``engine.facade``).
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import httpx

from engine import paths
from engine import protocol as p
from engine.errors import (
    InvalidRequest,
    ServerGarbage,
    ServerRefused,
    ServerTimeout,
    ServerUnavailable,
    TandemError,
)
from engine.stats import MessageStats

SETTINGS_FILE = "server-backend.json"
ERROR_BODY_BYTES = 2048
NO_STATS = "the server reports no speed statistics (no llama-server timings)"


@dataclass(frozen=True)
class ServerSettings:
    url: str  # the server's base URL, with or without /v1
    key: str = ""
    model: str = ""
    timeout: float = 60.0  # seconds without a byte from the server before giving up
    enabled: bool = False  # the chat uses this server instead of the local engine

    def base(self) -> str:
        """The API base: ``http://host:8000`` and ``http://host:8000/v1/`` both give
        ``http://host:8000/v1``."""
        url = self.url.strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidRequest("The server URL must start with http:// or https:// and name "
                                 "a host, e.g. http://gpu-box:8000/v1", "url")
        return url if parts.path.endswith("/v1") else url + "/v1"

    def save(self) -> None:
        path = paths.data_dir() / SETTINGS_FILE
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(self), out)
        os.replace(tmp, path)

    @classmethod
    def saved(cls) -> ServerSettings | None:
        try:
            data = json.loads((paths.data_dir() / SETTINGS_FILE).read_text(encoding="utf-8"))
            return cls(**{k: data[k] for k in ("url", "key", "model", "timeout", "enabled")
                          if k in data})
        except (OSError, ValueError, TypeError):
            return None


class RemoteClient:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.base = settings.base()

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.settings.key:
            headers["Authorization"] = f"Bearer {self.settings.key}"
        return headers

    def _timeout(self) -> httpx.Timeout:
        return httpx.Timeout(self.settings.timeout, connect=min(10.0, self.settings.timeout))

    def models(self) -> list[str]:
        """The model ids the server lists (GET /models): checks URL and key."""
        try:
            with httpx.Client(timeout=self._timeout(), follow_redirects=False) as client:
                response = client.get(self.base + "/models", headers=self._headers())
        except httpx.TimeoutException:
            raise ServerTimeout(self.base, self.settings.timeout) from None
        except httpx.HTTPError as error:
            raise ServerUnavailable(self.base, _reason(error)) from None
        if response.status_code != 200:
            raise ServerRefused(self.base, response.status_code, _error_text(response.content))
        try:
            return [str(m["id"]) for m in response.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise ServerGarbage(self.base, "GET /models is not a model list") from None

    def chat(self, request: p.ChatRequest) -> RemoteStream:
        return RemoteStream(self, request)


class RemoteStream:
    """One reply from the server. The HTTP exchange runs on a thread of its own, so
    ``cancel()`` ends the reply for the reader at once; that thread closes the connection
    (which stops the server's generation) as soon as its next read returns."""

    def __init__(self, client: RemoteClient, request: p.ChatRequest) -> None:
        self.client, self.request = client, request
        self._cancelled = threading.Event()
        self._events: queue.Queue = queue.Queue()

    def cancel(self) -> None:
        self._cancelled.set()

    def close(self) -> None:
        self.cancel()

    def __iter__(self) -> Iterator[p.Event]:
        threading.Thread(target=self._exchange, daemon=True).start()
        text: list[str] = []
        while True:
            try:
                event = self._events.get(timeout=0.1)
            except queue.Empty:
                if self._cancelled.is_set():
                    yield p.Done("".join(text), "cancelled", "", None, "stopped")
                    return
                continue
            if isinstance(event, p.Chunk):
                text.append("".join(t for t, _ in event.pieces))
            yield event
            if isinstance(event, (p.Done, p.Failed)):
                return

    def body(self) -> dict:
        r = self.request
        body = {"model": self.client.settings.model, "stream": True,
                "stream_options": {"include_usage": True},
                "messages": [{"role": m.role, "content": m.content} for m in r.messages],
                "max_tokens": r.max_tokens, "temperature": r.temperature, "top_p": r.top_p,
                "seed": r.seed}
        if r.stop:
            body["stop"] = list(r.stop)
        return body

    def _exchange(self) -> None:
        base, settings = self.client.base, self.client.settings
        put = self._events.put
        try:
            with httpx.Client(timeout=self.client._timeout(), follow_redirects=False) as http:
                with http.stream("POST", base + "/chat/completions", json=self.body(),
                                 headers={**self.client._headers(),
                                          "Accept": "text/event-stream"}) as response:
                    if response.status_code != 200:
                        raise ServerRefused(base, response.status_code,
                                            _error_text(_head(response)))
                    kind = response.headers.get("content-type", "")
                    if "text/event-stream" not in kind:
                        raise ServerGarbage(base, f"it answered {kind or 'no content type'}, "
                                                  "not an event stream")
                    put(p.Started(0, 0))
                    self._read(response.iter_lines(), put)
        except TandemError as error:
            put(p.Failed(p.Failure.of(error)))
        except httpx.TimeoutException:
            put(p.Failed(p.Failure.of(ServerTimeout(base, settings.timeout))))
        except httpx.HTTPError as error:
            put(p.Failed(p.Failure.of(ServerUnavailable(base, _reason(error)))))

    def _read(self, lines: Iterator[str], put) -> None:
        base = self.client.base
        text: list[str] = []
        finish, timings, usage = None, None, None
        for line in lines:
            if self._cancelled.is_set():
                return  # leaving the with-blocks closes the connection
            if not line.strip() or line.startswith(":"):
                continue
            if not line.startswith("data:"):
                if line.startswith(("event:", "id:", "retry:")):
                    continue
                raise ServerGarbage(base, f"a line that is not server-sent events: "
                                          f"{_clip(line)}")
            data = line[5:].strip()
            if data == "[DONE]":
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                raise ServerGarbage(base, f"an event that is not JSON: {_clip(data)}") from None
            if not isinstance(chunk, dict):
                raise ServerGarbage(base, f"an event that is not an object: {_clip(data)}")
            if "error" in chunk:
                raise ServerRefused(base, 200, _error_text(json.dumps(chunk).encode()))
            timings = chunk.get("timings") or timings
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                if not isinstance(choice, dict):
                    raise ServerGarbage(base, "a choice that is not an object")
                delta = choice.get("delta") or {}
                piece = delta.get("content") if isinstance(delta, dict) else None
                if isinstance(piece, str) and piece:
                    text.append(piece)
                    put(p.Chunk(((piece, "server"),)))
                finish = choice.get("finish_reason") or finish
        if finish is None:
            raise ServerGarbage(base, "the reply ended before the server said it was finished")
        stats = _stats(timings)
        reason = {"length": "length", "stop": "stop"}.get(finish, "stop")
        tokens = (usage or {}).get("completion_tokens") if isinstance(usage, dict) else None
        put(p.Done("".join(text), reason, "" if stats else NO_STATS, stats,
                   _summary(stats, tokens), prompt_tokens=int((usage or {}).get(
                       "prompt_tokens") or 0) if isinstance(usage, dict) else 0))


def _stats(timings: object) -> MessageStats | None:
    """llama-server's ``timings`` (and Tandem's own fields, when the server is a Tandem) as
    the reply's statistics; None when the server sent none."""
    if not isinstance(timings, dict):
        return None
    try:
        stats = MessageStats(
            tokens=int(timings.get("predicted_n") or 0),
            seconds=float(timings.get("predicted_ms") or 0) / 1000,
            prompt_tokens=int(timings.get("prompt_n") or 0),
            prompt_seconds=float(timings.get("prompt_ms") or 0) / 1000,
            cache_reused=int(timings.get("cache_n") or 0),
            drafted=int(timings.get("draft_n") or 0),
            accepted=int(timings.get("draft_n_accepted") or 0),
            drafter=str(timings.get("drafter") or "server"),
            window=int(timings.get("window") or 0),
            controller_note="reported by the server",
            plain_tok_per_s=_float(timings.get("plain_per_second_estimate")),
            numerics=str(timings.get("numerics") or "server"),
            near_ties=int(timings.get("near_ties") or 0))
    except (TypeError, ValueError):
        return None
    first = _float(timings.get("first_token_ms"))
    stats.first_token_seconds = None if first is None else first / 1000
    return stats


def _summary(stats: MessageStats | None, tokens: object) -> str:
    if stats is None:
        counted = f"{tokens} tokens · " if isinstance(tokens, int) else ""
        return counted + NO_STATS
    parts = [f"{stats.tokens} tokens", f"{stats.tok_per_s:.1f} tok/s decoding"]
    if stats.acceptance is not None:
        parts.append(f"acceptance {100 * stats.acceptance:.0f}% ({stats.drafted} drafted)")
    if stats.speedup is not None:
        parts.append(f"≈{stats.speedup:.2f}x vs plain (estimate)")
    return " · ".join(parts) + " · reported by the server"


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _head(response: httpx.Response) -> bytes:
    data = b""
    for chunk in response.iter_bytes():
        data += chunk
        if len(data) >= ERROR_BODY_BYTES:
            break
    return data[:ERROR_BODY_BYTES]


def _error_text(body: bytes) -> str:
    """The server's own error message (OpenAI-shaped or not), short and printable."""
    try:
        data = json.loads(body)
        error = data.get("error", data) if isinstance(data, dict) else data
        message = error.get("message") if isinstance(error, dict) else error
        if isinstance(message, str) and message:
            return _clip(message)
    except (ValueError, UnicodeDecodeError):
        pass
    return _clip(body.decode("utf-8", "replace")) or "no details"


def _clip(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def _reason(error: httpx.HTTPError) -> str:
    if isinstance(error, httpx.ConnectError):
        return "connection refused or host unreachable"
    return type(error).__name__
