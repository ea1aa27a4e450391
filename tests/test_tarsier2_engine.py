"""Tarsier2 on the real CPU engine (tests/tarsier2_engines.py, one engine): the tiny checkpoint laid out like
the release loads strictly through the plugin, a video job and an image job run end to end through the
worker, and the greedy ids equal those of the authors' pipeline (tests/tarsier2_reference.py) on the same
frames: same prompt, same pixels, same M-RoPE positions."""

from __future__ import annotations

from typing import Any

import pytest

from tests.engine_script import run_engine_script
from tests.tarsier2_engines import MAX_TOKENS
from worker.devtools.dummy_model import build_dummy_model

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

IMAGE_PAD, VIDEO_PAD = 151655, 151656


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    work = tmp_path_factory.mktemp("tarsier2-engine")
    model = build_dummy_model(work / "tiny-tarsier2", "tarsier2", "tiny")
    return run_engine_script("tests.tarsier2_engines", model, work)


def test_checkpoint_loads_strictly(runs: list[dict[str, Any]]) -> None:
    # The engine above loaded the real tensors (load_format "auto"): vLLM refuses a checkpoint with a tensor
    # it has no parameter for or a parameter left unloaded, and the plugin refuses names outside the layout.
    assert all(r["output"]["caption"] is not None for r in runs)
    for r in runs:
        assert r["reference"]["load"] == {"tensors": 58, "missing": [], "unexpected": []}


def test_video_job_end_to_end(runs: list[dict[str, Any]]) -> None:
    video = next(r for r in runs if r["kind"] == "video")
    meta = video["output"]["metadata"]
    assert meta["media_type"] == "video" and meta["num_frames"] == 6 and meta["completion_tokens"] >= 1
    # Every sampled frame reached the engine twice: one temporal patch per frame, as the authors show it.
    assert video["frames_sent"] == 12 and video["frames_doubled"]
    assert video["worker"]["grids"]["video_grid_thw"] == [video["reference"]["grid"]]


@pytest.mark.parametrize("kind", ["video", "image"])
def test_greedy_ids_equal_the_authors_pipeline(runs: list[dict[str, Any]], kind: str) -> None:
    run = next(r for r in runs if r["kind"] == kind)
    worker, reference = run["worker"], run["reference"]
    # The same prompt token for token; the authors mark a video's tokens with the image placeholder, whose
    # embedding is replaced by the vision tower's output either way.
    ours = [IMAGE_PAD if t == VIDEO_PAD else t for t in worker["prompt_ids"]]
    assert ours == reference["prompt_ids"]
    assert run["pixels_max_difference"] is not None and run["pixels_max_difference"] < 1e-5
    assert worker["positions"] == reference["positions"]
    assert len(worker["token_ids"]) == MAX_TOKENS
    assert worker["token_ids"] == reference["token_ids"], (worker["margins"], reference["margins"])
