"""The OpenAI chat-completions format, both ways: a request body -> ``protocol.ChatRequest``
(every field checked, OpenAI-shaped errors naming the field), and engine events -> response
bodies, stream chunks, ``usage`` and llama-server-shaped ``timings``. Pure functions.

Accepted: ``model``, ``messages`` (system, developer (as system), user, assistant; text
content or text parts), ``max_tokens`` / ``max_completion_tokens``, ``temperature``,
``top_p``, ``top_k``, ``seed``, ``stop``, ``stream``, ``stream_options.include_usage``,
``n`` (1 only) and Tandem's ``speculation``: "auto" | "off" | {"fixed": k}. Other fields
(penalties, ``user``, ``logit_bias`` …) are ignored, as llama-server ignores what it does not
implement. Defaults follow OpenAI: temperature 1, top_p 1, a random seed, no length limit
but the context. A sampled request with an explicit ``seed`` and no ``speculation`` is decoded
plainly, so the same seed gives the same text (``SEEDED_PLAIN``).

Not for: HTTP (``app.api``) or what the engine does with the request (``engine``).
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import dataclass

from engine import protocol
from engine.errors import InvalidRequest
from engine.stats import MessageStats

ROLE_ALIASES = {"developer": "system"}


class ApiError(Exception):
    """An error answered as OpenAI does: ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type_, param, code)
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


SEEDED_PLAIN = ("off: a seeded sampled request is decoded plainly, so the same seed gives the "
                "same text (speculative sampling draws differently with every draft); ask "
                "for speculation explicitly to have it anyway")


@dataclass(frozen=True)
class Completion:
    """A parsed chat-completions request. ``note``: why speculation is off when the request
    did not say so itself."""

    model: str
    request: protocol.ChatRequest
    stream: bool
    include_usage: bool
    note: str = ""


def parse_json(body: bytes) -> object:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "We could not parse the JSON body of your request. The body must "
                            "be a JSON object (Content-Type: application/json).") from None


