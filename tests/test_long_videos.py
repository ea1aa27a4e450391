"""Long videos, streaming, batches, conversations and structured output through the runpod SDK's local API
over real HTTP, on the real CPU engine (one server for the module)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from transformers import AutoTokenizer

from tests.local_api import error_of, result_of, runsync, serve_api
from worker.devtools.media import make_corrupt
from worker.media.frame_plan import VisionGeometry, video_tokens

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]
MAX_VIDEO_SECONDS = 900


@pytest.fixture(scope="module")
def api(worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = worker_env | {"MAX_VIDEO_SECONDS": str(MAX_VIDEO_SECONDS)}
    with serve_api(env, tmp_path_factory.mktemp("logs") / "long_api.log") as url:
        yield url


@pytest.fixture(scope="module")
def ten_minutes(video: Callable[..., Path]) -> Path:
    return video("ten_minutes.mp4", seconds=600.0, fps=2, width=64, height=48)


@pytest.fixture(scope="module")
def two_minutes(video: Callable[..., Path]) -> Path:
    return video("two_minutes.mp4", seconds=120.0, fps=4, width=64, height=48, audio="aac")


@pytest.fixture(scope="module")
def text_tokens(tiny_model: Path) -> Callable[[list[dict[str, Any]]], int]:
    """Prompt tokens of a conversation with one video, its placeholder not counted (vLLM expands it)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def count(messages: list[dict[str, Any]]) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(tokenizer(text)["input_ids"]) - 1

    return count


def video_turn(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}


def test_ten_minute_clip_in_chunked_mode(
    api: str, ten_minutes: Path, text_tokens: Callable[[list[dict[str, Any]]], int], work_dir: Path
) -> None:
    job = {"video": str(ten_minutes), "mode": "chunked", "fps": 0.2, "max_frames": 8, "max_tokens": 12, "seed": 0}
    body = runsync(api, job)
    assert len(body["output"]) == 1
    out = result_of(body)
    meta = out["metadata"]
    # max_frames / fps = 40 s chunks: 15 of them tile the 600 s.
    assert out["num_chunks"] == 15 and meta["chunk_seconds"] == 40.0 and meta["mode"] == "chunked"
    segments = out["segments"]
    assert [(s["index"], s["start"], s["end"]) for s in segments] == [(i, 40.0 * i, 40.0 * i + 40) for i in range(15)]
    timestamps = [t for s in segments for t in s["frame_timestamps"]]
    assert timestamps == meta["frame_timestamps"] and len(timestamps) == meta["num_frames"] == 15 * 8
    assert all(a < b for a, b in itertools.pairwise(timestamps))  # monotonic over the whole video
    assert timestamps[0] < 5.0 and timestamps[-1] > 595.0  # covering it, one frame every 5 s
    width, height = meta["frame_size"]
    visual = video_tokens(8, height, width, VisionGeometry())
    for s in segments:
        assert all(s["start"] <= t < s["end"] for t in s["frame_timestamps"]) and s["num_frames"] == 8
        # The engine got the chunk's frames and a prompt stating its span, nothing else.
        span = f"Time {s['start']:.1f}–{s['end']:.1f} s of the video: Describe this video in detail."
        assert s["prompt_tokens"] == text_tokens([video_turn(span)]) + visual
        assert 1 <= s["completion_tokens"] <= 12 and isinstance(s["caption"], str)
    combine = meta["combine"]
    assert combine["method"] == "summary" and combine["requests"] == 1 and combine["completion_tokens"] >= 1
    assert isinstance(out["caption"], str)
    assert meta["prompt_tokens"] == sum(s["prompt_tokens"] for s in segments) + combine["prompt_tokens"]
    assert meta["completion_tokens"] == sum(s["completion_tokens"] for s in segments) + combine["completion_tokens"]
    assert meta["finish_reason"] == combine["finish_reason"]
    assert list(work_dir.iterdir()) == []


def test_stream_gives_each_segment_then_the_result(api: str, two_minutes: Path) -> None:
    job = {"video": str(two_minutes), "mode": "chunked", "chunk_seconds": 30.0, "max_frames": 4, "max_tokens": 8}
    run = requests.post(f"{api}/run", json={"input": job | {"stream": True}}, timeout=30).json()
    # The local API runs a queued job when /stream (or /status) asks for it, and answers when it has ended.
    streamed = requests.post(f"{api}/stream/{run['id']}", timeout=600).json()
    assert streamed["status"] == "COMPLETED", streamed
    parts = [entry["output"] for entry in streamed["stream"]]
    assert len(parts) == 5 and all(set(p) == {"segment", "num_chunks"} for p in parts[:4])
    assert sorted(p["segment"]["index"] for p in parts[:4]) == [0, 1, 2, 3]
    result = parts[-1]
    assert result["segments"] == sorted((p["segment"] for p in parts[:4]), key=lambda s: s["index"])
    # /runsync of a streaming job: the same parts as a list, the result last.
    body = runsync(api, job | {"stream": True})
    assert len(body["output"]) == 5 and result_of(body)["num_chunks"] == 4


