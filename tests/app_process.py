"""Launch the real app in a subprocess on a free loopback port (for end-to-end tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def running_app(home: Path, target: Path, draft: Path | None, timeout: float = 240,
                extra_env: dict[str, str] | None = None):
    port = free_port()
    env = dict(os.environ, TANDEM_HOME=str(home), GRADIO_ANALYTICS_ENABLED="False",
               **(extra_env or {}))
    log = open(home.parent / f"app-{port}.log", "w")
    cmd = [sys.executable, "-m", "app", "--port", str(port), "--no-browser",
           "--target", str(target), "--draft", str(draft) if draft else "none"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"app exited: {(home.parent / f'app-{port}.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise TimeoutError("app did not start")
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
