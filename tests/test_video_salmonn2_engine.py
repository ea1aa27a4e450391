"""The original video-SALMONN 2 on the real CPU engine (tests/video_salmonn2_engines.py, one engine): the tiny
checkpoint laid out like the authors' release loads strictly through the plugin, a video job with its sound
and one without run end to end through the worker, and the prompt ids and the greedy ids equal those of the
authors' pipeline (tests/video_salmonn2_reference.py) on the same frames, span and sound."""

from __future__ import annotations

from typing import Any

import pytest

from tests.engine_script import run_engine_script
from tests.video_salmonn2_engines import MAX_TOKENS
from worker.devtools.dummy_model import build_dummy_model
from worker.models.vllm_plugin.video_salmonn2_layout import DEFAULT_PLACEHOLDER_ID

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

IMAGE_TOKEN_INDEX = -200  # the authors' marker in the prompt ids


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    work = tmp_path_factory.mktemp("video-salmonn2-engine")
    model = build_dummy_model(work / "tiny-video-salmonn2", "video_salmonn2", "tiny")
    return run_engine_script("tests.video_salmonn2_engines", model, work)


def test_checkpoint_loads_strictly(runs: list[dict[str, Any]]) -> None:
    # The engine loaded the real tensors (load_format "auto"): vLLM refuses a parameter left unloaded and the
    # plugin a name outside the release's layout; the reference's transformers classes use every tensor.
    assert all(r["output"]["caption"] is not None for r in runs)
    for r in runs:
        assert r["reference"]["load"] == {"tensors": 170, "missing": [], "unexpected": []}


@pytest.mark.parametrize("sound", [True, False])
def test_video_job_end_to_end(runs: list[dict[str, Any]], sound: bool) -> None:
    run = next(r for r in runs if r["process_audio"] is sound)
    meta = run["output"]["metadata"]
    assert meta["media_type"] == "video" and meta["num_frames"] == 7 and meta["completion_tokens"] >= 1
    assert meta["audio_processed"] is sound
    assert (run["audio_samples"] is not None) is sound
    # Per frame 13 rows of 13 + newline; then 60 audio tokens stretched to 63 (9 per frame), or the time
    # tokens ("0.5" ... "3.5": 3 each).
    assert run["reference"]["media_tokens"] == 7 * 182 + (63 if sound else 7 * 3)


@pytest.mark.parametrize("sound", [True, False])
def test_prompt_and_greedy_ids_equal_the_authors_pipeline(runs: list[dict[str, Any]], sound: bool) -> None:
    run = next(r for r in runs if r["process_audio"] is sound)
    worker, reference = run["worker"], run["reference"]
    # One placeholder id per embedding the authors splice in for their single <image> marker.
    ids = worker["prompt_ids"]
    first = ids.index(DEFAULT_PLACEHOLDER_ID)
    count = ids.count(DEFAULT_PLACEHOLDER_ID)
    assert ids[first : first + count] == [DEFAULT_PLACEHOLDER_ID] * count
    assert count == reference["media_tokens"]
    assert ids[:first] + [IMAGE_TOKEN_INDEX] + ids[first + count :] == reference["prompt_ids"]
    assert run["pixels_max_difference"] is not None and run["pixels_max_difference"] < 1e-5
    assert len(worker["token_ids"]) == MAX_TOKENS
    assert worker["token_ids"] == reference["token_ids"], (worker["margins"], reference["margins"])
