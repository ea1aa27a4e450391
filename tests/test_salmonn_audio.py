"""The plugin's audio tower (vLLM's Whisper encoder + our window Q-Former) computes what the authors' model
does: compared with transformers' WhisperEncoder and a plain reference Q-Former on the tiny checkpoint's
seeded random weights, float32."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.local_api import ROOT
from worker.devtools.dummy_model import build_dummy_model

pytestmark = pytest.mark.timeout(600)


def test_audio_tower_matches_whisper_and_reference_qformer(tmp_path: Path) -> None:
    model = build_dummy_model(tmp_path / "salmonn", "video_salmonn2_plus", "tiny")
    run = subprocess.run(
        [sys.executable, "-m", "tests.salmonn_reference", str(model)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-5000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    # 31 s: two 30 s pieces, 60 tokens each, at the LLM width.
    assert result["shape"] == result["expected_shape"] == [120, 128]
    assert result["max_abs"] > 1e-2  # the comparison is not between two near-zero tensors
    assert result["max_abs_diff"] <= 1e-4, result
    # Strict loading: every parameter comes from the checkpoint, an unknown name is an error.
    assert result["all_parameters_loaded"] and result["unknown_weight_rejected"]
