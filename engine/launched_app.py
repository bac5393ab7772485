"""The real app (``python -m app``: its worker process and its HTTP server) started in a
subprocess on a free loopback port with its own data directory — for the API benchmark and
the end-to-end tests, which must see what a user's launch does.

Not for: starting the app for a user (``launcher.py``, standard library only) or serving
(``app``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LaunchedApp:
    """``python -m app --target … --draft …`` with ``TANDEM_HOME=home``; output to ``log``
    (default: ``app-PORT.log`` beside ``home``). Use as a context manager, or call ``close``."""

    def __init__(self, home: Path, target: Path, draft: Path | None, log: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.home, self.port = home, free_port()
        self.log_path = log or home.parent / f"app-{self.port}.log"
        self.url = f"http://127.0.0.1:{self.port}/"
        self.base = self.url + "v1"
        env = dict(os.environ, TANDEM_HOME=str(home), GRADIO_ANALYTICS_ENABLED="False",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                           os.environ.get("PYTHONPATH")])),
                   **(extra_env or {}))
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "--port", str(self.port), "--no-browser",
             "--target", str(target), "--draft", str(draft) if draft else "none"],
            cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def _check_running(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the app exited: {self.log_path.read_text()[-4000:]}")

    def wait_listening(self, timeout: float = 240) -> None:
        """Until the HTTP server accepts connections (the models may still be loading)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_running()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("the app did not start listening")

    def headers(self) -> dict[str, str]:
        key = (self.home / "api-key.txt").read_text().strip()
        return {"Authorization": f"Bearer {key}"}

    def model(self) -> str:
        import httpx

        return httpx.get(self.base + "/models", headers=self.headers()).json()["data"][0]["id"]

    def wait_ready(self, model: str | None = None, timeout: float = 600) -> None:
        """Until the first load (with its calibration) is done: a one-token reply comes back
        through the API."""
        import httpx

        self.wait_listening(timeout)
        deadline, last = time.monotonic() + timeout, "no answer"
        while time.monotonic() < deadline:
            self._check_running()
            try:
                reply = httpx.post(self.base + "/chat/completions", timeout=timeout,
                                   headers=self.headers(),
                                   json={"model": model or self.model(), "max_tokens": 1,
                                         "messages": [{"role": "user", "content": "hi"}]})
                if reply.status_code == 200:
                    return
                last = reply.text
            except (httpx.HTTPError, OSError) as error:
                last = str(error)
            time.sleep(1)
        raise TimeoutError(f"the app did not answer: {last}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def __enter__(self) -> LaunchedApp:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
