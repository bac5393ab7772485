#!/usr/bin/env python3
"""Tandem's one entry point (standard library only, Python 3.9+).

    python3 launcher.py                 set up if needed, fetch the offline models, start the app
    python3 launcher.py test            set up if needed, run the whole test suite
    python3 launcher.py bench [ARGS]    run the benchmark on the dev prompts
    python3 launcher.py models [ARGS]   list / fetch / verify models

Set-up means: a private virtual environment in ``.venv`` next to this file, the pinned
requirements installed into it (again only when requirements.txt or the accelerator choice
changes), and the offline default models fetched (only missing or corrupt ones).

Double-click wrappers live in ``assets/`` (Tandem.bat, Tandem.command, tandem.sh); each only
finds Python and calls this file. On Linux the first run also writes ``Tandem.desktop``.
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("TANDEM_VENV", ROOT / ".venv"))
STAMP = VENV / "tandem-install.json"
LOG = ROOT / "tandem-launcher.log"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class LaunchError(Exception):
    """A failure with a sentence the user can act on."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.fix = fix


def log(message: str) -> None:
    print(message, flush=True)
    with open(LOG, "a", encoding="utf-8") as handle:
        handle.write(message + "\n")


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def remembered_accelerator() -> str | None:
    try:
        return json.loads(STAMP.read_text()).get("accelerator")
    except (OSError, ValueError):
        return None


def detect_accelerator(force_cpu: bool, redetect: bool = False) -> str:
    """The build to use: --cpu forces CPU; otherwise the choice remembered from the last
    successful install, else what the machine has (NVIDIA via nvidia-smi, Apple Silicon)."""
    if force_cpu:
        return "cpu"
    if not redetect and (remembered := remembered_accelerator()):
        return remembered
    if shutil.which("nvidia-smi"):
        try:
            subprocess.run(["nvidia-smi", "-L"], check=True, capture_output=True, timeout=20)
            return "cuda"
        except (OSError, subprocess.SubprocessError):
            pass
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "metal"
    return "cpu"


