"""The suffix drafter inside a session: what was said before — another conversation or API call
under the same system prompt — drafts the repeat of it, losslessly; a different system prompt
is a different store."""

from __future__ import annotations

import pytest

from engine.session import ChatRequest, LoadRequest, Session


def ask(session: Session, system: str, text: str = "for item in items: print(item)") -> dict:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text}]
    request = ChatRequest(messages, max_tokens=48, mode="fixed", window=8, drafter="suffix")
    return [e for e in session.chat(request) if e["type"] == "done"][0]


def test_a_repeated_request_is_drafted_from_memory_per_system_prompt(tiny_dir):
    session = Session()
    try:
        session.load(LoadRequest(str(tiny_dir / "target.gguf")))
        first = ask(session, "You are terse.")
        again = ask(session, "You are terse.")
        other = ask(session, "You are verbose.", )
        plain = [e for e in session.chat(ChatRequest(
            [{"role": "system", "content": "You are verbose."},
             {"role": "user", "content": "for item in items: print(item)"}],
            max_tokens=48, mode="off")) if e["type"] == "done"][0]
    finally:
        session.close()
    assert again["text"] == first["text"] and other["text"] == plain["text"]  # lossless
    assert again["stats"]["accepted"] >= 0.8 * again["stats"]["tokens"]
    assert again["stats"]["accepted_by"] == {"suffix": again["stats"]["accepted"]}
    # under another system prompt only the conversation itself is indexed
    assert other["stats"]["accepted"] < 0.5 * again["stats"]["accepted"]


def test_the_acceptance_memory_lives_where_the_session_is_told(tiny_dir, tmp_path):
    """The benchmark gives its session an empty acceptance memory, so auto's first steps do
    not depend on what earlier replies on the machine taught it; the app keeps its own."""
    from engine import paths

    request = ChatRequest([{"role": "user", "content": "for item in items: print(item)"}])
    for directory in (tmp_path, None):
        session = Session(acceptance_dir=directory)
        try:
            session.load(LoadRequest(str(tiny_dir / "target.gguf")))
            memory = session.policy(request).memory
        finally:
            session.close()
        assert memory.path.parent == (directory or paths.calibration_dir())


def test_the_memory_bound_is_a_setting_with_a_clear_error(tiny_dir, monkeypatch):
    """``TANDEM_SUFFIX_MEMORY`` (MiB) bounds the suffix index; the Hardware tab shows its use.
    A bad value is refused with the setting's name before the loaded pair is let go."""
    from engine.errors import TandemError
    from engine.worker import engine_info

    monkeypatch.setenv("TANDEM_SUFFIX_MEMORY", "8")
    session = Session()
    try:
        session.load(LoadRequest(str(tiny_dir / "target.gguf")))
        assert session.drafters()["suffix"].max_bytes == 8 * 2**20
        before = session.info()["suffix_memory"]["used"]
        ask(session, "You are terse.")
        memory = session.info()["suffix_memory"]
        assert memory["limit"] == 8 * 2**20 and before < memory["used"] <= memory["limit"]
        assert engine_info(session.info()).suffix_memory == (memory["used"], memory["limit"])
        for bad in ("0", "lots", "1e9", "nan", "-5"):
            monkeypatch.setenv("TANDEM_SUFFIX_MEMORY", bad)
            with pytest.raises(TandemError, match="TANDEM_SUFFIX_MEMORY"):
                session.load(LoadRequest(str(tiny_dir / "target.gguf")))
            assert session.target is not None and ask(session, "You are terse.")["text"]
    finally:
        session.close()
