"""A deployment made from the video-SALMONN 2 RunPod guide (MODEL_PATH / MODEL_BASE pointing at the original
video-SALMONN 2) stops at start with a clear error that names video-SALMONN 2+, instead of serving another
model; the worker's own variable, MODEL_NAME, keeps working."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.config import Settings


@pytest.mark.parametrize(
    "env",
    [
        {"model_path": "/workspace/models/video-SALMONN-2", "model_base": "/workspace/models/video-SALMONN-2"},
        {"model_base": "/workspace/models/video-SALMONN-2", "model_name": "Qwen/Qwen2.5-VL-7B-Instruct"},
        {"model_name": "tsinghua-ee/video-SALMONN-2"},
    ],
)
def test_original_video_salmonn_2_stops_with_a_pointer_to_2_plus(env: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="video-SALMONN2_plus_7B_full"):
        Settings(**env)


def test_a_local_original_checkpoint_is_recognised_by_its_config(tmp_path: Path) -> None:
    folder = tmp_path / "my-captioner"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "video_salmonn_2"}))
    with pytest.raises(ValidationError, match="original video-SALMONN 2"):
        Settings(model_name=str(folder))


def test_guide_variables_alone_are_refused() -> None:
    with pytest.raises(ValidationError, match="set MODEL_NAME"):
        Settings(model_path="/workspace/models/something")


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"model_name": "tsinghua-ee/video-SALMONN2_plus_7B_full"},
        {"model_name": "tsinghua-ee/video-SALMONN-2_plus_7B"},
        {"model_name": "Qwen/Qwen2.5-VL-7B-Instruct", "model_path": "/workspace/models/qwen"},
    ],
)
def test_model_name_keeps_working(env: dict[str, str]) -> None:
    assert Settings(**env).model_name
