"""`python handler.py --test_input ...`, exactly as the README and the runpod SDK document it."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_handler(env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "handler.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def job_result(stdout_and_err: str) -> dict:
    # rp_local logs "Job result: {python dict}".
    match = re.search(r"Job result: (\{.*\})\s*$", stdout_and_err, re.MULTILINE)
    assert match, stdout_and_err[-3000:]
    return ast.literal_eval(match.group(1))


@pytest.mark.engine
@pytest.mark.timeout(900)
def test_test_input_json(worker_env: dict[str, str], work_dir: Path) -> None:
    test_input = (ROOT / "test_input.json").read_text()
    proc = run_handler(worker_env, "--test_input", test_input)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    output = job_result(log)["output"]
    meta = output["metadata"]
    assert isinstance(output["caption"], str) and meta["completion_tokens"] >= 1
    request = json.loads(test_input)["input"]
    assert meta["num_frames"] == 8 and len(meta["frame_timestamps"]) == 8
    # test_input.json's clip: 4 s of 160x96 H.264 at 8 fps with 4 s of AAC sound (as its MP4 header states).
    rounded = {key: round(meta["video"][key], 1) for key in ("duration", "audio_seconds")}
    assert meta["video"] | rounded == {
        "duration": 4.0, "width": 160, "height": 96, "fps": 8.0, "has_audio": True, "rotation": 0,
        "codec": "h264", "audio_seconds": 4.0,
    }
    assert meta["fps_used"] == pytest.approx(request["fps"], rel=0.01)
    assert meta["model"] == worker_env["MODEL_NAME"]
    assert list(work_dir.iterdir()) == []


@pytest.mark.engine
@pytest.mark.timeout(300)
def test_engine_start_failure_is_reported_per_job(worker_env: dict[str, str], tmp_path: Path) -> None:
    env = worker_env | {"MODEL_NAME": str(tmp_path / "no-such-model")}
    proc = run_handler(env, "--test_input", json.dumps({"input": {"video": "/tmp/x.mp4"}}))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1
    match = re.search(r"failed with error: (\{.*\})\s*$", log, re.MULTILINE)
    assert match, log[-3000:]
    error = json.loads(match.group(1))
    assert error["type"] == "engine_error"
    assert "failed to start" in error["message"] and "no-such-model" in error["message"]
    assert error["traceback"] is None
