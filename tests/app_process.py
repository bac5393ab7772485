"""Launch the real app in a subprocess on a free loopback port (for end-to-end tests): a thin
context manager over ``engine.launched_app``."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from engine.launched_app import ROOT, LaunchedApp, free_port

__all__ = ["ROOT", "free_port", "running_app"]


@contextmanager
def running_app(home: Path, target: Path, draft: Path | None, timeout: float = 240,
                extra_env: dict[str, str] | None = None):
    """Yields (page URL, process) once the server listens; stops the app afterwards."""
    with LaunchedApp(home, target, draft, extra_env=extra_env) as app:
        app.wait_listening(timeout)
        yield app.url, app.proc
