"""What users of the documents this worker replaces send and run (docs/seeds.md), against the runpod SDK's local
API (`python handler.py --rp_serve_api`) of a default endpoint (no ENABLE_STREAMING: a job's output is its
result) on the real CPU engine: the video-SALMONN 2 guide's own Python client in each of its formats, its
top_p range, its error shape; Tarsier2's batch of per-item questions with length-chosen chunking; a
follow-up question answered from the first job's segments; the JSONL pipeline's structured_caption task.
One engine start for all of them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import tests.seed001_client as seed001_client
from tests.local_api import serve_api

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def api(worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Tarsier2's example asks for 128 frames per chunk: the deployment's MAX_FRAMES_LIMIT allows it.
    env = worker_env | {"ENABLE_STREAMING": "false", "MAX_FRAMES_LIMIT": "128"}
    with serve_api(env, tmp_path_factory.mktemp("logs") / "seeds_api.log") as url:
        yield url


def runsync(api: str, job_input: dict[str, Any]) -> dict[str, Any]:
    response = requests.post(f"{api}/runsync", json={"input": job_input}, timeout=600)
    response.raise_for_status()
    return response.json()


def result_of(body: dict[str, Any]) -> dict[str, Any]:
    """A default endpoint's answer: ``output`` is the result itself."""
    assert body["status"] == "COMPLETED" and isinstance(body["output"], dict), body
    return body["output"]


def error_of(body: dict[str, Any]) -> dict[str, Any]:
    """A failed job: FAILED, ``error`` the structured error as JSON text (as on RunPod)."""
    assert body["status"] == "FAILED" and "output" not in body, body
    return json.loads(body["error"])


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("sample_video.mp4", dict(codec="libx264", audio="aac")),
        ("sample_video.avi", dict(codec="mpeg4", audio="pcm_s16le")),
        ("sample_video.mov", dict(codec="libx264", audio="aac")),
    ],
    ids=["mp4", "avi", "mov"],
)
def test_the_video_salmonn2_guides_client_gets_the_caption_and_metadata(
    api: str,
    video: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    kwargs: dict[str, str],
) -> None:
    """Its own client (tests/seed001_client.py), run as its example runs it, on each format it lists."""
    clip = video(name, seconds=4.0, fps=10, width=64, height=48, **kwargs)
    monkeypatch.setattr(seed001_client, "ENDPOINT_URL", f"{api}/runsync")
    result = seed001_client.process_video(
        video_path=str(clip),
        prompt="What is happening in this video? Describe the actions and any dialogue.",
        fps=2.0,
    )
    printed = capsys.readouterr().out
    assert "Caption: " in printed and "Processed 8 frames at 2.0 FPS" in printed, printed
    meta = result["output"]["metadata"]
    assert meta["video"]["has_audio"] and meta["video"]["duration"] == pytest.approx(4.0, abs=0.05)
    assert meta["audio_processed"] is False and any("process_audio" in w for w in meta["warnings"])


def test_run_and_status_give_the_result_and_errors_fail_the_job(api: str, video: Callable[..., Path]) -> None:
    clip = video("seeds_status.mp4", seconds=3.0, fps=10, width=64, height=48)
    job_input = {"video": str(clip), "fps": 2.0, "max_frames": 4, "top_p": 0.0}
    job = requests.post(f"{api}/run", json={"input": job_input}, timeout=30)
    status = requests.post(f"{api}/status/{job.json()['id']}", timeout=600).json()
    out = result_of(status)
    assert out["metadata"]["num_frames"] == 4
    assert (out["metadata"]["sampling"]["temperature"], out["metadata"]["sampling"]["top_p"]) == (0.0, 1.0)  # top_p 0
    error = error_of(runsync(api, {"video": str(clip.with_name("nope.mp4"))}))
    assert error["type"] == "fetch_error" and set(error) >= {"type", "message", "traceback"}
    error = error_of(runsync(api, {"video": str(clip), "stream": True}))
    assert error["type"] == "validation_error" and "ENABLE_STREAMING" in error["message"]


def test_tarsier2_batch_chunked_by_length_then_a_follow_up_from_its_segments(
    api: str, video: Callable[..., Path]
) -> None:
    long = video("seeds_180s.mp4", seconds=180.0, fps=2, width=32, height=32, gop=20)
    short = video("seeds_20s.mp4", seconds=20.0, fps=2, width=32, height=32)
    # run_batch_video_inference(video_configs=..., max_frames=128, min_fps=2.0), as one job.
    video_configs = [
        {"video_path": str(long), "question": "Describe this video in detail."},
        {"video_path": str(short), "question": "What activities are shown in this video?"},
    ]
    body = runsync(api, {"videos": video_configs, "max_frames": 128, "min_fps": 2.0, "max_tokens": 12, "seed": 3})
    first, second = result_of(body)["results"]
    assert first["num_chunks"] == 3, first  # chunks of 128 / 2 = 64 s
    assert [(s["start"], s["end"], s["num_frames"]) for s in first["segments"]] == [
        (0.0, 64.0, 128), (64.0, 128.0, 128), (128.0, 180.0, 104)
    ]
    assert "segments" not in second and second["metadata"]["num_frames"] == 40  # 20 s x 2 fps: one pass

    # The analyzer's "chat with the video": the first result's segments and a new question; no media.
    follow_up = result_of(runsync(api, {"context": first["segments"], "prompt": "When does the scene change?",
                                        "max_tokens": 16}))
    meta = follow_up["metadata"]
    assert isinstance(follow_up["caption"], str) and meta["mode"] == "context" and meta["requests"] == 1
    assert meta["context_segments"] == 3 and meta["context_span"] == [0.0, 180.0] and meta["prompt_tokens"] > 0
    assert "timings" not in meta and "num_frames" not in meta
    whole = result_of(runsync(api, {"context": first, "prompt": "Is anyone speaking?", "max_tokens": 8}))
    assert whole["metadata"]["context_segments"] == 3


def test_structured_caption_task_per_job(api: str, video: Callable[..., Path]) -> None:
    clip = video("seeds_task.mp4", seconds=2.0, fps=8, width=64, height=48)
    out = result_of(runsync(api, {"video": str(clip), "task": "structured_caption", "max_frames": 4, "max_tokens": 48}))
    assert "structured" in out and out["caption"].lstrip().startswith("{"), out
