"""The reliability bar runs with the suite: ``tests/reliability_cases.py`` (the hostile corpus,
hostile templates, injection strings, foreign origins, the cross-site page and the crashes
while regenerating, against the real worker and the launched app) must pass every case."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REAL_MODELS_DIR

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SCRIPT = Path(__file__).resolve().parent / "reliability_cases.py"


def test_every_reliability_case_passes():
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    command = [sys.executable, str(SCRIPT), *([] if browser else ["--skip-browser"])]
    # the script reads the offline models from the real data directory, as conftest does;
    # each test's TANDEM_HOME is a fresh temporary one without them
    env = dict(os.environ, TANDEM_HOME=str(REAL_MODELS_DIR.parent))
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env)
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line[:4] in ("ok  ", "FAIL")]
    assert len(lines) >= 80 and all(line.startswith("ok") for line in lines)
    assert "0 failed" in done.stdout
