"""Shared fixtures: tiny GGUF models written by the tests, the real offline models, and an
isolated user data directory for every test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import llama_cpp  # noqa: F401  (llama.cpp's libraries before numpy: see engine/worker.py)
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_models import write_tiny_model  # noqa: E402

from engine import catalog, paths  # noqa: E402

# The offline models live in the real user data directory (the launcher fetches them there);
# remember it before each test points TANDEM_HOME at a temporary directory.
REAL_MODELS_DIR = paths.models_dir()


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "tandem-home"
    monkeypatch.setenv("TANDEM_HOME", str(home))
    return home


def offline_model(model_id: str) -> Path:
    """Path of an installed offline default model. Missing models fail loudly: the README's
    test command fetches them, so a skip here would hide a broken set-up."""
    entry = catalog.by_id(model_id)
    assert entry is not None, model_id
    path = REAL_MODELS_DIR / entry.filename
    if not path.is_file():
        pytest.fail(f"offline model {model_id} is not installed in {REAL_MODELS_DIR}; run "
                    "`python3 launcher.py test` (it fetches the models first)")
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-models")
    write_tiny_model(folder / "target.gguf", "a", seed=0)
    write_tiny_model(folder / "draft.gguf", "a", seed=5, noise_from=0, noise=0.03)
    write_tiny_model(folder / "other-vocab.gguf", "b", seed=1)
    write_tiny_model(folder / "other-vocab-close.gguf", "b", seed=2, n_layer=1)
    write_tiny_model(folder / "other-vocab-aligned.gguf", "b", seed=3, noise_from=0,
                     noise=0.1, rows_like="a")
    write_tiny_model(folder / "small-ctx.gguf", "a", seed=0, n_ctx=64)
    return folder


@pytest.fixture(scope="session")
def tiny_target(tiny_dir):
    from engine.runtime import Model, RuntimeOptions

    model = Model(tiny_dir / "target.gguf", RuntimeOptions(n_ctx=2048, n_batch=64))
    yield model
    model.close()


@pytest.fixture(autouse=True)
def no_stray_workers():
    """After each test, no engine worker may outlive the app that started it: a stray one
    can hold both cores and slow later tests past their timeout."""
    yield
    import psutil

    def orphaned(process: psutil.Process) -> bool:
        try:
            # re-parented to init (not to this process, in a container where pytest is init)
            return ("engine.worker" in process.cmdline() and process.ppid() == 1
                    and os.getpid() != 1)
        except psutil.Error:
            return False

    strays = [process for process in psutil.process_iter() if orphaned(process)]
    _, running = psutil.wait_procs(strays, timeout=5)
    for process in running:
        process.kill()
    assert not running, f"engine workers outlived their app: {[p.pid for p in running]}"


def pytest_collection_modifyitems(config, items):
    # deterministic, cheap tests first; the real-model ones after
    items.sort(key=lambda item: ("slow" in item.keywords, "browser" in item.keywords))


os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
