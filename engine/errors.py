"""Every error a user can see, with a message that says what happened and what to do.

Engine code raises these; the UI shows ``str(error)`` as is. Anything else that escapes is
a bug.
"""

from __future__ import annotations


class TandemError(Exception):
    """Base class: the message is written for the user."""


class ModelNotFound(TandemError):
    def __init__(self, what: str) -> None:
        super().__init__(
            f"No model '{what}': it is neither a catalog id nor an existing .gguf file. "
            "Run `python -m engine.models list` to see the ids Tandem knows."
        )


class NotInstalled(TandemError):
    def __init__(self, model_id: str) -> None:
        super().__init__(
            f"Model '{model_id}' is in the catalog but not downloaded yet. "
            f"Fetch it with `python -m engine.models fetch {model_id}`."
        )


class InvalidModelFile(TandemError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"'{path}' is not a usable GGUF model: {reason}")
        self.path = path
        self.reason = reason


class ChecksumMismatch(TandemError):
    def __init__(self, name: str, expected: str, actual: str) -> None:
        super().__init__(
            f"The download of '{name}' is corrupt (SHA-256 {actual[:12]}…, expected "
            f"{expected[:12]}…). It was not kept; fetch it again."
        )


class DownloadFailed(TandemError):
    pass


class DownloadCancelled(TandemError):
    def __init__(self, name: str) -> None:
        super().__init__(f"Download of '{name}' was cancelled; nothing partial was kept.")


class DoesNotFit(TandemError):
    def __init__(self, needed: int, available: int, what: str) -> None:
        gib = 1024**3
        super().__init__(
            f"{what} needs about {needed / gib:.1f} GiB of memory but only "
            f"{available / gib:.1f} GiB is available. Close other programs or pick smaller models."
        )
        self.needed = needed
        self.available = available


class ContextFull(TandemError):
    def __init__(self, n_ctx: int) -> None:
        super().__init__(
            f"The conversation no longer fits in the model's context window ({n_ctx} tokens). "
            "Start a new chat or shorten the messages."
        )


class TemplateRefused(TandemError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"The model's chat template was refused: {reason}")


class EngineCrashed(TandemError):
    def __init__(self, detail: str = "") -> None:
        super().__init__(
            "The model process stopped unexpectedly"
            + (f" ({detail})" if detail else "")
            + ". Your conversation is safe; reload the models to continue."
        )


class InvalidRequest(TandemError):
    """A request whose fields are missing, of the wrong type or out of range."""

    def __init__(self, message: str, param: str = "") -> None:
        super().__init__(message)
        self.param = param


class NoModelLoaded(TandemError):
    def __init__(self) -> None:
        super().__init__("No model is loaded. Load a model pair in the Models tab first.")


class ContextTooLong(TandemError):
    def __init__(self, prompt_tokens: int, n_ctx: int) -> None:
        super().__init__(
            f"The prompt is {prompt_tokens} tokens but the model's context window is {n_ctx} "
            "tokens, so there is no room for a reply. Shorten the messages or start a new "
            "conversation."
        )
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx


class QueueFull(TandemError):
    def __init__(self, waiting: int, retry_after: int) -> None:
        super().__init__(
            f"Tandem is busy: {waiting} requests are already waiting for the engine. "
            f"Try again in about {retry_after} s."
        )
        self.waiting = waiting
        self.retry_after = retry_after


class ModelInUse(TandemError):
    def __init__(self, model_id: str) -> None:
        super().__init__(f"{model_id} is loaded; load another pair before removing it.")
        self.model_id = model_id


class ModelSwitched(TandemError):
    def __init__(self, wanted: str, loaded: str) -> None:
        super().__init__(
            f"The request asked for '{wanted}' but '{loaded}' was loaded meanwhile (by another "
            "request or the app). Send it again."
        )
        self.wanted = wanted
        self.loaded = loaded


class ServerUnavailable(TandemError):
    def __init__(self, url: str, detail: str) -> None:
        super().__init__(
            f"Could not reach the server at {url} ({detail}). Check the URL in the Models "
            "tab and that the server is running; your conversation is safe."
        )
        self.url = url


class ServerTimeout(TandemError):
    def __init__(self, url: str, seconds: float) -> None:
        super().__init__(
            f"The server at {url} sent nothing for {seconds:g} s, so Tandem stopped waiting. "
            "Your conversation is safe; try again or check the server."
        )
        self.url = url


class ServerRefused(TandemError):
    def __init__(self, url: str, status: int, detail: str) -> None:
        super().__init__(f"The server at {url} refused the request (HTTP {status}): {detail}")
        self.url = url
        self.status = status


class ServerGarbage(TandemError):
    def __init__(self, url: str, detail: str) -> None:
        super().__init__(
            f"The server at {url} answered something that is not an OpenAI-compatible chat "
            f"reply ({detail}). Check that the URL points at its /v1 API; your conversation "
            "is safe."
        )
        self.url = url
