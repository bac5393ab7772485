"""The conversation store on a real SQLite file: a regenerated reply never costs the old one.
The old reply stays in the conversation until the new one is stored complete (then it is kept
as an alternative); a new reply that never completes (a crash, the engine stopping) is kept as
an alternative of the old one, which stays; reopening the file — what a restart sees — shows
the conversation as it was, text for text."""

from __future__ import annotations

import sqlite3

from app.store import Store


def thread(store: Store, conv: int) -> list[tuple[str, str, bool]]:
    return [(m["role"], m["content"], m["complete"]) for m in store.messages(conv)]


def conversation(tmp_path):
    path = tmp_path / "conversations.sqlite3"
    store = Store(path)
    conv = store.create("fox")
    store.add_message(conv, "user", "tell me about the fox")
    old = store.add_message(conv, "assistant", "The quick brown fox.")
    return path, store, conv, old


def test_new_reply_replaces_the_old_only_once_stored(tmp_path):
    path, store, conv, old = conversation(tmp_path)
    new = store.begin_reply(conv, replaces=old)
    assert thread(store, conv) == [("user", "tell me about the fox", True),
                                   ("assistant", "", False)]  # shown in place while it streams
    store.update_message(new, "A fox")
    assert thread(Store(path), conv)[-1] == ("assistant", "The quick brown fox.", True)
    store.finish_reply(new, "A fox jumps.", {"tokens": 3})
    assert thread(store, conv)[-1] == ("assistant", "A fox jumps.", True)
    assert thread(Store(path), conv)[-1] == ("assistant", "A fox jumps.", True)
    assert [m["content"] for m in store.alternatives(new)] == ["The quick brown fox."]


def test_a_crash_while_regenerating_loses_nothing(tmp_path):
    path, store, conv, old = conversation(tmp_path)
    new = store.begin_reply(conv, replaces=old)
    store.update_message(new, "A fox that was cut")
    store.close()  # the process dies here: nothing else is written
    reopened = Store(path)
    assert thread(reopened, conv) == [("user", "tell me about the fox", True),
                                      ("assistant", "The quick brown fox.", True)]
    alternatives = reopened.alternatives(old)
    assert [(m["content"], m["complete"]) for m in alternatives] == [("A fox that was cut", False)]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_an_engine_error_while_regenerating_keeps_the_old_reply(tmp_path):
    path, store, conv, old = conversation(tmp_path)
    new = store.begin_reply(conv, replaces=old)
    store.update_message(new, "half")
    store.abandon_reply(new, "half a reply")
    assert thread(store, conv)[-1] == ("assistant", "The quick brown fox.", True)
    assert [m["content"] for m in store.alternatives(old)] == ["half a reply"]
    # a second regeneration, this time stored: the first attempt stays an alternative too
    again = store.begin_reply(conv, replaces=old)
    store.finish_reply(again, "Foxes are quick.", None)
    assert thread(Store(path), conv)[-1] == ("assistant", "Foxes are quick.", True)
    assert sorted(m["content"] for m in store.alternatives(again)) == [
        "The quick brown fox.", "half a reply"]


def test_an_ordinary_reply_is_written_as_it_streams(tmp_path):
    path, store, conv, _ = conversation(tmp_path)
    store.add_message(conv, "user", "more")
    reply = store.begin_reply(conv)
    store.update_message(reply, "so far")
    assert thread(Store(path), conv)[-1] == ("assistant", "so far", False)
    store.finish_reply(reply, "so far, and done", None)
    assert thread(Store(path), conv)[-1] == ("assistant", "so far, and done", True)


def test_an_old_database_gains_the_new_columns(tmp_path):
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE conversations (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT NOT NULL,
            system_prompt TEXT NOT NULL DEFAULT '', created REAL NOT NULL, updated REAL NOT NULL);
        CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL, content TEXT NOT NULL, stats TEXT,
            complete INTEGER NOT NULL DEFAULT 1);
        INSERT INTO conversations VALUES (1, 'kept', '', 0, 0);
        INSERT INTO messages VALUES (1, 1, 'user', 'hello', NULL, 1);
        INSERT INTO messages VALUES (2, 1, 'assistant', 'hi there', NULL, 1);
    """)
    db.commit()
    db.close()
    store = Store(path)
    assert thread(store, 1) == [("user", "hello", True), ("assistant", "hi there", True)]
    new = store.begin_reply(1, replaces=2)
    store.finish_reply(new, "hello again", None)
    assert thread(Store(path), 1)[-1] == ("assistant", "hello again", True)
