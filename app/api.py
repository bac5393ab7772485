"""Tandem's OpenAI-compatible HTTP API under ``/v1``, on the app's own server and port.

``POST /v1/chat/completions`` (server-sent events or one JSON body), ``GET /v1/models`` and
``GET /v1/models/{id}``. Every request needs the bearer key (``app.api_keys``); the Host and
Origin checks of ``app.security`` run before this module sees a request, so a web page on
another origin gets 403 whatever key it guesses. Replies wait in the engine's one line
(``EngineClient.chat(bounded=True)``): a full line answers 429 with ``Retry-After``. A client
that disconnects, while waiting or while its reply streams, cancels that reply (within one
engine step). Asking for an installed model that is not loaded loads it.

Not for: the request/response format (``app.api_format``) or anything the engine does.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.api_format import (
    ApiError,
    Completion,
    chunk_body,
    completion_body,
    finish_reason,
    model_entry,
    parse_chat,
    sse,
    timings,
    usage_chunk,
)
from app.api_keys import ApiKey
from engine import protocol as p
from engine.errors import DoesNotFit, TandemError
from engine.facade import EngineClient, EngineStream

MAX_BODY_BYTES = 8 * 1024 * 1024
ERROR_STATUS = {  # engine.errors class -> (HTTP status, OpenAI type, code)
    "InvalidRequest": (400, "invalid_request_error", None),
    "ContextTooLong": (400, "invalid_request_error", "context_length_exceeded"),
    "TemplateRefused": (400, "invalid_request_error", "template_refused"),
    "DoesNotFit": (400, "invalid_request_error", "model_does_not_fit"),
    "ModelNotFound": (404, "invalid_request_error", "model_not_found"),
    "NotInstalled": (404, "invalid_request_error", "model_not_found"),
    "ModelSwitched": (409, "invalid_request_error", "model_switched"),
    "QueueFull": (429, "requests", "rate_limit_exceeded"),
    "NoModelLoaded": (503, "server_error", "model_not_loaded"),
}


def api_error(error: TandemError) -> ApiError:
    status, kind, code = ERROR_STATUS.get(type(error).__name__, (500, "server_error", None))
    headers = {}
    if hasattr(error, "retry_after"):
        headers["Retry-After"] = str(error.retry_after)
    return ApiError(status, str(error), kind, getattr(error, "param", None) or None, code,
                    headers)


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class Api:
    """The /v1 routes over one ``EngineClient``. ``on_load``: told when a request loaded
    another model (the UI shows the pair in use)."""

    def __init__(self, engine: EngineClient, key: ApiKey,
                 on_load: Callable[[p.EngineInfo], None] | None = None) -> None:
        self.engine, self.key, self.on_load = engine, key, on_load
        self._switch = asyncio.Lock()

    def router(self) -> APIRouter:
        router = APIRouter()
        router.add_api_route("/v1/models", self.models, methods=["GET"])
        router.add_api_route("/v1/models/{model_id:path}", self.model, methods=["GET"])
        router.add_api_route("/v1/chat/completions", self.chat, methods=["POST"])
        router.add_api_route("/v1/{rest:path}", self.unknown,
                             methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        return router

    # ---- the key ---------------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if not header:
            raise ApiError(401, "You didn't provide an API key. Send it as 'Authorization: "
                                "Bearer <key>'; the key is shown in Tandem's API tab and "
                                "stored in api-key.txt in Tandem's data directory.")
        if scheme.lower() != "bearer" or not self.key.matches(presented.strip()):
            raise ApiError(401, "Incorrect API key provided. The key is shown in Tandem's API "
                                "tab.", code="invalid_api_key")

    # ---- models ----------------------------------------------------------------------------
    def _listing(self) -> list[dict]:
        current = self.engine.current
        target = current.target if current else None
        draft = current.draft if current else None

        def role(model_id: str) -> str | None:
            return "target" if model_id == target else "draft" if model_id == draft else None

        rows = [r for r in self.engine.known_models() if r.installed]
        data = [model_entry(r.id, role(r.id), r) for r in rows]
        listed = {r.id for r in rows}
        for name in (target, draft):  # a pair loaded by path
            if name and name not in listed:
                data.append(model_entry(name, role(name), None))
        data.sort(key=lambda entry: (entry["loaded"] is None, entry["loaded"] != "target"))
        return data

    async def models(self, request: Request):
        try:
            self._authorize(request)
        except ApiError as error:
            return error_response(error)
        return JSONResponse({"object": "list", "data": self._listing()})

    async def model(self, model_id: str, request: Request):
        try:
            self._authorize(request)
            entry = next((m for m in self._listing() if m["id"] == model_id), None)
            if entry is None:
                raise _no_such_model(model_id)
        except ApiError as error:
            return error_response(error)
        return JSONResponse(entry)

    async def unknown(self, rest: str, request: Request):
        try:
            self._authorize(request)
        except ApiError as error:
            return error_response(error)
        return error_response(ApiError(
            404, f"Unknown request URL: {request.method} /v1/{rest}. Tandem serves "
                 "/v1/chat/completions and /v1/models.", code="unknown_url"))

    async def _use_model(self, model: str) -> str:
        """The loaded target's id when ``model`` names it; else load ``model`` (installed
        models only: the API never loads an arbitrary path)."""
        current = self.engine.current
        if current is not None and model == current.target:
            return model
        row = next((r for r in self.engine.known_models() if r.id == model), None)
        if row is None:
            raise _no_such_model(model)
        if not row.installed:
            raise ApiError(404, f"The model '{model}' is in Tandem's catalog but not "
                                "downloaded. Download it in the Models tab first.",
                           code="model_not_found", param="model")
        async with self._switch:
            current = self.engine.current
            if current is None or current.target != model:
                await anyio.to_thread.run_sync(self._load, model)
        return model

    def _load(self, model: str) -> None:
        current = self.engine.last_load
        draft = current.draft if current and current.draft != model else None
        numerics = current.numerics if current else None
        try:
            info = self.engine.load(p.LoadRequest(model, draft, numerics=numerics))
        except DoesNotFit:
            if draft is None:
                raise
            info = self.engine.load(p.LoadRequest(model, None, numerics=numerics))
        if self.on_load is not None:
            self.on_load(info)

    # ---- chat ------------------------------------------------------------------------------
    async def chat(self, request: Request):
        try:
            self._authorize(request)
            completion = parse_chat(await _body(request))
            target = await self._use_model(completion.model)
            chat = replace(completion.request, target=target)
            stream = self.engine.chat(chat, bounded=True)
        except ApiError as error:
            return error_response(error)
        except TandemError as error:
            return error_response(api_error(error))
        return CompletionResponse(stream, completion, chat)


def _no_such_model(model: str) -> ApiError:
    return ApiError(404, f"The model '{model}' does not exist. GET /v1/models lists the "
                         "installed models.", code="model_not_found", param="model")


async def _body(request: Request) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, f"The request body is larger than {MAX_BODY_BYTES // 2**20} "
                                "MiB.")
        chunks.append(chunk)
    return b"".join(chunks)


class CompletionResponse(Response):
    """An ASGI response for one chat completion. It waits for the engine to take the request
    (so a prompt too long for the context still gets a 400), then streams or sends the
    reply. A task listens for the client going away the whole time and cancels the reply."""

    def __init__(self, stream: EngineStream, completion: Completion,
                 request: p.ChatRequest) -> None:
        super().__init__()
        self.stream, self.completion, self.request = stream, completion, request
        self.ident = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    async def __call__(self, scope, receive, send) -> None:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        threading.Thread(target=self._pump, args=(loop, events), daemon=True).start()
        watcher = asyncio.ensure_future(self._watch(receive))
        finished = False
        try:
            first = await events.get()
            if isinstance(first, p.Failed):
                finished = True
                await _send_json(send, api_error(first.failure.error()))
                return
            if not isinstance(first, p.Started):  # cancelled while waiting: nobody to tell
                return
            if self.completion.stream:
                finished = await self._stream(send, events, first)
            else:
                finished = await self._whole(send, events, first)
        except OSError:  # the client went away while we were writing
            pass
        finally:
            watcher.cancel()
            if not finished:
                self.stream.cancel()

    def _pump(self, loop: asyncio.AbstractEventLoop, events: asyncio.Queue) -> None:
        """Read the engine's events on a thread of their own and hand them to the loop."""
        def put(event) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the server is shutting down
                self.stream.cancel()

        try:
            for event in self.stream:
                put(event)
        except Exception as error:  # a bug: end the reply with it rather than hang
            put(p.Failed(p.Failure.of(error)))
        finally:
            self.stream.close()
            put(None)

    async def _watch(self, receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.stream.cancel()
                return

    async def _stream(self, send, events: asyncio.Queue, started: p.Started) -> bool:
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]})
        model = self.completion.model

        async def write(data: dict | str) -> None:
            await send({"type": "http.response.body", "body": sse(data), "more_body": True})

        await write(chunk_body(self.ident, self.created, model,
                               {"role": "assistant", "content": ""}))
        while True:
            event = await events.get()
            if isinstance(event, p.Chunk):
                text = "".join(t for t, _ in event.pieces)
                if text:
                    await write(chunk_body(self.ident, self.created, model, {"content": text}))
            elif isinstance(event, p.Done):
                if event.reason == "cancelled":
                    return False
                await write(chunk_body(self.ident, self.created, model, {},
                                       finish_reason(event.reason),
                                       timings=timings(event.stats, started, self.request,
                                                       self.completion.note)))
                if self.completion.include_usage:
                    await write(usage_chunk(self.ident, self.created, model,
                                            started.prompt_tokens,
                                            event.stats.tokens if event.stats else 0))
                break
            elif isinstance(event, p.Failed):
                await write(api_error(event.failure.error()).body())
                break
            elif event is None:
                break
        await write("[DONE]")
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True

    async def _whole(self, send, events: asyncio.Queue, started: p.Started) -> bool:
        while True:
            event = await events.get()
            if isinstance(event, p.Done):
                if event.reason == "cancelled":
                    return False
                body = completion_body(self.ident, self.created, self.completion.model,
                                       event.text, event, started, self.request,
                                       self.completion.note)
                await _send_json(send, body)
                return True
            elif isinstance(event, p.Failed):
                await _send_json(send, api_error(event.failure.error()))
                return True
            elif event is None:
                return False


async def _send_json(send, payload: ApiError | dict) -> None:
    response = error_response(payload) if isinstance(payload, ApiError) else JSONResponse(
        payload)
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": False})
