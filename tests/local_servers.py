"""Local HTTP servers for download tests: a PEP 503 package index and a Hugging Face Hub
look-alike (the resolve endpoint with the headers huggingface_hub reads)."""

from __future__ import annotations

import hashlib
import http.server
import threading
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path


def build_wheel(folder: Path, name: str, version: str, files: dict[str, bytes]) -> Path:
    module = name.replace("-", "_")
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    info = f"{module}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(f"{module}/{path}", data)
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: "
                                        f"{version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: tandem-tests\n"
                                     "Root-Is-Purelib: true\nTag: py3-none-any\n")
        record = [f"{module}/{p},," for p in files] + [f"{info}/{n},," for n in
                                                      ("METADATA", "WHEEL", "RECORD")]
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@contextmanager
def serve(handler_factory):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_factory)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def package_index(wheels: list[Path]):
    """Serve wheels as a simple index; ``requests`` records the wheel files fetched."""
    by_project: dict[str, list[Path]] = {}
    for wheel in wheels:
        project = wheel.name.split("-")[0].replace("_", "-").lower()
        by_project.setdefault(project, []).append(wheel)
    requests: list[str] = []

    class Handler(_Quiet):
        def do_GET(self):
            parts = [p for p in self.path.split("/") if p]
            if len(parts) == 2 and parts[0] == "simple":
                links = "".join(f'<a href="/files/{w.name}">{w.name}</a>\n'
                                for w in by_project.get(parts[1].lower(), []))
                if not links:
                    self.send_error(404)
                    return
                body = f"<html><body>{links}</body></html>".encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif len(parts) == 2 and parts[0] == "files":
                match = [w for ws in by_project.values() for w in ws if w.name == parts[1]]
                if not match:
                    self.send_error(404)
                    return
                requests.append(parts[1])
                data = match[0].read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            else:
                self.send_error(404)

    with serve(Handler) as (url, server):
        yield url, requests, by_project


@contextmanager
def hub(files: dict[str, bytes], etag_override: str | None = None, seconds_per_mb: float = 0.0,
        commits: tuple[str, ...] = (), requests: list[str] | None = None):
    """Serve ``{"org/repo/file.gguf": data}`` at /org/repo/resolve/<revision>/file.gguf,
    optionally throttled (``seconds_per_mb``) so a download can be watched and cancelled.
    ``commits``: the only revisions served (any, if empty); ``requests`` records the revision
    of every request."""
    commit = commits[0] if commits else "0" * 40

    class Handler(_Quiet):
        def _lookup(self):
            parts = self.path.split("?")[0].strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return None
            if requests is not None:
                requests.append(parts[3])
            if commits and parts[3] not in commits:
                return None
            return files.get("/".join(parts[:2] + parts[4:]))

        def _head(self, data: bytes):
            sha = etag_override or hashlib.sha256(data).hexdigest()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", f'"{sha}"')
            self.send_header("X-Repo-Commit", commit)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()

        def _respond(self, with_body: bool):
            data = self._lookup()
            if data is None:
                self.send_error(404)
                return
            self._head(data)
            if with_body:
                step = 64 * 1024
                for start in range(0, len(data), step):
                    try:
                        self.wfile.write(data[start:start + step])
                    except (BrokenPipeError, ConnectionResetError):
                        return
                    time.sleep(seconds_per_mb * step / 1e6)

        def do_HEAD(self):
            self._respond(with_body=False)

        def do_GET(self):
            self._respond(with_body=True)

    with serve(Handler) as (url, server):
        yield url