def test_chunked_with_concat_and_audio_windows(api: str, two_minutes: Path) -> None:
    job = {"video": str(two_minutes), "mode": "chunked", "chunk_seconds": 50.0, "fps": 0.1, "max_frames": 4}
    out = result_of(runsync(api, job | {"combine": "concat", "max_tokens": 6, "process_audio": True}))
    assert [(s["start"], s["end"]) for s in out["segments"]] == [(0.0, 50.0), (50.0, 100.0), (100.0, 120.0)]
    lines = out["caption"].split("\n")
    assert [line.split("] ")[0] for line in lines] == ["[0.0–50.0 s", "[50.0–100.0 s", "[100.0–120.0 s"]
    meta = out["metadata"]
    assert meta["combine"]["requests"] == 0 and meta["finish_reason"] is None
    # A vision-only model: the warning is given once, not once per chunk.
    assert sum("process_audio" in w for w in meta["warnings"]) == 1


def test_batch_with_one_corrupt_item(api: str, video: Callable[..., Path], media_dir: Path, work_dir: Path) -> None:
    clips = [video(f"lv_batch_{i}.mp4", seconds=3.0 + i, fps=10, width=64, height=48) for i in range(2)]
    corrupt = make_corrupt(media_dir / "lv_truncated.mp4", "truncated", source=clips[1])
    items = [str(clips[0]), str(corrupt), str(media_dir / "missing.mp4"), str(clips[1])]
    out = result_of(runsync(api, {"videos": items, "max_frames": 2, "max_tokens": 6}))
    results = out["results"]
    assert len(results) == 4
    assert round(results[0]["metadata"]["video"]["duration"]) == 3 and isinstance(results[0]["caption"], str)
    assert results[1]["error"]["type"] == "decode_error"
    assert results[2]["error"]["type"] == "fetch_error" and "file not found" in results[2]["error"]["message"]
    assert round(results[3]["metadata"]["video"]["duration"]) == 4
    assert out["metadata"]["num_items"] == 4 and out["metadata"]["num_failed"] == 2
    good = [results[0], results[3]]
    assert out["metadata"]["prompt_tokens"] == sum(r["metadata"]["prompt_tokens"] for r in good)
    # Several images in one job, streamed item by item.
    import numpy as np
    import PIL.Image

    paths = []
    for i, size in enumerate([(120, 200), (200, 120)]):
        path = media_dir / f"lv_image_{i}.png"
        PIL.Image.fromarray(np.full((*size, 3), 40 * i, dtype=np.uint8)).save(path)
        paths.append(str(path))
    body = runsync(api, {"images": paths, "max_tokens": 4, "stream": True})
    parts = body["output"]
    assert sorted(p["item"] for p in parts[:-1]) == [0, 1]
    final = result_of(body)["results"]
    assert [r["metadata"]["video"]["height"] for r in final] == [120, 200]
    assert list(work_dir.iterdir()) == []


def test_multi_turn_messages(api: str, two_minutes: Path, text_tokens: Callable[[list[dict[str, Any]]], int]) -> None:
    messages = [
        {"role": "system", "content": "You describe videos briefly."},
        {"role": "user", "content": "What is on screen?"},
        {"role": "assistant", "content": "A gray square with a white corner."},
        {"role": "user", "content": "Does its brightness change over time?"},
    ]
    out = result_of(runsync(api, {"video": str(two_minutes), "messages": messages, "max_frames": 4, "max_tokens": 8}))
    meta = out["metadata"]
    width, height = meta["frame_size"]
    # Exactly this conversation reached the engine, the video in its first user turn.
    expected = [messages[0], video_turn(messages[1]["content"]), messages[2], messages[3]]
    assert meta["prompt_tokens"] == text_tokens(expected) + video_tokens(4, height, width, VisionGeometry())
    error = error_of(runsync(api, {"video": str(two_minutes), "messages": messages[:3]}))
    assert error["type"] == "validation_error" and "last message must be the user's" in error["message"]
    error = error_of(runsync(api, {"video": str(two_minutes), "messages": messages, "prompt": "Hi"}))
    assert "prompt or messages" in error["message"]


def test_json_schema_constrains_the_caption(api: str, two_minutes: Path) -> None:
    schema = {
        "type": "object",
        "properties": {"moving": {"type": "boolean"}, "colour": {"enum": ["gray", "white"]}},
        "required": ["moving", "colour"],
        "additionalProperties": False,
    }
    job = {"video": str(two_minutes), "json_schema": schema, "max_frames": 2, "max_tokens": 48, "temperature": 0.0}
    out = result_of(runsync(api, job))
    assert out["metadata"]["finish_reason"] == "stop", out
    assert out["structured"] == json.loads(out["caption"])
    assert set(out["structured"]) == {"moving", "colour"} and out["structured"]["colour"] in ("gray", "white")
    # Malformed for JSON Schema itself: rejected by the metaschema, the field named.
    error = error_of(runsync(api, {"video": str(two_minutes), "json_schema": {"type": "colour"}}))
    assert error["type"] == "validation_error" and error["details"][0]["field"] == "json_schema"
    # Well-formed, but the engine's grammar compiler cannot resolve it: also a validation error, up front.
    broken = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "required": ["a"]}
    error = error_of(runsync(api, {"video": str(two_minutes), "json_schema": broken}))
    assert error["type"] == "validation_error" and "the engine cannot use this schema" in error["message"]


def test_duration_cap(api: str, video: Callable[..., Path], work_dir: Path) -> None:
    too_long = video("sixteen_minutes.mp4", seconds=960.0, fps=1, width=32, height=32)
    error = error_of(runsync(api, {"video": str(too_long), "mode": "chunked"}))
    assert error["type"] == "unsupported_input"
    assert f"960 s long, above MAX_VIDEO_SECONDS={MAX_VIDEO_SECONDS}" in error["message"]
    assert list(work_dir.iterdir()) == []
