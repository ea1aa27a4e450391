"""A deployment made from the video-SALMONN 2 RunPod guide (MODEL_PATH / MODEL_BASE pointing at the original
video-SALMONN 2) serves that model, now that the worker's plugin does; it never serves another model
silently: a guide variable naming the original beside a MODEL_NAME for another model stops the start. The
worker's own variable, MODEL_NAME, keeps working."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.config import Settings
from worker.models.adapters import adapter_for
from worker.models.adapters.video_salmonn2 import VideoSalmonn2Adapter

GUIDE_FOLDER = "/workspace/models/video-SALMONN-2"


def test_the_guides_variables_serve_its_model() -> None:
    assert Settings(model_path=GUIDE_FOLDER, model_base=GUIDE_FOLDER).model_name == GUIDE_FOLDER
    assert Settings(model_name="tsinghua-ee/video-SALMONN-2").model_name == "tsinghua-ee/video-SALMONN-2"


def test_the_original_is_served_by_its_own_adapter() -> None:
    assert isinstance(adapter_for(["VideoSALMONN2ForCausalLM"]), VideoSalmonn2Adapter)


@pytest.mark.parametrize("variable", ["model_path", "model_base"])
def test_the_original_beside_another_model_name_stops(variable: str) -> None:
    with pytest.raises(ValidationError, match="is the original video-SALMONN 2 but MODEL_NAME"):
        Settings(**{variable: GUIDE_FOLDER, "model_name": "Qwen/Qwen2.5-VL-7B-Instruct"})


def test_a_local_original_checkpoint_is_recognised_by_its_config(tmp_path: Path) -> None:
    folder = tmp_path / "my-captioner"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "video_salmonn_2"}))
    assert Settings(model_path=str(folder)).model_name == str(folder)
    with pytest.raises(ValidationError, match="original video-SALMONN 2"):
        Settings(model_path=str(folder), model_name="Qwen/Qwen2.5-VL-7B-Instruct")


def test_model_base_alone_is_refused() -> None:
    with pytest.raises(ValidationError, match="set MODEL_PATH"):
        Settings(model_base="/workspace/models/something")


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
    assert Settings(**env).model_name == env.get("model_name", "Qwen/Qwen2.5-Omni-7B")
