"""Where Tandem keeps its files: one user data directory behind ``TANDEM_HOME``.

Not for: deciding what goes inside each folder (the modules that own the data do that).
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """The user data directory (``$TANDEM_HOME``, else ``~/.tandem``), created on demand."""
    root = Path(os.environ.get("TANDEM_HOME") or Path.home() / ".tandem").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _sub(name: str) -> Path:
    path = data_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Assembled, verified GGUF files."""
    return _sub("models")


def cache_dir() -> Path:
    """Scratch space: package-index chunks, vocabulary maps, partial downloads."""
    return _sub("cache")


def calibration_dir() -> Path:
    """Measured cost curves and learned acceptance, per machine and model pair."""
    return _sub("calibration")


def conversations_db() -> Path:
    return data_dir() / "conversations.sqlite3"


def local_models_file() -> Path:
    """The list of GGUF files the user added by path."""
    return data_dir() / "local_models.json"
