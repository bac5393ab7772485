"""The typed messages of the one door between the UI (and the HTTP API) and the engine.

Everything that crosses ``engine.facade`` is one of these frozen dataclasses: requests going
in, replies and chat events coming back, and ``Failure`` for an error (it rebuilds the
``engine.errors`` class it came from, with its attributes). The worker process
(``engine.worker``) receives and sends them as they are; no dict payloads cross the door.
A server backend (``engine.remote``) streams the same events.

Not for: behaviour. This module holds data and validation only and imports nothing that
loads a model, so the UI process can use it without ``llama_cpp``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from engine import errors
from engine.errors import InvalidRequest, TandemError
from engine.stats import MessageStats

ROLES = ("system", "user", "assistant")
MODES = ("auto", "fixed", "off")
DRAFTERS = ("model", "ngram", "suffix", "both")
MAX_WINDOW = 16
MAX_STOPS = 4
MAX_TOKENS_LIMIT = 1 << 20  # the context ends a reply long before this


# ---- requests ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidRequest(f"role '{self.role}' is not one of {', '.join(ROLES)}",
                                 "messages")
        if not isinstance(self.content, str):
            raise InvalidRequest("message content must be text", "messages")


@dataclass(frozen=True)
class ChatRequest:
    """One reply to generate. ``mode``: auto (the adaptive controller), fixed (window
    ``window``) or off (plain decoding); ``drafter``: which drafters may run. ``target``:
    when set, the reply is refused unless that model is the loaded target (a request that
    asked for a model by name must not run on another one loaded meanwhile)."""

    messages: tuple[Message, ...]
    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0
    mode: str = "auto"
    window: int = 3
    drafter: str = "both"
    stop: tuple[str, ...] = ()
    target: str | None = None

    def __post_init__(self) -> None:
        if not self.messages:
            raise InvalidRequest("messages must not be empty", "messages")
        if not all(isinstance(m, Message) for m in self.messages):
            raise InvalidRequest("messages must be Message objects", "messages")
        _check_int(self.max_tokens, "max_tokens", 1, MAX_TOKENS_LIMIT)
        _check_number(self.temperature, "temperature", 0.0, 2.0)
        _check_number(self.top_p, "top_p", 0.0, 1.0)
        if self.top_p <= 0:
            raise InvalidRequest("top_p must be greater than 0", "top_p")
        _check_int(self.top_k, "top_k", 0, 1 << 20)
        _check_int(self.seed, "seed", -(1 << 63), (1 << 64) - 1)
        if self.mode not in MODES:
            raise InvalidRequest(f"mode must be one of {', '.join(MODES)}", "mode")
        _check_int(self.window, "window", 1, MAX_WINDOW)
        if self.drafter not in DRAFTERS:
            raise InvalidRequest(f"drafter must be one of {', '.join(DRAFTERS)}", "drafter")
        if len(self.stop) > MAX_STOPS or not all(isinstance(s, str) and s for s in self.stop):
            raise InvalidRequest(f"stop takes up to {MAX_STOPS} non-empty strings", "stop")


@dataclass(frozen=True)
class LoadRequest:
    target: str
    draft: str | None = None  # id, path, or None for no draft model
    n_ctx: int = 4096
    n_threads: int | None = None
    n_gpu_layers: int | None = None
    numerics: str | None = None  # exact | fast | exact:N; None: $TANDEM_NUMERICS, else exact


@dataclass(frozen=True)
class InfoRequest:
    pass


@dataclass(frozen=True)
class HardwareRequest:
    pass


@dataclass(frozen=True)
class RecalibrateRequest:
    pass


@dataclass(frozen=True)
class PairRequest:
    """Compatibility and memory fit of a pairing, before anything is loaded."""

    target: str
    draft: str | None
    n_ctx: int = 4096


@dataclass(frozen=True)
class RecommendRequest:
    target: str


@dataclass(frozen=True)
class AddLocalRequest:
    path: str


@dataclass(frozen=True)
class StopRequest:
    pass


Request = (ChatRequest | LoadRequest | InfoRequest | HardwareRequest | RecalibrateRequest
           | PairRequest | RecommendRequest | AddLocalRequest | StopRequest)


@dataclass(frozen=True)
class Envelope:
    """A request as the worker receives it: ``id`` names it for a cancel."""

    id: int
    request: Request


@dataclass(frozen=True)
class Cancel:
    """Sent on the control connection: stop reply ``id`` after the current step."""

    id: int


# ---- replies ----------------------------------------------------------------------------
@dataclass(frozen=True)
class NumericsInfo:
    mode: str  # exact | fast
    label: str
    plain_rows: int
    pieces: tuple[int, ...]
    rounding: float


@dataclass(frozen=True)
class ProbeInfo:
    classes: tuple[tuple[int, ...], ...]  # pass sizes that compute bit-identical logits
    seconds: dict[int, float]
    max_difference: float


@dataclass(frozen=True)
class CalibrationInfo:
    target_seconds: tuple[float, ...]  # target pass over n = 1, 2, ... tokens
    draft_token_seconds: dict[str, float]
    plain_tok_per_s: float
    step_overhead: float
    seen_seconds: dict[int, float]  # pass times seen while answering, per size
    ceilings: dict[str, float]  # per drafter: the speedup if every draft were accepted
    probe: ProbeInfo | None


@dataclass(frozen=True)
class EngineInfo:
    target: str
    draft: str | None
    target_path: str
    compatibility: str | None  # label, None without a draft model
    compatibility_kind: str | None  # native | universal
    n_ctx: int
    threads: int
    gpu_layers: int
    numerics: NumericsInfo | None
    calibration: CalibrationInfo | None
    native_libraries_first: bool = True
    # the suffix drafter's index of everything said: (bytes used, the bound) — estimated
    suffix_memory: tuple[int, int] | None = None


@dataclass(frozen=True)
class Hardware:
    cpu: str
    physical_cores: int
    logical_cores: int
    ram_total: int
    ram_available: int
    gpu_offload: bool
    platform: str


@dataclass(frozen=True)
class FitReport:
    needed: int  # bytes
    available: int
    fits: bool


@dataclass(frozen=True)
class PairReport:
    compatibility: str | None  # label; None: no draft, or unknown (see compatibility_error)
    compatibility_error: str
    small_enough: bool | None  # the draft is small enough against the target to pay off
    fit: FitReport | None
    fit_error: str


@dataclass(frozen=True)
class DraftCandidate:
    draft: str
    compatibility: str
    acceptance: float
    cost_ratio: float
    window: int
    expected_speedup: float
    ceiling: float


@dataclass(frozen=True)
class Recommendation:
    target: str
    candidates: tuple[DraftCandidate, ...]
    recommended: str | None
    reason: str


@dataclass(frozen=True)
class ModelRow:
    """One row of the model picker: a catalog entry or a file added by path."""

    id: str
    family: str
    params: str
    size: int
    installed: bool
    source: str
    path: str | None
    verified: bool = True  # False: added by path, no trusted hash checked
    note: str = ""  # why a catalog entry cannot be downloaded ("" when it can)
    catalog: bool = True  # False: a file added by path


@dataclass(frozen=True)
class Result:
    """The worker's answer to a request that is not a chat."""

    value: object


