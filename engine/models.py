"""Installed models: what is on disk, resolving an id or path to a file, and the CLI.

    python -m engine.models list            # the catalog, with what is installed
    python -m engine.models fetch [ID ...]  # default: the offline defaults
    python -m engine.models verify [ID ...] # re-hash installed files
    python -m engine.models add PATH        # register a local .gguf
    python -m engine.models remove ID       # delete a downloaded model

Not for: the catalog's contents (``engine.catalog``) or the download mechanics
(``engine.sources``).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from engine import catalog, paths, sources
from engine.catalog import ModelEntry
from engine.errors import ChecksumMismatch, ModelNotFound, NotInstalled, TandemError
from engine.gguf_check import validate_gguf

LOCAL_PREFIX = "local:"


def installed_path(entry: ModelEntry) -> Path:
    return paths.models_dir() / entry.filename


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _write_marker(path: Path, sha256: str | None) -> None:
    stat = path.stat()
    _marker(path).write_text(json.dumps(
        {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}))


def is_installed(entry: ModelEntry) -> bool:
    """Present and unchanged since it was verified (cheap: no re-hash)."""
    path = installed_path(entry)
    try:
        mark = json.loads(_marker(path).read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return False
    return mark.get("size") == stat.st_size and mark.get("mtime_ns") == stat.st_mtime_ns


def fetch(entry: ModelEntry, progress: sources.Progress | None = None,
          cancel: threading.Event | None = None) -> Path:
    path = installed_path(entry)
    if is_installed(entry):
        return path
    path.unlink(missing_ok=True)
    sources.fetch(entry, path, progress or sources._no_progress, cancel)
    _write_marker(path, entry.sha256)  # sources checked the file against this value
    return path


def verify(entry: ModelEntry) -> None:
    """Re-hash an installed file; a mismatch removes it so the next fetch replaces it."""
    path = installed_path(entry)
    if not path.is_file():
        raise NotInstalled(entry.id)
    expected = entry.sha256
    actual = sources.sha256_of(path)
    if expected and actual != expected:
        path.unlink()
        _marker(path).unlink(missing_ok=True)
        raise ChecksumMismatch(entry.id, expected, actual)
    _write_marker(path, actual)


def remove(model_id: str) -> None:
    if model_id.startswith(LOCAL_PREFIX):
        entries = _local_entries()
        entries.pop(model_id, None)
        _save_local_entries(entries)
        return
    entry = catalog.by_id(model_id)
    if entry is None:
        raise ModelNotFound(model_id)
    path = installed_path(entry)
    path.unlink(missing_ok=True)
    _marker(path).unlink(missing_ok=True)


def _local_entries() -> dict[str, str]:
    try:
        return json.loads(paths.local_models_file().read_text())
    except (OSError, ValueError):
        return {}


def _save_local_entries(entries: dict[str, str]) -> None:
    tmp = paths.local_models_file().with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=1))
    tmp.replace(paths.local_models_file())


def add_local(path: str | Path) -> str:
    """Register a local GGUF after validating its structure; returns its id. Its bytes are not
    checked against any trusted hash: it is listed as unverified."""
    resolved = Path(path).expanduser().resolve()
    validate_gguf(resolved)
    model_id = LOCAL_PREFIX + resolved.stem
    entries = _local_entries()
    entries[model_id] = str(resolved)
    _save_local_entries(entries)
    return model_id


@dataclass(frozen=True)
class KnownModel:
    """One row of the model picker: a catalog entry or a local file."""

    id: str
    family: str
    params: str
    size: int
    installed: bool
    source: str
    path: Path | None
    verified: bool = True  # False: a file added by path, no trusted hash checked
    note: str = ""  # why a catalog entry cannot be downloaded ("" when it can)


def known_models() -> list[KnownModel]:
    rows = []
    for entry in catalog.CATALOG:
        installed = is_installed(entry)
        kind = "offline default" if entry.offline_default else "hub"
        rows.append(KnownModel(entry.id, entry.family, entry.params, entry.size, installed, kind,
                               installed_path(entry) if installed else None,
                               note="" if installed else entry.not_downloadable))
    for model_id, location in _local_entries().items():
        file = Path(location)
        exists = file.is_file()
        rows.append(KnownModel(model_id, "local", "?", file.stat().st_size if exists else 0,
                               exists, "local file (unverified)", file, verified=False))
    return rows


def resolve(name: str | Path) -> Path:
    """A catalog id, a ``local:`` id or a path to a .gguf -> the file to load."""
    text = str(name)
    entry = catalog.by_id(text)
    if entry is not None:
        if not is_installed(entry):
            raise NotInstalled(entry.id)
        return installed_path(entry)
    if text in _local_entries():
        return Path(_local_entries()[text])
    candidate = Path(text).expanduser()
    if candidate.is_file():
        return candidate.resolve()
    raise ModelNotFound(text)


def _print_progress(done: int, total: int, message: str) -> None:
    pct = 100.0 * done / total if total else 0.0
    print(f"\r{message}: {pct:5.1f}%", end="", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list")
    for name in ("fetch", "verify"):
        cmd = sub.add_parser(name)
        cmd.add_argument("ids", nargs="*")
    sub.add_parser("add").add_argument("path")
    sub.add_parser("remove").add_argument("id")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            print(f"{'id':40} {'family':9} {'params':6} {'size':>9}  {'installed':9}  source")
            for row in known_models():
                note = f" — {row.note}" if row.note else ""
                print(f"{row.id:40} {row.family:9} {row.params:6} {row.size / 1e6:8.0f}M  "
                      f"{'yes' if row.installed else 'no':9}  {row.source}{note}")
        elif args.command in ("fetch", "verify"):
            ids = args.ids or [entry.id for entry in catalog.offline_defaults()]
            for model_id in ids:
                entry = catalog.by_id(model_id)
                if entry is None:
                    raise ModelNotFound(model_id)
                if args.command == "fetch":
                    print(f"{model_id}: {'ok' if is_installed(entry) else 'fetching'}",
                          file=sys.stderr)
                    fetch(entry, _print_progress)
                    print(f"\r{model_id}: installed at {installed_path(entry)}", file=sys.stderr)
                else:
                    verify(entry)
                    print(f"{model_id}: ok")
        elif args.command == "add":
            print(add_local(args.path))
        elif args.command == "remove":
            remove(args.id)
    except TandemError as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
