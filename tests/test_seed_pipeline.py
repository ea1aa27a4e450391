"""What users of the documents this worker replaces send (docs/seeds.md), through the real pipeline (PyAV on
generated media, the Qwen2.5-VL adapter and tokenizer) with a fake engine (tests/fakes.py): Tarsier2's batch
of per-item configs and its length-chosen chunking, a follow-up question answered from an earlier job's
segments without media, the video-SALMONN 2 guide's containers (MP4, AVI, MOV) sent as base64 and its
top_p 0. The real engine runs them in tests/test_seeds_api.py."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import worker.job.image
import worker.job.video
import worker.media.video
from tests.fakes import FakeEngineSlot, RecordingFakeEngine
from worker.config import Settings
from worker.job.service import CaptionService

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def engine(tiny_model: Path) -> RecordingFakeEngine:
    return RecordingFakeEngine(tiny_model, max_model_len=8192)


@pytest.fixture
def svc(engine: RecordingFakeEngine, media_dir: Path, work_dir: Path) -> CaptionService:
    settings = Settings(allowed_media_roots=[media_dir], work_dir=work_dir, max_frames_limit=128)
    return CaptionService(settings, FakeEngineSlot(engine))


def run(svc: CaptionService, job: dict[str, Any], progress: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The job's complete output."""
    report = progress.append if progress is not None else None
    return asyncio.run(svc.complete(job, "seed-job", report)).body


@pytest.fixture(scope="module")
def three_minutes(video: Callable[..., Path]) -> Path:
    return video("seed_180s.mp4", seconds=180.0, fps=2, width=32, height=32, gop=20)


def test_tarsier2_batch_items_keep_their_questions_and_long_ones_are_chunked_by_length(
    svc: CaptionService, engine: RecordingFakeEngine, video: Callable[..., Path], three_minutes: Path
) -> None:
    short = video("seed_20s.mp4", seconds=20.0, fps=4, width=32, height=32)
    job = {
        "videos": [
            {"video_path": str(three_minutes), "question": "What activities are shown in this video?"},
            {"video_path": str(short), "question": "Summarize the main events.", "max_frames": 8},
        ],
        "max_frames": 128,
        "min_fps": 2.0,
        "max_tokens": 16,
    }
    progress: list[dict[str, Any]] = []
    out = run(svc, job, progress)
    assert out["metadata"]["num_items"] == 2 and out["metadata"]["num_failed"] == 0, out
    long, brief = out["results"]
    # 180 s, max_frames 128, min_fps 2: chunks of 64 s, three of them, then the summary.
    assert long["num_chunks"] == 3 and long["metadata"]["mode"] == "chunked"
    assert long["metadata"]["chunk_seconds"] == 64.0
    assert [(s["start"], s["end"], s["num_frames"]) for s in long["segments"]] == [
        (0.0, 64.0, 128), (64.0, 128.0, 128), (128.0, 180.0, 104)
    ]
    asked = [r for r in engine.requests if "What activities are shown in this video?" in r.prompt]
    chunk_prompts = sorted(r.prompt for r in asked if r.video is not None)
    assert len(chunk_prompts) == 3 and all("Time " in p for p in chunk_prompts)
    assert len([r for r in asked if r.video is None]) == 1  # the summary, text only
    # 20 s x 2 fps > 8 frames: the item's own max_frames chunks it too (8 / 2 = 4 s chunks); its question, its
    # frames.
    assert brief["num_chunks"] == 5 and {s["num_frames"] for s in brief["segments"]} == {8}
    assert progress[-1] == {"items_done": 2, "num_items": 2, "chunks_done": 8, "num_chunks": 8}


def test_auto_mode_takes_one_pass_when_max_frames_see_the_whole_video_at_min_fps(
    svc: CaptionService, engine: RecordingFakeEngine, video: Callable[..., Path]
) -> None:
    clip = video("seed_auto_10s.mp4", seconds=10.0, fps=8, width=32, height=32)
    out = run(svc, {"video": str(clip), "mode": "auto", "min_fps": 2.0, "max_frames": 30, "max_tokens": 8})
    assert "segments" not in out and out["metadata"]["mode"] == "single"
    (request,) = engine.requests
    assert len(request.video[1]["frames_indices"]) == 20  # 10 s at min_fps 2 (the job's fps 1 is below it)


