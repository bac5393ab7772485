"""The local API's bearer key: created at first run in ``api-key.txt`` in the user data
directory (readable by this user only), shown and replaceable in the UI, checked in constant
time. The key is never written anywhere else and never logged.

Not for: the Host and Origin checks (``app.security``), which run before the key is looked at.
"""

from __future__ import annotations

import hmac
import os
import secrets
import threading
from pathlib import Path

from engine import paths

FILE_NAME = "api-key.txt"
PREFIX = "tdm-"


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


class ApiKey:
    """The key file, read again when it changes on disk (another process may replace it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._key = ""
        if not path.is_file():
            self._write(new_key(), exclusive=True)

    @classmethod
    def in_data_dir(cls) -> ApiKey:
        return cls(paths.data_dir() / FILE_NAME)

    def value(self) -> str:
        with self._lock:
            try:
                stat = self.path.stat()
            except OSError:  # deleted by hand: make a new one rather than accept anything
                self._write(new_key(), exclusive=True)
                stat = self.path.stat()
            if self._seen != (stat.st_mtime_ns, stat.st_size):
                self._key = self.path.read_text(encoding="utf-8").strip()
                self._seen = (stat.st_mtime_ns, stat.st_size)
            return self._key

    def matches(self, presented: str) -> bool:
        key = self.value()
        return bool(key) and hmac.compare_digest(presented.encode(), key.encode())

    def replace(self) -> str:
        """A new key; the old one stops working at once."""
        key = new_key()
        with self._lock:
            self._write(key)
        return key

    def _write(self, key: str, exclusive: bool = False) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if exclusive:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it first: use theirs
                return
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(key + "\n")
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(key + "\n")
        os.replace(tmp, self.path)
        self._seen = None
