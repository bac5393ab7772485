"""Conversations in SQLite (WAL) in the user data directory, written as replies stream so a
crash or restart loses nothing but the tokens after the last chunk written.

A regenerated reply never costs the old one: the new reply is a row of its own that stands in
for the old one only while this process streams it (``begin_reply(replaces=...)``); the old
reply leaves the conversation only when the new one is stored complete, in one transaction,
and is kept as an alternative (``alternatives``). A new reply that never completes — the engine
stopped, the app was killed — is kept as an alternative of the old reply, which stays.

Not for: rendering (``app.render``) or what is sent to the engine (``app.main``).
"""

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
# added after the first release: opened databases gain them (NULL for every older row)
COLUMNS = {"replaces": "INTEGER", "superseded_by": "INTEGER"}


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.executescript(SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
        for name, kind in COLUMNS.items():
            if name not in have:
                self._db.execute(f"ALTER TABLE messages ADD COLUMN {name} {kind}")
        self._streaming: set[int] = set()  # new replies this process is writing

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

    def begin_reply(self, conversation_id: int, replaces: int | None = None) -> int:
        """A new, empty assistant reply (written as it streams with ``update_message``);
        ``replaces``: the reply it regenerates, which stays until ``finish_reply``."""
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO messages(conversation_id, role, content, complete, replaces) "
                "VALUES (?, 'assistant', '', 0, ?)", (conversation_id, replaces))
            self._db.execute("UPDATE conversations SET updated=? WHERE id=?",
                             (time.time(), conversation_id))
            reply = int(cur.lastrowid)
            if replaces is not None:
                self._streaming.add(reply)
            return reply

    def finish_reply(self, message_id: int, content: str, stats: dict | None) -> None:
        """Store the reply complete; a regenerated one takes the old one's place, which is
        kept as an alternative (one transaction: a crash leaves one or the other)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("UPDATE messages SET content=?, stats=?, complete=1 WHERE id=?",
                                 (content, json.dumps(stats) if stats else None, message_id))
                self._db.execute("UPDATE messages SET superseded_by=? WHERE id=(SELECT "
                                 "replaces FROM messages WHERE id=?)", (message_id, message_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            finally:
                self._streaming.discard(message_id)

    def abandon_reply(self, message_id: int, content: str) -> None:
        """The reply will not complete (the engine stopped): keep its text; a regenerated one
        becomes an alternative of the reply it was to replace, which stays."""
        with self._lock:
            self._db.execute("UPDATE messages SET content=?, complete=0, superseded_by=replaces "
                             "WHERE id=?", (content, message_id))
            self._streaming.discard(message_id)

    def messages(self, conversation_id: int) -> list[dict]:
        """The conversation as it stands: replaced replies and unfinished regenerations are
        left out (see ``alternatives``), except the regeneration this process is streaming,
        which stands in for the reply it regenerates."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, role, content, stats, complete, replaces, superseded_by "
                "FROM messages WHERE conversation_id=? ORDER BY id",
                (conversation_id,)).fetchall()
            streaming = set(self._streaming)
        hidden = {replaces for i, *_, replaces, _ in rows if i in streaming}
        out = []
        for i, role, content, stats, done, replaces, superseded in rows:
            if superseded is not None or i in hidden:
                continue
            if replaces is not None and i not in streaming and not done:
                continue  # a regeneration that never finished: an alternative
            out.append({"id": i, "role": role, "content": content,
                        "stats": json.loads(stats) if stats else None,
                        "complete": bool(done)})
        return out

    def alternatives(self, message_id: int) -> list[dict]:
        """The other versions of a reply (the ones regenerating it replaced, and regenerations
        that never finished), oldest first; versions are linked through ``replaces``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, content, complete, replaces FROM messages WHERE conversation_id = "
                "(SELECT conversation_id FROM messages WHERE id=?) AND role='assistant' "
                "ORDER BY id", (message_id,)).fetchall()
            streaming = set(self._streaming)
        parent = {i: replaces for i, _, _, replaces in rows}

        def root(i: int) -> int:
            while parent.get(i) is not None:
                i = parent[i]
            return i

        family = root(message_id)
        return [{"id": i, "content": c, "complete": bool(done)} for i, c, done, _ in rows
                if i != message_id and i not in streaming and root(i) == family]

    def delete_messages_from(self, conversation_id: int, message_id: int) -> None:
        self._run("DELETE FROM messages WHERE conversation_id=? AND id>=?",
                  (conversation_id, message_id))

    def close(self) -> None:
        self._db.close()
