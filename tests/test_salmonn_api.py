"""video-SALMONN 2+ end to end through the runpod SDK's local API: the tiny checkpoint loads with its real
(seeded random) weights through the plugin, strictly, and the sound of the whole span the job covers goes
into the prompt: 60 tokens per started 30 s."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.local_api import result_of, runsync, serve_api
from worker.devtools.dummy_model import build_dummy_model

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def api(worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = build_dummy_model(tmp_path_factory.mktemp("models") / "tiny-salmonn", "video_salmonn2_plus", "tiny")
    env = worker_env | {"MODEL_NAME": str(model), "LOAD_FORMAT": "auto"}
    with serve_api(env, tmp_path_factory.mktemp("logs") / "salmonn.log") as url:
        yield url


def caption(api: str, job: dict[str, Any]) -> dict[str, Any]:
    return result_of(runsync(api, {"max_tokens": 4, "seed": 0} | job))


def test_audio_tokens_per_started_30_s(api: str, video: Callable[..., Path]) -> None:
    short = video("salmonn_av6.mp4", seconds=6.0, fps=10, width=96, height=64, audio="aac")
    job = {"video": str(short), "fps": 2.0, "max_frames": 8, "prompt": "Describe."}
    without = caption(api, job)["metadata"]
    heard = caption(api, job | {"process_audio": True})["metadata"]
    assert without["audio_processed"] is False
    assert heard["audio_processed"] is True and heard["num_frames"] == without["num_frames"] == 8
    # The whole video is heard, not just around the frames.
    assert heard["audio_seconds"] == pytest.approx(6.0, abs=0.05)
    assert heard["audio_tokens"] == 60
    assert heard["prompt_tokens"] - without["prompt_tokens"] == 60

    long = video("salmonn_av35.mp4", seconds=35.0, fps=4, width=96, height=64, audio="aac")
    job = {"video": str(long), "fps": 0.25, "max_frames": 8, "prompt": "Describe."}
    without = caption(api, job)["metadata"]
    heard = caption(api, job | {"process_audio": True})["metadata"]
    assert heard["audio_seconds"] == pytest.approx(35.0, abs=0.1)
    assert heard["audio_tokens"] == 120
    assert heard["prompt_tokens"] - without["prompt_tokens"] == 120


def test_no_audio_track_is_the_visual_only_layout(api: str, video: Callable[..., Path]) -> None:
    silent = video("salmonn_silent.mp4", seconds=4.0, fps=10, width=96, height=64)
    job = {"video": str(silent), "fps": 2.0, "max_frames": 4, "prompt": "Describe."}
    plain = caption(api, job)["metadata"]
    asked = caption(api, job | {"process_audio": True})["metadata"]
    assert asked["audio_processed"] is False and asked["audio_seconds"] == 0.0
    assert asked["prompt_tokens"] == plain["prompt_tokens"]
    assert any("no audio track" in w for w in asked["warnings"])


def test_default_prompt_is_the_authors_caption_prompt(api: str, video: Callable[..., Path]) -> None:
    short = video("salmonn_av6.mp4", seconds=6.0, fps=10, width=96, height=64, audio="aac")
    job = {"video": str(short), "fps": 2.0, "max_frames": 4}
    default = caption(api, job)["metadata"]
    terse = caption(api, job | {"prompt": "Describe."})["metadata"]
    # "Provide a comprehensive description of all the content in the video, ..." is ~40 tokens longer.
    assert default["prompt_tokens"] - terse["prompt_tokens"] > 20


def test_chunks_hear_their_own_span(api: str, video: Callable[..., Path]) -> None:
    long = video("salmonn_av35.mp4", seconds=35.0, fps=4, width=96, height=64, audio="aac")
    job = {"video": str(long), "fps": 0.5, "mode": "chunked", "chunk_seconds": 20.0, "process_audio": True}
    out = caption(api, job | {"prompt": "Describe."})
    segments = out["segments"]
    assert len(segments) == 2
    for segment in segments:
        assert segment["audio_seconds"] == pytest.approx(segment["end"] - segment["start"], abs=0.1)
    assert out["metadata"]["audio_tokens"] == 120  # 60 per chunk: each chunk's sound is under 30 s