def parse_chat(body: bytes) -> Completion:
    data = parse_json(body)
    if not isinstance(data, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = data.get("model")
    if model is None:
        raise ApiError(400, "You must provide a model parameter (see GET /v1/models).",
                       param="model")
    if not isinstance(model, str) or not model:
        raise _type_error("model", "a string", model)
    messages = _messages(data.get("messages"))
    max_tokens = data.get("max_completion_tokens")
    name = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, name = data.get("max_tokens"), "max_tokens"
    n = data.get("n")
    if n is not None and (_integer(n, "n") != 1):
        raise ApiError(400, "Only n = 1 is supported.", param="n")
    stream = _optional(data, "stream", bool, False)
    options = data.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise _type_error("stream_options", "an object", options)
    include_usage = bool(options) and _optional(options, "include_usage", bool, False,
                                                "stream_options.include_usage")
    if max_tokens is not None and _integer(max_tokens, name) < 1:
        raise ApiError(400, f"Invalid '{name}': it must be at least 1.", param=name)
    mode, window = _speculation(data.get("speculation"))
    seed = data.get("seed")
    note = ""
    if seed is not None and data.get("speculation") is None and (
            data.get("temperature") is None or _number(data, "temperature", 1.0) > 0):
        mode, note = "off", SEEDED_PLAIN  # reproducible: see SEEDED_PLAIN
    try:
        request = protocol.ChatRequest(
            messages=messages,
            max_tokens=protocol.MAX_TOKENS_LIMIT if max_tokens is None
            else _integer(max_tokens, name),
            temperature=_number(data, "temperature", 1.0),
            top_p=_number(data, "top_p", 1.0),
            top_k=0 if data.get("top_k") is None else _integer(data["top_k"], "top_k"),
            seed=secrets.randbelow(1 << 31) if seed is None else _integer(seed, "seed"),
            mode=mode, window=window, stop=_stop(data.get("stop")), target=model)
    except InvalidRequest as error:
        raise ApiError(400, str(error), param=error.param or None) from None
    return Completion(model, request, stream, include_usage, note)


def _messages(value: object) -> tuple[protocol.Message, ...]:
    if value is None:
        raise ApiError(400, "Missing required parameter: 'messages'.", param="messages")
    if not isinstance(value, list):
        raise _type_error("messages", "an array", value)
    if not value:
        raise ApiError(400, "'messages' must contain at least one message.", param="messages")
    out = []
    for index, message in enumerate(value):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise _type_error(where, "an object", message)
        role = message.get("role")
        if not isinstance(role, str):
            raise ApiError(400, f"Missing or invalid '{where}.role'.", param=f"{where}.role")
        role = ROLE_ALIASES.get(role, role)
        if role not in protocol.ROLES:
            raise ApiError(400, f"Invalid value for '{where}.role': '{role}'. Supported roles: "
                                "system, developer, user, assistant.", param=f"{where}.role")
        out.append(protocol.Message(role, _content(message.get("content"), where, role)))
    return tuple(out)


def _content(value: object, where: str, role: str) -> str:
    if isinstance(value, str):
        return value
    if value is None and role == "assistant":
        return ""
    if isinstance(value, list):
        parts = []
        for index, part in enumerate(value):
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise ApiError(400, f"'{where}.content[{index}]': only text parts "
                                    '({"type": "text", "text": ...}) are supported.',
                               param=f"{where}.content")
            parts.append(part["text"])
        return "".join(parts)
    raise _type_error(f"{where}.content", "a string or an array of text parts", value)


def _speculation(value: object) -> tuple[str, int]:
    if value is None or value == "auto":
        return "auto", 3
    if value == "off":
        return "off", 3
    if isinstance(value, dict) and set(value) == {"fixed"}:
        window = value["fixed"]
        if isinstance(window, int) and not isinstance(window, bool) and (
                1 <= window <= protocol.MAX_WINDOW):
            return "fixed", window
    raise ApiError(400, "'speculation' must be \"auto\", \"off\" or {\"fixed\": k} with k "
                        f"from 1 to {protocol.MAX_WINDOW}.", param="speculation")


def _stop(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        if len(value) > protocol.MAX_STOPS:
            raise ApiError(400, f"'stop' takes at most {protocol.MAX_STOPS} strings.",
                           param="stop")
        return tuple(s for s in value if s)
    raise _type_error("stop", "a string or an array of strings", value)


def _integer(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _type_error(name, "an integer", value)
    return value


def _number(data: dict, name: str, default: float) -> float:
    value = data.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value):
        raise _type_error(name, "a number", value)
    return float(value)


def _optional(data: dict, name: str, kind: type, default, where: str | None = None):
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise _type_error(where or name, "a boolean" if kind is bool else kind.__name__, value)
    return value


def _type_error(name: str, expected: str, value: object) -> ApiError:
    got = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
           int: "an integer", float: "a number", type(None): "null"}.get(type(value), "a value")
    return ApiError(400, f"Invalid type for '{name}': expected {expected}, but got {got} "
                         "instead.", param=name, code="invalid_type")


# ---- responses ----------------------------------------------------------------------------
def finish_reason(reason: str) -> str:
    """Tandem's end reasons -> OpenAI's: the model stopped (end token or a stop string), or a
    length ran out (max_tokens or the context)."""
    return "length" if reason in ("length", "context") else "stop"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def timings(stats: MessageStats | None, started: protocol.Started | None,
            request: protocol.ChatRequest, note: str = "") -> dict:
    """llama-server's ``timings`` fields, then Tandem's own (see docs/api.md). ``note``: why
    speculation was off, when the API decided it."""
    s = stats or MessageStats()
    prompt_ms, predicted_ms = 1000 * s.prompt_seconds, 1000 * s.seconds
    note = note or s.controller_note
    if request.mode == "off" and note == s.controller_note:
        note = "off: the request asked for plain decoding"
    elif not s.drafted and not note:
        note = "nothing was drafted in this reply"
    return {
        "cache_n": s.cache_reused,
        "prompt_n": s.prompt_tokens,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / s.prompt_tokens if s.prompt_tokens else 0.0,
        "prompt_per_second": 1000 * s.prompt_tokens / prompt_ms if prompt_ms else 0.0,
        "predicted_n": s.tokens,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / s.tokens if s.tokens else 0.0,
        "predicted_per_second": s.tok_per_s,
        "draft_n": s.drafted,
        "draft_n_accepted": s.accepted,
        # Tandem's own
        "drafter": s.drafter,
        "window": s.window,
        "acceptance": s.acceptance,
        "accepted_by": dict(s.accepted_by),
        "speedup_estimate": s.speedup,
        "plain_per_second_estimate": s.plain_tok_per_s,
        "first_token_ms": None if s.first_token_seconds is None
        else 1000 * s.first_token_seconds,
        "queue_ms": 1000 * started.queued_seconds if started else 0.0,
        "numerics": s.numerics,
        "near_ties": s.near_ties,
        "speculation_note": note,
    }


def completion_body(ident: str, created: int, model: str, text: str, done: protocol.Done,
                    started: protocol.Started, request: protocol.ChatRequest,
                    note: str = "") -> dict:
    tokens = done.stats.tokens if done.stats else 0
    return {"id": ident, "object": "chat.completion", "created": created, "model": model,
            "system_fingerprint": "tandem",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "logprobs": None, "finish_reason": finish_reason(done.reason)}],
            "usage": usage(started.prompt_tokens, tokens),
            "timings": timings(done.stats, started, request, note)}


def chunk_body(ident: str, created: int, model: str, delta: dict,
               finish: str | None = None, **extra) -> dict:
    return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "tandem",
            "choices": [{"index": 0, "delta": delta, "logprobs": None,
                         "finish_reason": finish}], **extra}


def usage_chunk(ident: str, created: int, model: str, prompt_tokens: int,
                completion_tokens: int) -> dict:
    return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "tandem", "choices": [],
            "usage": usage(prompt_tokens, completion_tokens)}


def model_entry(model_id: str, loaded: str | None, row: protocol.ModelRow | None) -> dict:
    """One entry of GET /v1/models. ``loaded``: "target", "draft" or None."""
    entry = {"id": model_id, "object": "model", "created": 0, "owned_by": "tandem",
             "loaded": loaded}
    if row is not None:
        entry.update(family=row.family, params=row.params, size_bytes=row.size,
                     verified=row.verified)
    return entry


def sse(data: dict | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()
