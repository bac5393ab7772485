"""The Models tab's handlers on real parts: a hub download (against the local hub look-alike)
streams progress and installs the file; Cancel stops it and keeps nothing; Remove deletes it
and refuses a model that is loaded; the pair line warns before loading what will not fit."""

from __future__ import annotations

import hashlib
import threading
import time

import pytest
from local_servers import hub

from app.main import Controller
from app.store import Store
from engine import catalog, models, paths
from engine import protocol as p
from engine.catalog import HubFile, ModelEntry
from engine.facade import EngineClient

BIG = 32 * 1024 * 1024  # several of huggingface_hub's 10 MB chunks: progress moves, cancel bites


@pytest.fixture()
def controller(tiny_dir):
    engine = EngineClient()
    ctl = Controller(engine, Store(paths.conversations_db()), str(tiny_dir / "target.gguf"),
                     None)
    ctl.loaded.wait(120)
    yield ctl
    engine.close()


@pytest.fixture()
def hub_entry(tiny_dir, monkeypatch):
    data = (tiny_dir / "target.gguf").read_bytes()
    data += b"\0" * (BIG - len(data))  # trailing bytes after the tensors: still a valid GGUF
    entry = ModelEntry("test-hub-tiny", "test", "tiny", len(data),
                       hashlib.sha256(data).hexdigest(), "test",
                       HubFile("tandem/tiny-GGUF", "tiny.gguf", "0" * 40))
    monkeypatch.setattr(catalog, "CATALOG", [*catalog.CATALOG, entry])
    return entry, data


def test_download_progress_then_remove(controller, hub_entry, monkeypatch):
    entry, data = hub_entry
    with hub({"tandem/tiny-GGUF/tiny.gguf": data}, seconds_per_mb=0.05) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        updates = [first for first, *_ in controller.download(entry.id)]
    assert any("<progress" in u for u in updates[:-1]), updates
    assert updates[-1].startswith("Downloaded test-hub-tiny")
    assert models.installed_path(entry).read_bytes() == data
    message, target_pick, *_ = controller.remove_model(entry.id)
    assert message.startswith("Removed") and not models.installed_path(entry).exists()
    assert all(value != entry.id or "not downloaded" in label
               for label, value in target_pick["choices"])


def test_cancel_keeps_nothing(controller, hub_entry, monkeypatch):
    entry, data = hub_entry
    with hub({"tandem/tiny-GGUF/tiny.gguf": data}, seconds_per_mb=0.25) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        threading.Timer(1.0, controller.cancel_download).start()
        started = time.monotonic()
        updates = [first for first, *_ in controller.download(entry.id)]
    assert time.monotonic() - started < 6  # the full download would take 8 s
    assert "cancelled" in updates[-1]
    assert not models.installed_path(entry).exists()
    assert not list(models.installed_path(entry).parent.glob("*.partial"))


def test_loaded_model_is_not_removed_and_fit_is_shown(controller, tiny_dir):
    target = str(tiny_dir / "target.gguf")
    message, *_ = controller.remove_model(target)
    assert "is loaded" in message
    line = controller.pair_info(target, "none")
    assert "Memory: fits" in line and "GiB available" in line
    huge = catalog.by_id("llama-3.1-8b-instruct-q4_k_m")
    assert huge is not None and "Memory:" in controller.pair_info(huge.id, "none")


def test_hardware_tab_shows_costs_seen_while_answering(controller):
    markdown, frame = controller.hardware()
    assert "target pass, seen while answering" not in set(frame["series"])
    assert "If every draft were accepted" in markdown and "ngram" in markdown
    assert "**Suffix index**" in markdown and "of 64 MiB" in markdown  # the default bound
    request = p.ChatRequest((p.Message("user", "hello"),), max_tokens=24, mode="off")
    got_done = []
    # a consumer that stops reading at the final event (as any() does) must not hang the engine
    reader = threading.Thread(daemon=True, target=lambda: got_done.append(
        any(isinstance(event, p.Done) for event in controller.engine.chat(request))))
    reader.start()
    reader.join(60)
    assert not reader.is_alive() and got_done == [True]
    markdown, frame = controller.hardware()
    seen = frame[frame["series"] == "target pass, seen while answering"]
    assert list(seen["batch"]) == [1]  # plain decoding: one-token passes only
    assert (seen["ms"] > 0).all()


def test_compare_runs_plain_then_speculative_and_returns(controller):
    conv = controller.store.create("compare")
    controller.store.add_message(conv, "user", "Repeat after me: one two three one two three")
    result = []
    worker = threading.Thread(daemon=True,
                              target=lambda: result.append(controller.compare(conv, 32)))
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "Compare hung after the plain reply"
    assert "**Plain**" in result[0] and "identical ✓" in result[0]
