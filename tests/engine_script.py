"""Running a test's engine script in its own process: vLLM spawns its engine core, so the code that builds
an engine must run as a ``__main__`` of its own. The script writes its findings as JSON for the test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import KV_CACHE_GIB
from tests.local_api import ROOT


def run_script(args: list[str], out: Path, *, timeout: float, env: dict[str, str] | None = None) -> Any:
    """What ``python -m ARGS`` (run from the repository root, with ``env`` added) wrote to ``out``; its
    stderr's tail is the failure message when it exits non-zero."""
    run = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=os.environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-8000:]
    return json.loads(out.read_text())


def run_engine_script(module: str, model: Path, work: Path) -> Any:
    """What ``python -m MODULE MODEL WORK OUT`` wrote to ``work/runs.json`` after running on ``model`` with
    the tests' absolute KV-cache budget."""
    out = work / "runs.json"
    budget = {"VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB}
    return run_script([module, str(model), str(work), str(out)], out, timeout=840, env=budget)
