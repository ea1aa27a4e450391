"""Running a test's engine script (``python -m tests.<name>_engines MODEL WORK OUT``) in its own process: vLLM
spawns its engine core, so the code that builds an engine must run as a ``__main__`` of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import KV_CACHE_GIB
from tests.local_api import ROOT


def run_engine_script(module: str, model: Path, work: Path) -> Any:
    """What ``module`` wrote to ``work/runs.json`` after running on ``model`` with the tests' absolute KV-cache
    budget; its stderr's tail is the failure message when it exits non-zero."""
    out = work / "runs.json"
    run = subprocess.run(
        [sys.executable, "-m", module, str(model), str(work), str(out)],
        cwd=ROOT,
        env=os.environ | {"VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB},
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-6000:]
    return json.loads(out.read_text())
