"""One door: the UI and the API reach the engine only through ``engine.facade`` and its typed
messages, so the UI process never imports ``llama_cpp``. Checked in a fresh interpreter that
builds the whole page and drives the handlers that need the engine (load, chat, pair check,
hardware), and statically: ``app/`` imports no engine module but the door's own."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOOR = {"engine.facade", "engine.protocol", "engine.errors", "engine.stats", "engine.remote",
        "engine.paths", "engine.catalog"}  # the door, its data, and pure data modules

UI_PROCESS = """
import json, sys
import app.__main__, app.api, app.api_format
from app.main import Controller, build
from app.store import Store
from engine import paths
from engine.facade import EngineClient

target, draft = sys.argv[1], sys.argv[2]
engine = EngineClient()
ctl = Controller(engine, Store(paths.conversations_db()), target, draft)
ctl.loaded.wait(600)
build(ctl, target, draft)
pair = ctl.pair_info(target, draft)
hardware, _ = ctl.hardware()
reply = list(ctl.send("hello", None, "", 0.0, 1.0, 8, "auto", 3, "both", False))[-1][3]
engine.close()
print(json.dumps({"status": ctl.status, "pair": pair, "hardware": hardware, "reply": reply,
                  "llama": sorted(m for m in sys.modules if m.startswith("llama_cpp"))}))
"""


def test_the_ui_process_never_imports_llama_cpp(tiny_dir):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", UI_PROCESS, str(tiny_dir / "target.gguf"),
                           str(tiny_dir / "draft.gguf")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # the engine did its work (in the worker): loaded, compared vocabularies, answered
    assert result["status"].startswith("Ready"), result["status"]
    assert "native (same vocabulary)" in result["pair"]
    assert "tokens/s" in result["reply"] and "**CPU**" in result["hardware"]
    assert result["llama"] == [], result["llama"]


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "engine":
                names.update(f"engine.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return names


def test_app_modules_import_only_the_door():
    crossings = {}
    for path in sorted((ROOT / "app").glob("*.py")):
        outside = {name for name in imported_modules(path)
                   if (name == "llama_cpp" or name.startswith(("engine.", "llama_cpp.")))
                   and name not in DOOR}
        if outside:
            crossings[path.name] = sorted(outside)
    assert crossings == {}
    assert "engine.session" not in DOOR and "engine.runtime" not in DOOR  # the check bites
