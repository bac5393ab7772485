"""Each bench run starts from an empty cache. A prompt whose first tokens are reused from the
previous request's cache is prefilled in other batch sizes, which round differently, so its
greedy text can differ at a near tie from the same prompt prefilled whole (seen: edit-16's
first plain run after edit-15 differed from every later run of it, plain and speculative
alike) — the divergence check must compare runs that start alike."""

from __future__ import annotations

import argparse

from engine.bench import run_one
from engine.session import ChatRequest, LoadRequest, Session

MESSAGES = [{"role": "user", "content": "for item in items: print(item) for item in items:"}]


def test_every_run_prefills_its_prompt_into_an_empty_cache(tiny_dir):
    session = Session()
    try:
        session.load(LoadRequest(str(tiny_dir / "target.gguf")))
        # outside the bench a repeated prompt reuses its cache, and the statistics say so
        request = ChatRequest(MESSAGES, max_tokens=8, mode="off")
        stats = [[e for e in session.chat(request) if e["type"] == "done"][0]["stats"]
                 for _ in range(2)]
        assert stats[0]["cache_reused"] < stats[1]["cache_reused"] == stats[1]["prompt_tokens"] - 1
        args = argparse.Namespace(max_tokens=8, temperature=0.0, seed=0, keep_memory=False,
                                  costs=[])
        prompt = {"id": "p", "category": "code", "messages": MESSAGES}
        runs = [run_one(session, prompt, mode, drafter, args)
                for mode, drafter in (("plain", "none"), ("fixed:4", "ngram"), ("plain", "none"))]
    finally:
        session.close()
    assert [run["cache_reused"] for run in runs] == [0, 0, 0]
    assert len({run["text"] for run in runs}) == 1