# ---- chat events ------------------------------------------------------------------------
Piece = tuple[str, str]  # (text, origin): the drafter whose accepted token completed it, or
# "target" for the target's own tokens ("server" for a server backend)


@dataclass(frozen=True)
class Started:
    """The request reached the engine: its prompt fits and generation begins."""

    prompt_tokens: int
    n_ctx: int
    queued_seconds: float = 0.0  # time spent waiting in the engine's queue


@dataclass(frozen=True)
class Chunk:
    pieces: tuple[Piece, ...]
    stats: MessageStats | None = None  # carried a few times a second, not by every chunk


@dataclass(frozen=True)
class Done:
    text: str
    reason: str  # eos | stop | length | context | cancelled
    message: str  # a note for the user ("" when there is none)
    stats: MessageStats | None  # None: the backend reports none
    summary: str  # one line about speed and speculation
    category: str = ""
    prompt_tokens: int = 0


@dataclass(frozen=True)
class Failure:
    """An error as data: ``kind`` names its ``engine.errors`` class, ``details`` its
    attributes; ``error()`` rebuilds it."""

    kind: str
    message: str
    details: dict[str, int | float | str] = field(default_factory=dict)

    @classmethod
    def of(cls, error: BaseException) -> Failure:
        if isinstance(error, TandemError):
            details = {k: v for k, v in vars(error).items()
                       if isinstance(v, (int, float, str)) and not k.startswith("_")}
            return cls(type(error).__name__, str(error), details)
        return cls("InternalError", f"{type(error).__name__}: {error}")

    def error(self) -> TandemError:
        kind = getattr(errors, self.kind, None)
        if not (isinstance(kind, type) and issubclass(kind, TandemError)):
            kind = TandemError
        rebuilt = kind.__new__(kind)
        Exception.__init__(rebuilt, self.message)
        vars(rebuilt).update(self.details)
        return rebuilt


@dataclass(frozen=True)
class Failed:
    """The reply ended with an error; ``failure.error()`` is the typed exception."""

    failure: Failure

    @property
    def message(self) -> str:
        return self.failure.message

    @property
    def crashed(self) -> bool:
        return self.failure.kind == "EngineCrashed"


Event = Started | Chunk | Done | Failed


class ChatStream(Protocol):
    """What a backend's ``chat`` returns: the events of one reply, ending with ``Done`` or
    ``Failed``; ``cancel`` stops this reply (and no other) after the current step."""

    def __iter__(self) -> Iterator[Event]: ...

    def cancel(self) -> None: ...


class Backend(Protocol):
    """Something that answers chats: the local engine (``engine.facade.EngineClient``) or an
    OpenAI-compatible server (``engine.remote.RemoteClient``)."""

    def chat(self, request: ChatRequest) -> ChatStream: ...


# ---- validation helpers -----------------------------------------------------------------
def _check_int(value: object, name: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be an integer", name)
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}", name)


def _check_number(value: object, name: str, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
            value):
        raise InvalidRequest(f"{name} must be a number", name)
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low:g} and {high:g}", name)