def test_a_follow_up_question_is_answered_from_the_segments_without_fetching_or_decoding(
    svc: CaptionService, engine: RecordingFakeEngine, three_minutes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run(svc, {"video": str(three_minutes), "mode": "chunked", "max_frames": 32, "fps": 0.5, "max_tokens": 8})
    assert first["num_chunks"] == 3

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a context job fetched or decoded media")

    for module, name in [(worker.job.video, "fetch_video"), (worker.job.image, "fetch"),
                         (worker.job.video, "plan_video"), (worker.media.video, "decode_span")]:
        monkeypatch.setattr(module, name, forbidden)
    engine.requests.clear()
    engine.answer = lambda request: "A dog, in the second minute."
    question = "What animal appears, and when?"
    out = run(svc, {"context": first["segments"], "prompt": question, "max_tokens": 32})
    assert out["caption"] == "A dog, in the second minute."
    meta = out["metadata"]
    assert (meta["mode"], meta["context_segments"], meta["context_span"], meta["requests"]) == (
        "context", 3, [0.0, 180.0], 1
    )
    (request,) = engine.requests
    assert "multi_modal_data" not in request.inputs  # text only
    for segment in first["segments"]:
        assert f"[{segment['start']:.1f}–{segment['end']:.1f} s] {segment['caption']}" in request.prompt
    assert question in request.prompt
    # The whole earlier result works as context too, and structured answers follow a schema.
    schema = {"type": "object", "properties": {"animal": {"type": "string"}}, "required": ["animal"]}
    engine.answer = lambda request: '{"animal": "dog"}'
    out = run(svc, {"context": first, "prompt": question, "json_schema": schema})
    assert out["structured"] == {"animal": "dog"} and engine.requests[-1].json_schema == schema


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("seed_clip.mp4", dict(codec="libx264", audio="aac")),
        ("seed_clip.avi", dict(codec="mpeg4", audio="pcm_s16le")),
        ("seed_clip.mov", dict(codec="libx264", audio="aac")),
    ],
    ids=["mp4", "avi", "mov"],
)
def test_the_video_salmonn2_guides_request_in_each_of_its_containers(
    svc: CaptionService, engine: RecordingFakeEngine, video: Callable[..., Path], name: str, kwargs: dict[str, str]
) -> None:
    """The guide's example input as sent (base64 video, its parameters), for each format it names."""
    clip = video(name, seconds=4.0, fps=10, width=64, height=48, **kwargs)
    job = {
        "video": base64.b64encode(clip.read_bytes()).decode(),
        "prompt": "Describe what happens in this video",
        "fps": 2.0,
        "max_frames": 30,
        "temperature": 0.7,
        "max_tokens": 512,
        "top_p": 0.9,
        "process_audio": True,
    }
    out = run(svc, job)
    meta = out["metadata"]
    assert out["caption"] == "caption of request 1"
    assert meta["num_frames"] == 8 and meta["fps_used"] == pytest.approx(2.0)
    assert meta["video"]["codec"] == kwargs["codec"].removeprefix("lib").replace("x264", "h264")
    assert meta["video"]["has_audio"] and meta["video"]["duration"] == pytest.approx(4.0, abs=0.05)
    # A vision-only model: the sound is not heard, and the result says so.
    assert meta["audio_processed"] is False and any("process_audio" in w for w in meta["warnings"])
    (request,) = engine.requests
    assert request.video[0].shape[0] == 8


def test_top_p_zero_decodes_greedily(
    svc: CaptionService, engine: RecordingFakeEngine, video: Callable[..., Path]
) -> None:
    clip = video("seed_top_p.mp4", seconds=2.0, fps=10, width=32, height=32)
    out = run(svc, {"video": str(clip), "top_p": 0.0, "temperature": 0.7, "max_frames": 4})
    assert (out["metadata"]["sampling"]["temperature"], out["metadata"]["sampling"]["top_p"]) == (0.0, 1.0)


def test_structured_caption_task_reaches_the_engine_as_a_schema(
    svc: CaptionService, engine: RecordingFakeEngine, video: Callable[..., Path]
) -> None:
    from worker.api.presets import STRUCTURED_CAPTION_SCHEMA

    clip = video("seed_task.mp4", seconds=2.0, fps=10, width=32, height=32)
    answer = '{"summary": "s", "scene": "a room", "objects": ["cup"], "actions": [], "text_on_screen": []}'
    engine.answer = lambda request: answer
    out = run(svc, {"video": str(clip), "task": "structured_caption", "max_frames": 4})
    assert out["structured"]["scene"] == "a room" and engine.requests[0].json_schema == STRUCTURED_CAPTION_SCHEMA
    assert "JSON object" in engine.requests[0].prompt