CMAKE_ARGS = {"cuda": "-DGGML_CUDA=on", "metal": "-DGGML_METAL=on", "cpu": ""}
# ggml's AMX kernels (compiled in by -march=native on Intel Xeons with AMX) crash in the first
# evaluation of a Q4_K_M model (ggml-org/llama.cpp#20824, reproduced on this project's own
# machines): llama.cpp is built without them. The repacked AVX-512 kernels stay.
NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def compiler_accepts(flags: str) -> bool:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return False
    try:
        return subprocess.run([compiler, *flags.split(), "-E", "-x", "c", os.devnull],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def build_settings(accelerator: str) -> dict[str, str]:
    """Environment variables for compiling llama.cpp with this accelerator."""
    settings = {}
    if CMAKE_ARGS[accelerator]:
        settings["CMAKE_ARGS"] = (os.environ.get("CMAKE_ARGS", "") + " "
                                  + CMAKE_ARGS[accelerator]).strip()
    if platform.machine().lower() in ("x86_64", "amd64") and os.name != "nt" \
            and compiler_accepts(NO_AMX_FLAGS):
        for name in ("CFLAGS", "CXXFLAGS"):
            settings[name] = (os.environ.get(name, "") + " " + NO_AMX_FLAGS).strip()
    return settings


def requirements_hash(requirements: Path, accelerator: str) -> str:
    digest = hashlib.sha256(requirements.read_bytes())
    digest.update(accelerator.encode())
    digest.update(json.dumps(build_settings(accelerator), sort_keys=True).encode())
    return digest.hexdigest()


def wheel_cache() -> Path:
    """Tandem's own cache of compiled llama-cpp-python wheels, one folder per build setting
    (pip's wheel cache keys a build by the source alone, so it would hand back a wheel
    compiled with other flags)."""
    if os.environ.get("TANDEM_WHEEL_CACHE"):
        return Path(os.environ["TANDEM_WHEEL_CACHE"])
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "tandem" / "wheels"
    if os.name == "nt":
        return Path(os.environ.get("LOCALAPPDATA", Path.home())) / "tandem" / "wheels"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tandem" / "wheels"


def llama_wheel(python: Path, requirements: Path, settings: dict[str, str]) -> Path | None:
    """The pinned llama-cpp-python compiled with ``settings``: from the wheel cache, or built
    into it (the several-minute compile). None when the requirements do not pin it."""
    pin = re.search(r"^llama-cpp-python==(\S+)", requirements.read_text(), re.MULTILINE)
    if not pin:
        return None
    key = json.dumps([pin.group(1), settings, platform.python_version(), platform.machine()],
                     sort_keys=True)
    folder = wheel_cache() / hashlib.sha256(key.encode()).hexdigest()[:16]
    built = sorted(folder.glob("llama_cpp_python-*.whl"))
    if built:
        return built[-1]
    log("Compiling llama.cpp (llama-cpp-python " + pin.group(1) + ") …")
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    code = run_logged([str(python), "-m", "pip", "wheel", "--disable-pip-version-check",
                       "--no-deps", "--no-cache-dir", "-w", str(staging),
                       "llama-cpp-python==" + pin.group(1)], env={**os.environ, **settings})
    built = sorted(staging.glob("llama_cpp_python-*.whl"))
    if code != 0 or not built:
        raise LaunchError("Compiling llama.cpp failed (see the output above).",
                          likely_fix_for_install_failure())
    shutil.rmtree(folder, ignore_errors=True)
    staging.replace(folder)
    return folder / built[-1].name


def run_logged(cmd: list[str], env: dict | None = None) -> int:
    """Run a command, echoing its output to the console and the log file. Progress updates
    ending in a carriage return redraw one console line and stay out of the log."""
    with open(LOG, "a", encoding="utf-8") as handle:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert proc.stdout is not None
        pending, width = b"", 0
        while True:
            chunk = proc.stdout.read1(65536)
            pending += chunk
            while pending:
                ends = [i for i in (pending.find(b"\n"), pending.find(b"\r")) if i >= 0]
                cut = min(ends) if ends else len(pending)
                if chunk and (not ends or pending[cut:] == b"\r"):
                    break  # wait for the rest of the line (or the \n of a \r\n)
                text = pending[:cut].decode("utf-8", "replace")
                separator = pending[cut:cut + 2]
                newline = not ends or separator[:1] == b"\n" or separator == b"\r\n"
                pending = pending[cut + (2 if separator == b"\r\n" else 1):]
                if newline:
                    handle.write(text + "\n")
                    if not text.startswith("WARNING: Location"):
                        sys.stdout.write("\r" * bool(width) + text.ljust(width) + "\n")
                    width = 0
                elif text:
                    sys.stdout.write("\r" + text.ljust(width))
                    width = len(text)
                sys.stdout.flush()
            if not chunk:
                return proc.wait()


def ensure_venv(requirements: Path, accelerator: str) -> Path:
    python = venv_python()
    if not python.exists():
        log(f"Creating a private Python environment in {VENV} …")
        try:
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        except subprocess.CalledProcessError as error:
            raise LaunchError("Could not create the virtual environment.",
                              "Install Python's venv module (on Debian/Ubuntu: "
                              "apt install python3-venv).") from error
    wanted = requirements_hash(requirements, accelerator)
    try:
        installed = json.loads(STAMP.read_text()).get("hash")
    except (OSError, ValueError):
        installed = None
    if installed == wanted:
        return python
    log(f"Installing Tandem's requirements ({accelerator} build). The first install compiles "
        "llama.cpp from source and takes several minutes (about 8-9 on 2 cores); later "
        "starts skip this.")
    free = shutil.disk_usage(VENV).free
    if free < 2 * 1024**3:
        raise LaunchError(f"Only {free / 1024**3:.1f} GiB of disk space is free.",
                          "Free at least 2 GiB (plus about 2 GiB for the models) and retry.")
    settings = build_settings(accelerator)
    env = {**os.environ, **settings}
    wheel = llama_wheel(python, requirements, settings)
    code = 0
    if wheel is not None:
        code = run_logged([str(python), "-m", "pip", "install", "--disable-pip-version-check",
                           "--no-deps", "--force-reinstall", str(wheel)], env=env)
    code = code or run_logged([str(python), "-m", "pip", "install",
                               "--disable-pip-version-check", "-r", str(requirements)], env=env)
    if code != 0:
        raise LaunchError("Installing the requirements failed (see the output above).",
                          likely_fix_for_install_failure())
    STAMP.write_text(json.dumps({"hash": wanted, "accelerator": accelerator,
                                 "time": time.strftime("%Y-%m-%d %H:%M:%S")}))
    return python


def likely_fix_for_install_failure() -> str:
    tail = LOG.read_text(encoding="utf-8", errors="replace")[-6000:].lower()
    if "no space left" in tail:
        return "The disk is full: free a few GiB and run the launcher again."
    if any(word in tail for word in ("could not find a version", "connection", "resolve",
                                     "network is unreachable", "temporary failure")):
        return ("A package could not be downloaded: check the internet connection (or the "
                "package name/version in requirements.txt) and run the launcher again.")
    if any(word in tail for word in ("cmake", "compiler", "gcc", "cc1", "c++")):
        return ("llama.cpp could not be compiled: install a C/C++ compiler and CMake "
                "(Debian/Ubuntu: apt install build-essential cmake; macOS: xcode-select "
                "--install; Windows: Visual Studio Build Tools).")
    return "Read the log above; running the launcher again retries the install."


def desktop_entry_text() -> str:
    return ("[Desktop Entry]\nType=Application\nName=Tandem\n"
            "Comment=Local chat with speculative decoding\n"
            f"Exec=\"{ROOT / 'assets' / 'tandem.sh'}\"\nPath={ROOT}\n"
            f"Icon={ROOT / 'assets' / 'icon.png'}\nTerminal=true\nCategories=Utility;\n")


def write_desktop_entries() -> list[Path]:
    """On Linux, a double-clickable ``Tandem.desktop`` next to this file and the same entry in
    the applications menu ($XDG_DATA_HOME/applications); both carry absolute paths, so they
    are (re)written whenever the project has moved."""
    if not sys.platform.startswith("linux"):
        return []
    text = desktop_entry_text()
    data_home = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    written = []
    for target in (ROOT / "Tandem.desktop", data_home / "applications" / "tandem.desktop"):
        try:
            if target.exists() and target.read_text(encoding="utf-8") == text:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
            target.chmod(0o755)
            written.append(target)
        except OSError as error:  # a read-only home must not stop the app
            log(f"Note: could not write {target}: {error}")
    if written:
        log("Added Tandem to the applications menu; Tandem.desktop starts it with a "
            "double-click.")
    return written


def ensure_test_browser() -> None:
    """The browser tests drive Debian's chromium; install it when apt can (root or sudo)."""
    if shutil.which("chromium") or not shutil.which("apt-get"):
        return
    prefix = [] if hasattr(os, "geteuid") and os.geteuid() == 0 else ["sudo", "-n"]
    if prefix and not shutil.which("sudo"):
        log("chromium is not installed and apt needs root: the browser tests will skip.")
        return
    log("Installing chromium for the browser tests (apt) …")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if run_logged([*prefix, "apt-get", "update", "-q"], env=env) != 0 or run_logged(
            [*prefix, "apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"],
            env=env) != 0:
        log("Could not install chromium: the browser tests will skip (see the log).")


def fetch_models(python: Path) -> None:
    code = run_logged([str(python), "-m", "engine.models", "fetch"])
    if code != 0:
        raise LaunchError("Fetching the offline default models failed.",
                          "Check the network connection and free disk space, then run the "
                          "launcher again: finished parts are kept.")


def check_host(host: str, allow_remote: bool) -> None:
    if host in LOOPBACK:
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    if not allow_remote:
        raise LaunchError(f"Refusing to listen on '{host}': Tandem serves only this computer.",
                          "Use --host 127.0.0.1, or add --allow-remote if you really want "
                          "other machines on your network to reach it.")
    log(f"WARNING: listening on {host}: anyone who can reach this address can use Tandem.")


def free_port(host: str, preferred: int) -> int:
    for port in [preferred, *range(preferred + 1, preferred + 50)]:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="launcher.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="app",
                        choices=["app", "test", "bench", "models", "setup"])
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a non-loopback --host (prints a warning)")
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--cpu", action="store_true", help="build llama.cpp for the CPU only")
    parser.add_argument("--redetect", action="store_true",
                        help="detect the accelerator again instead of using the remembered one")
    parser.add_argument("--requirements", default=str(ROOT / "requirements.txt"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--skip-models", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, rest = parse(sys.argv[1:] if argv is None else argv)
    try:
        check_host(args.host, args.allow_remote)
        accelerator = detect_accelerator(args.cpu, args.redetect)
        how = ("forced by --cpu" if args.cpu else "remembered; --redetect to detect again"
               if accelerator == remembered_accelerator() and not args.redetect else "detected")
        log(f"Tandem: accelerator = {accelerator} ({how})")
        python = ensure_venv(Path(args.requirements), accelerator)
        if args.command in ("app", "setup"):
            write_desktop_entries()
        if args.command == "setup":
            return 0
        os.chdir(ROOT)
        if args.command == "models":
            return subprocess.call([str(python), "-m", "engine.models", *(rest or ["list"])])
        if not args.skip_models:
            fetch_models(python)
        if args.command == "test":
            ensure_test_browser()
            lint = subprocess.call([str(python), "-m", "ruff", "check", "."])
            tests = subprocess.call([str(python), "-m", "pytest", *rest])
            return tests or lint
        if args.command == "bench":
            return subprocess.call([str(python), "-m", "engine.bench", *rest])
        port = free_port(args.host, args.port)
        cmd = [str(python), "-m", "app", "--host", args.host, "--port", str(port)]
        if args.no_browser:
            cmd.append("--no-browser")
        log(f"Starting Tandem on http://{args.host}:{port} …")
        return subprocess.call(cmd)
    except LaunchError as error:
        log(f"\nTandem could not start: {error}")
        if error.fix:
            log(f"What to do: {error.fix}")
        log(f"Full log: {LOG}")
        if sys.stdin is not None and sys.stdin.isatty() and not os.environ.get("CI"):
            input("Press Enter to close this window.")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
