"""Conversations in SQLite (WAL) in the user data directory, written as replies stream so a
crash or restart loses at most the reply in flight."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    system_prompt TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    stats TEXT,
    complete INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, id);
"""


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)

    def _run(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def create(self, title: str = "New chat", system_prompt: str = "") -> int:
        now = time.time()
        cur = self._run("INSERT INTO conversations(title, system_prompt, created, updated) "
                        "VALUES (?, ?, ?, ?)", (title, system_prompt, now, now))
        return int(cur.lastrowid)

    def list(self) -> list[tuple[int, str]]:
        rows = self._run("SELECT id, title FROM conversations ORDER BY updated DESC").fetchall()
        return [(int(i), str(t)) for i, t in rows]

    def rename(self, conversation_id: int, title: str) -> None:
        self._run("UPDATE conversations SET title=? WHERE id=?", (title.strip() or "Untitled",
                                                                  conversation_id))

    def delete(self, conversation_id: int) -> None:
        self._run("DELETE FROM conversations WHERE id=?", (conversation_id,))

    def set_system_prompt(self, conversation_id: int, text: str) -> None:
        self._run("UPDATE conversations SET system_prompt=? WHERE id=?", (text, conversation_id))

    def system_prompt(self, conversation_id: int) -> str:
        row = self._run("SELECT system_prompt FROM conversations WHERE id=?",
                        (conversation_id,)).fetchone()
        return row[0] if row else ""

    def add_message(self, conversation_id: int, role: str, content: str,
                    complete: bool = True) -> int:
        cur = self._run("INSERT INTO messages(conversation_id, role, content, complete) "
                        "VALUES (?, ?, ?, ?)", (conversation_id, role, content, int(complete)))
        self._run("UPDATE conversations SET updated=? WHERE id=?", (time.time(), conversation_id))
        return int(cur.lastrowid)

    def update_message(self, message_id: int, content: str, stats: dict | None = None,
                       complete: bool = False) -> None:
        self._run("UPDATE messages SET content=?, stats=?, complete=? WHERE id=?",
                  (content, json.dumps(stats) if stats else None, int(complete), message_id))

    def messages(self, conversation_id: int) -> list[dict]:
        rows = self._run("SELECT id, role, content, stats, complete FROM messages "
                         "WHERE conversation_id=? ORDER BY id", (conversation_id,)).fetchall()
        return [{"id": i, "role": r, "content": c, "stats": json.loads(s) if s else None,
                 "complete": bool(done)} for i, r, c, s, done in rows]

    def delete_messages_from(self, conversation_id: int, message_id: int) -> None:
        self._run("DELETE FROM messages WHERE conversation_id=? AND id>=?",
                  (conversation_id, message_id))

    def close(self) -> None:
        self._db.close()
