"""The launcher in a temporary copy of the project, with tiny requirements files: creates the
venv, skips reinstalling when the hash is unchanged, reinstalls when it changes, picks a free
port, refuses a non-loopback host, and explains a failed install."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def launcher_copy(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "launcher.py", project / "launcher.py")
    (project / "requirements.txt").write_text("# nothing to install\n")
    return project


def run(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, XDG_DATA_HOME=str(project.parent / "xdg"), PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL="http://127.0.0.1:9/simple",
               PIP_RETRIES="0", PIP_TIMEOUT="2", CI="1")
    env.pop("TANDEM_VENV", None)
    return subprocess.run([sys.executable, str(project / "launcher.py"), *args], cwd=project,
                          env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def test_venv_created_then_reused_then_reinstalled_on_change(tmp_path):
    project = launcher_copy(tmp_path)
    first = run(project, "setup", "--cpu")
    assert first.returncode == 0, first.stdout + first.stderr
    assert (project / ".venv").is_dir() and "Installing" in first.stdout
    second = run(project, "setup", "--cpu")
    assert second.returncode == 0 and "Installing" not in second.stdout
    (project / "requirements.txt").write_text("# nothing to install\n# changed\n")
    third = run(project, "setup", "--cpu")
    assert third.returncode == 0 and "Installing" in third.stdout


def test_accelerator_choice_printed_and_remembered(tmp_path):
    project = launcher_copy(tmp_path)
    first = run(project, "setup", "--cpu")
    assert "accelerator = cpu (forced by --cpu)" in first.stdout
    stamp = json.loads((project / ".venv" / "tandem-install.json").read_text())
    assert stamp["accelerator"] == "cpu"
    second = run(project, "setup")
    assert "accelerator = cpu (remembered" in second.stdout and "Installing" not in second.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="desktop entries are Linux-only")
def test_linux_desktop_entry_has_absolute_paths(tmp_path):
    project = launcher_copy(tmp_path)
    assert run(project, "setup", "--cpu").returncode == 0
    local = project / "Tandem.desktop"
    menu = tmp_path / "xdg" / "applications" / "tandem.desktop"
    for entry in (local, menu):
        text = entry.read_text()
        assert f'Exec="{project.resolve()}/assets/tandem.sh"' in text
        assert f"Icon={project.resolve()}/assets/icon.png" in text and "Terminal=true" in text
        assert os.access(entry, os.X_OK)


def test_wrappers_find_python_and_call_the_launcher():
    for name in ("tandem.sh", "Tandem.command"):
        wrapper = ROOT / "assets" / name
        assert os.access(wrapper, os.X_OK)
        result = subprocess.run([str(wrapper), "--help"], capture_output=True, text=True,
                                timeout=60, cwd="/")
        assert result.returncode == 0 and "launcher.py" in result.stdout, result.stderr
    bat = (ROOT / "assets" / "Tandem.bat").read_bytes()
    assert b"launcher.py" in bat and b"\r\n" in bat and b"pause" in bat


def test_failed_install_explains_itself(tmp_path):
    project = launcher_copy(tmp_path)
    (project / "requirements.txt").write_text("tandem-no-such-package==9.9.9\n")
    result = run(project, "setup", "--cpu")
    assert result.returncode == 1
    assert "Tandem could not start" in result.stdout
    assert "What to do:" in result.stdout and "tandem-launcher.log" in result.stdout


def test_non_loopback_host_refused_without_flag(tmp_path):
    project = launcher_copy(tmp_path)
    result = run(project, "--host", "0.0.0.0", "--no-browser")
    assert result.returncode == 1 and "Refusing to listen" in result.stdout
    assert "--allow-remote" in result.stdout


def test_free_port_skips_a_taken_one():
    sys.path.insert(0, str(ROOT))
    import launcher

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        chosen = launcher.free_port("127.0.0.1", port)
    assert chosen != port
    launcher.check_host("127.0.0.1", False)
    launcher.check_host("::1", False)


def test_progress_redraws_one_line_and_stays_out_of_the_log(tmp_path, capsys, monkeypatch):
    sys.path.insert(0, str(ROOT))
    import launcher

    monkeypatch.setattr(launcher, "LOG", tmp_path / "launcher.log")
    script = tmp_path / "emit.py"
    script.write_text(
        "import sys, time\n"
        "print('start', flush=True)\n"
        "for p in (10, 50, 100):\n"
        "    sys.stderr.write(f'\\rmodel: {p}%'); sys.stderr.flush(); time.sleep(0.02)\n"
        "print('\\rinstalled', flush=True)\n"
        "sys.stdout.buffer.write(b'windows line\\r\\nlast without newline')\n")
    assert launcher.run_logged([sys.executable, str(script)]) == 0
    shown = capsys.readouterr().out
    assert "\rmodel: 50%" in shown and "\rinstalled" in shown
    assert "windows line\n" in shown and shown.endswith("last without newline\n")
    logged = (tmp_path / "launcher.log").read_text()
    assert logged == "start\ninstalled\nwindows line\nlast without newline\n"


def test_llama_cpp_is_built_without_the_amx_kernels_that_crash():
    """ggml's AMX kernels (compiled in by -march=native on Xeons with AMX) segfault in the
    first evaluation of a Q4_K_M model (ggml-org/llama.cpp#20824; seen on this project's own
    machines): the launcher builds llama.cpp without them, in a wheel cache keyed by the flags
    (pip's own cache would hand back a wheel built with other flags)."""
    import llama_cpp

    sys.path.insert(0, str(ROOT))
    import launcher

    settings = launcher.build_settings("cpu")
    if launcher.platform.machine().lower() in ("x86_64", "amd64") and \
            launcher.compiler_accepts(launcher.NO_AMX_FLAGS):
        assert "-mno-amx-int8" in settings["CFLAGS"] and "-mno-amx-int8" in settings["CXXFLAGS"]
    assert "AMX_INT8 = 1" not in llama_cpp.llama_print_system_info().decode()
    cpu, cuda = launcher.requirements_hash(ROOT / "requirements.txt", "cpu"), \
        launcher.requirements_hash(ROOT / "requirements.txt", "cuda")
    assert cpu != cuda
