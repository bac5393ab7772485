"""llama.cpp's libraries load before numpy in every process Tandem starts.

On a CUDA build (measured on an H100) a process that imports numpy before ``llama_cpp`` crashes
inside llama.cpp's model load; CPU builds are unaffected, so on this machine these tests pass
either way and are the guard for CUDA builds: each checks the import order itself, and the
first one loads and runs a model through the engine from a process that imported numpy first.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

ORDER = """
import json, sys
order = list(sys.modules)
print(json.dumps({"numpy": order.index("numpy") if "numpy" in order else None,
                  "llama": order.index("llama_cpp.llama_cpp")
                  if "llama_cpp.llama_cpp" in order else None}))
"""


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_process_that_imported_numpy_first_loads_and_runs_a_model_through_the_engine(
        tiny_dir):
    code = f"""
import numpy  # first, as a user's script or a notebook would
import sys
from engine import protocol as p
from engine.facade import EngineClient
client = EngineClient()
client.load(p.LoadRequest(sys.argv[1]))
events = list(client.chat(p.ChatRequest((p.Message("user", "hi"),), max_tokens=8)))
info = client.info()
client.close()
print("RESULT", type(events[-1]).__name__, events[-1].stats.tokens, info.native_libraries_first)
{ORDER}"""
    done = run_python(code, str(tiny_dir / "target.gguf"))
    assert done.returncode == 0, done.stderr[-2000:]
    result = next(line for line in done.stdout.splitlines() if line.startswith("RESULT"))
    assert result.split()[1:] == ["Done", "8", "True"]  # the worker loaded llama.cpp first
    order = json.loads(done.stdout.strip().splitlines()[-1])
    assert order["llama"] is None  # this process never loaded llama.cpp itself


@pytest.mark.parametrize("module", ["engine.bench", "engine.recommend", "engine.worker",
                                    "engine.models"])
def test_every_entry_point_loads_llama_cpp_before_numpy(module):
    """Import each entry point as ``python -m`` does (without running it) and read the order
    in which modules started loading."""
    done = run_python(f"import importlib; importlib.import_module({module!r})\n" + ORDER)
    assert done.returncode == 0, done.stderr[-2000:]
    order = json.loads(done.stdout.strip().splitlines()[-1])
    if order["numpy"] is not None:
        assert order["llama"] is not None and order["llama"] < order["numpy"], order


def test_the_test_process_itself_loaded_llama_cpp_first():
    order = list(sys.modules)
    assert order.index("llama_cpp.llama_cpp") < order.index("numpy")
