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
