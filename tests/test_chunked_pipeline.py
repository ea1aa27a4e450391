"""Chunked mode, streaming, progress, batches and structured output through the real pipeline (real PyAV on
generated videos, real adapter and tokenizer) with a fake engine (tests/fakes.py): what reaches
the engine, in what order, and what the job reports. The real engine runs them in test_long_videos.py."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import worker.media.frames
import worker.media.probe
from tests.fakes import FakeEngineSlot, FakeRequest, RecordingFakeEngine, count_tokens
from worker.devtools.media import make_corrupt
from worker.config import Settings
from worker.job.service import CaptionService

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def long_clip(video: Callable[..., Path]) -> Path:
    return video("chunk_100s.mp4", seconds=100.0, fps=5, width=64, height=48, gop=25)


@pytest.fixture
def engine(tiny_model: Path) -> RecordingFakeEngine:
    return RecordingFakeEngine(tiny_model)


def service(engine: RecordingFakeEngine, media_dir: Path, work_dir: Path, **overrides: Any) -> CaptionService:
    settings = Settings(allowed_media_roots=[media_dir], work_dir=work_dir, **overrides)
    return CaptionService(settings, FakeEngineSlot(engine))


def run(svc: CaptionService, job: dict[str, Any], progress: list[dict[str, Any]] | None = None) -> list[dict]:
    async def collect() -> list[dict]:
        return [part.body async for part in svc.run(job, "job-1", progress.append if progress is not None else None)]

    return asyncio.run(collect())


CHUNKED = {"mode": "chunked", "fps": 0.5, "max_frames": 10, "max_tokens": 32}


async def wait_until(condition: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    """Poll ``condition`` until it holds; fail the test, saying ``what`` was awaited, after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"still waiting after {seconds:g} s for {what}"
        await asyncio.sleep(0.05)


def test_chunks_reach_the_engine_with_their_span_and_true_timing(
    engine: RecordingFakeEngine, long_clip: Path, media_dir: Path, work_dir: Path
) -> None:
    parts = run(service(engine, media_dir, work_dir), {"video": str(long_clip), **CHUNKED})
    assert len(parts) == 1  # not streaming: only the complete result
    out = parts[0]
    assert out["num_chunks"] == 5 and out["metadata"]["chunk_seconds"] == 20.0
    # 5 chunk requests, then one text-only summary request.
    chunk_requests, summary = engine.requests[:5], engine.requests[5:]
    assert len(summary) == 1 and summary[0].video is None and "multi_modal_data" not in summary[0].inputs
    for i, request in enumerate(sorted(chunk_requests, key=lambda r: r.prompt)):
        start, end = 20.0 * i, 20.0 * (i + 1)
        assert f"Time {start:.1f}–{end:.1f} s of the video: Describe this video in detail." in request.prompt
        frames, meta = request.video
        assert frames.shape[0] == 10
        # The rate the processor derives is the chunk's own; the indices are the source's (true times).
        assert len(meta["frames_indices"]) / meta["total_num_frames"] * meta["fps"] == pytest.approx(0.5, rel=0.05)
        times = [index / meta["fps"] for index in meta["frames_indices"]]
        assert all(start <= t < end for t in times)
    segments = out["segments"]
    assert [(s["index"], s["start"], s["end"]) for s in segments] == [(i, 20.0 * i, 20.0 * (i + 1)) for i in range(5)]
    for s in segments:
        assert s["num_frames"] == 10 and all(s["start"] <= t < s["end"] for t in s["frame_timestamps"])
        assert set(s) == {
            "index", "start", "end", "caption", "num_frames", "frame_timestamps", "audio_seconds",
            "prompt_tokens", "completion_tokens", "finish_reason", "inference_seconds",
        }  # fmt: skip
    # The summary request lists every segment caption with its span, in order, and the user's request.
    lines = re.findall(r"^\[(\d+\.\d)–(\d+\.\d) s\] (.*)$", summary[0].prompt, re.MULTILINE)
    assert [(float(a), float(b), text) for a, b, text in lines] == [
        (s["start"], s["end"], s["caption"]) for s in segments
    ]
    assert summary[0].prompt.rstrip().endswith("Describe this video in detail.<|im_end|>\n<|im_start|>assistant")
    meta = out["metadata"]
    assert out["caption"] == "caption of request 6"
    assert meta["mode"] == "chunked" and meta["num_frames"] == 50
    assert meta["frame_timestamps"] == [t for s in segments for t in s["frame_timestamps"]]
    assert meta["combine"]["method"] == "summary" and meta["combine"]["requests"] == 1
    # Tokens: every request counted once, per segment and in total.
    assert meta["prompt_tokens"] == sum(s["prompt_tokens"] for s in segments) + meta["combine"]["prompt_tokens"]
    assert (
        meta["completion_tokens"]
        == sum(s["completion_tokens"] for s in segments) + meta["combine"]["completion_tokens"]
    )
    assert list(work_dir.iterdir()) == []


def test_each_chunk_is_decoded_once_seeking_to_it(
    engine: RecordingFakeEngine, long_clip: Path, media_dir: Path, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[float]] = []
    indexed: list[Path] = []
    real_decode, real_index = worker.media.frames.decode_frames, worker.media.probe._packet_index

    def decode_spy(path: Path, info: Any, timestamps: list[float], size: tuple[int, int], **kwargs: Any) -> Any:
        calls.append(list(timestamps))
        return real_decode(path, info, timestamps, size, **kwargs)

    def index_spy(path: Path, *args: Any) -> Any:
        indexed.append(path)
        return real_index(path, *args)

    monkeypatch.setattr(worker.media.frames, "decode_frames", decode_spy)
    monkeypatch.setattr(worker.media.probe, "_packet_index", index_spy)
    out = run(service(engine, media_dir, work_dir), {"video": str(long_clip), **CHUNKED})[-1]
    assert calls == [s["frame_timestamps"] for s in out["segments"]]
    assert len(indexed) == 1  # the demux-only pass over the whole file runs once, not once per chunk


def test_stream_yields_each_segment_before_the_others_finish(
    engine: RecordingFakeEngine, long_clip: Path, media_dir: Path, work_dir: Path
) -> None:
    """Chunk 0's request finishes at once; the others are held until its segment has been yielded."""
    released = asyncio.Event()

    async def gate(request: FakeRequest) -> None:
        if "Time 0.0–20.0 s" not in request.prompt and request.video is not None:
            await released.wait()

    engine.gate = gate
    svc = service(engine, media_dir, work_dir)
    progress: list[dict[str, Any]] = []

    async def consume() -> list[dict[str, Any]]:
        parts = []
        async for output in svc.run({"video": str(long_clip), "stream": True, **CHUNKED}, "job-s", progress.append):
            part = output.body
            if not parts:
                # The first part arrives while the other chunks cannot have finished; they reach the engine
                # (decoded meanwhile) and are held there until released.
                assert part["segment"]["index"] == 0 and part["num_chunks"] == 5
                await wait_until(
                    lambda: sum(1 for r in engine.requests if r.video is not None) >= 5, "5 chunk requests"
                )
                released.set()
            parts.append(part)
        return parts

    parts = asyncio.run(consume())
    assert [set(p) for p in parts[:5]] == [{"segment", "num_chunks"}] * 5
    assert sorted(p["segment"]["index"] for p in parts[:5]) == list(range(5))
    final = parts[-1]
    assert len(parts) == 6 and final["segments"] == sorted((p["segment"] for p in parts[:5]), key=lambda s: s["index"])
    # Progress after every chunk.
    assert [u["chunks_done"] for u in progress] == [1, 2, 3, 4, 5]
    assert all(u["num_chunks"] == 5 and u["num_items"] == 1 for u in progress)


def test_concat_joins_timestamped_captions_without_a_summary_request(
    engine: RecordingFakeEngine, long_clip: Path, media_dir: Path, work_dir: Path
) -> None:
    out = run(service(engine, media_dir, work_dir), {"video": str(long_clip), **CHUNKED, "combine": "concat"})[-1]
    assert len(engine.requests) == 5
    assert out["caption"].splitlines() == [
        f"[{s['start']:.1f}–{s['end']:.1f} s] {s['caption']}" for s in out["segments"]
    ]
    assert out["metadata"]["combine"] == {
        "method": "concat", "requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "finish_reason": None,
        "seconds": 0.0,
    }  # fmt: skip


def test_many_segments_are_summarised_in_rounds_that_fit_the_context(
    tiny_model: Path, long_clip: Path, media_dir: Path, work_dir: Path
) -> None:
    engine = RecordingFakeEngine(tiny_model, max_model_len=1024)
    engine.answer = lambda request: "word " * 60  # long captions: 1 s chunks x 60 words cannot fit one request
    job = {"video": str(long_clip), "mode": "chunked", "fps": 1.0, "max_frames": 2, "max_tokens": 100}
    out = run(service(engine, media_dir, work_dir), job)[-1]
    assert out["num_chunks"] == 50
    summaries = [r for r in engine.requests if r.video is None]
    combine = out["metadata"]["combine"]
    assert combine["requests"] == len(summaries) > 1
    assert all(count_tokens(engine, r.prompt) <= 1024 - 100 for r in summaries)
    # The last request summarises timed parts covering the whole video.
    spans = re.findall(r"^\[(\d+\.\d)–(\d+\.\d) s\]", summaries[-1].prompt, re.MULTILINE)
    assert float(spans[0][0]) == 0.0 and float(spans[-1][1]) == 100.0


def test_prompts_the_worker_builds_may_exceed_the_callers_length_limit(
    tiny_model: Path, long_clip: Path, media_dir: Path, work_dir: Path
) -> None:
    """A 16384-character prompt (the limit) gets its span prefix, and the summary request quotes 50 segment
    captions of 400 characters: both longer than a caller's prompt may be, neither an internal error."""
    engine = RecordingFakeEngine(tiny_model, max_model_len=32768)
    engine.answer = lambda request: "word " * 80
    prompt = "x " * 8192
    job = {"video": str(long_clip), "mode": "chunked", "fps": 1.0, "max_frames": 2, "max_tokens": 100}
    out = run(service(engine, media_dir, work_dir), job | {"prompt": prompt})[-1]
    assert "error" not in out and out["num_chunks"] == 50
    summary = [r for r in engine.requests if r.video is None]
    assert len(summary) == 1 and len(summary[0].prompt) > 16384 + 50 * 400
    assert all(f"s of the video: {prompt}" in r.prompt for r in engine.requests if r.video is not None)


def test_duration_cap_is_checked_before_decoding(
    engine: RecordingFakeEngine, long_clip: Path, media_dir: Path, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(worker.media.frames, "decode_frames", lambda *a: pytest.fail("decoded a video over the cap"))
    out = run(service(engine, media_dir, work_dir, max_video_seconds=60), {"video": str(long_clip)})[-1]
    assert out["error"]["type"] == "unsupported_input"
    assert "100 s long, above MAX_VIDEO_SECONDS=60" in out["error"]["message"]
    assert engine.requests == [] and list(work_dir.iterdir()) == []


def test_batch_gives_one_entry_per_item_in_order_and_an_error_for_the_bad_one(
    engine: RecordingFakeEngine, video: Callable[..., Path], media_dir: Path, work_dir: Path
) -> None:
    clips = [video(f"batch_{i}.mp4", seconds=2.0 + i, fps=10) for i in range(3)]
    bad = make_corrupt(media_dir / "batch_bad.mp4", "text")
    progress: list[dict[str, Any]] = []
    job = {"videos": [str(clips[0]), str(bad), str(clips[1]), str(clips[2])], "max_frames": 2, "stream": True}
    parts = run(service(engine, media_dir, work_dir), job, progress)
    streamed = parts[:-1]
    assert sorted(p["item"] for p in streamed) == [0, 1, 2, 3]
    out = parts[-1]
    results = out["results"]
    assert [round(r["metadata"]["video"]["duration"]) for r in (results[0], results[2], results[3])] == [2, 3, 4]
    assert results[1]["error"]["type"] == "decode_error" and set(results[1]) == {"error"}
    assert out["metadata"]["num_items"] == 4 and out["metadata"]["num_failed"] == 1
    assert out["metadata"]["prompt_tokens"] == sum(r["metadata"]["prompt_tokens"] for r in results if "error" not in r)
    assert [u["items_done"] for u in progress if u["items_done"]][-1] == 4
    assert len([r for r in engine.requests]) == 3


def test_closing_the_stream_cancels_the_requests_in_flight(
    engine: RecordingFakeEngine, long_clip: Path, media_dir: Path, work_dir: Path
) -> None:
    async def never(request: FakeRequest) -> None:
        await asyncio.Event().wait()

    engine.gate = never
    svc = service(engine, media_dir, work_dir)

    async def cancel_midway() -> None:
        task = asyncio.ensure_future(svc.handle({"video": str(long_clip), **CHUNKED}))
        await wait_until(lambda: len(engine.requests) >= 5, "5 requests in the engine")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)

    asyncio.run(cancel_midway())
    assert [r.cancelled for r in engine.requests] == [True] * 5
    assert list(work_dir.iterdir()) == []


def test_structured_output_is_parsed_beside_the_text(
    engine: RecordingFakeEngine, long_clip: Path, media_dir: Path, work_dir: Path
) -> None:
    schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
    engine.answer = lambda request: '{"label": "gray"}'
    svc = service(engine, media_dir, work_dir)
    out = run(svc, {"video": str(long_clip), "json_schema": schema, "max_frames": 2})[-1]
    assert out["caption"] == '{"label": "gray"}' and out["structured"] == {"label": "gray"}
    assert engine.requests[-1].json_schema == schema
    chunked = run(svc, {"video": str(long_clip), "json_schema": schema, **CHUNKED})[-1]
    assert (
        chunked["structured"] == {"label": "gray"}
        and [s["structured"] for s in chunked["segments"]] == [{"label": "gray"}] * 5
    )
    # Cut or broken JSON: structured is null and a warning says why.
    engine.answer, engine.finish_reason = (lambda request: '{"label": "gr'), "length"
    cut = run(svc, {"video": str(long_clip), "json_schema": schema, "max_frames": 2})[-1]
    assert cut["structured"] is None
    assert any("json_schema: the caption is cut at max_tokens" in w for w in cut["metadata"]["warnings"])
    # Without a schema the key is absent, as before.
    assert "structured" not in run(svc, {"video": str(long_clip), "max_frames": 2})[-1]


def test_a_schema_the_engine_cannot_compile_fails_before_any_fetch(
    engine: RecordingFakeEngine, media_dir: Path, work_dir: Path
) -> None:
    job = {"video": str(media_dir / "missing.mp4"), "json_schema": {"type": "object", "x-uncompilable": True}}
    out = run(service(engine, media_dir, work_dir), job)[-1]
    assert out["error"]["type"] == "validation_error"  # not the fetch_error of the missing file


def test_messages_put_the_media_in_the_first_user_turn(
    engine: RecordingFakeEngine, long_clip: Path, media_dir: Path, work_dir: Path
) -> None:
    messages = [
        {"role": "user", "content": "What is on screen?"},
        {"role": "assistant", "content": "A gray square."},
        {"role": "user", "content": "Does it change?"},
    ]
    run(service(engine, media_dir, work_dir), {"video": str(long_clip), "messages": messages, **CHUNKED})
    prompt = engine.requests[0].prompt
    turns = re.findall(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>", prompt, re.DOTALL)
    assert [role for role, _ in turns] == ["system", "user", "assistant", "user"]
    assert turns[1][1].startswith("<|vision_start|><|video_pad|><|vision_end|>Time ")
    assert turns[1][1].endswith("of the video: What is on screen?")
    assert turns[3][1] == "Does it change?"
    # The summary answers the last question.
    assert engine.requests[-1].prompt.rstrip().endswith("Does it change?<|im_end|>\n<|im_start|>assistant")


def test_audio_models_hear_each_chunk_over_its_own_span(
    tmp_path_factory: pytest.TempPathFactory, video: Callable[..., Path], media_dir: Path, work_dir: Path
) -> None:
    from worker.devtools.dummy_model import build_dummy_model

    omni = RecordingFakeEngine(build_dummy_model(tmp_path_factory.mktemp("omni") / "omni", "qwen2_5_omni", "tiny"))
    clip = video("chunk_audio_90s.mp4", seconds=90.0, fps=4, width=64, height=48, audio="aac")
    job = {"video": str(clip), "mode": "chunked", "chunk_seconds": 40.0, "fps": 0.5, "max_frames": 20}
    out = run(service(omni, media_dir, work_dir), job | {"process_audio": True})[-1]
    assert [(s["start"], s["end"]) for s in out["segments"]] == [(0.0, 40.0), (40.0, 80.0), (80.0, 90.0)]
    requests = sorted((r for r in omni.requests if r.video is not None), key=lambda r: r.prompt)
    for request, segment in zip(requests, out["segments"], strict=True):
        samples, rate = request.inputs["multi_modal_data"]["audio"]
        # The chunk's frames stand for its whole span; its sound covers the same span, nothing more.
        assert len(samples) / rate == pytest.approx(segment["end"] - segment["start"], abs=0.05)
        assert segment["audio_seconds"] == pytest.approx(len(samples) / rate)
        kwargs = request.inputs["mm_processor_kwargs"]
        # Heard inside the video's placeholder, interleaved with the frames (use_audio_in_video), not after them.
        assert "<|AUDIO|>" not in request.prompt and kwargs["use_audio_in_video"] is True
        assert kwargs["fps"] == pytest.approx(segment["num_frames"] / (segment["end"] - segment["start"]))
    meta = out["metadata"]
    assert meta["audio_processed"] is True and meta["audio_seconds"] == pytest.approx(90.0, abs=0.1)
    assert meta["audio_tokens"] == sum(
        omni.adapter.audio_tokens(round(s["audio_seconds"] * 16000)) for s in out["segments"]
    )


def test_frames_in_memory_are_bounded_by_max_num_seqs(
    engine: RecordingFakeEngine, long_clip: Path, media_dir: Path, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunk is decoded only when one of MAX_NUM_SEQS slots is free; slots are shared by all jobs."""
    decoded: list[float] = []
    real = worker.media.frames.decode_frames

    def spy(path: Path, info: Any, timestamps: list[float], size: tuple[int, int], **kwargs: Any) -> Any:
        decoded.append(timestamps[0])
        return real(path, info, timestamps, size, **kwargs)

    monkeypatch.setattr(worker.media.frames, "decode_frames", spy)
    released = asyncio.Event()

    async def hold(request: FakeRequest) -> None:
        await released.wait()

    engine.gate = hold
    svc = service(engine, media_dir, work_dir, max_num_seqs=3)

    async def two_jobs() -> list[dict[str, Any]]:
        jobs = [asyncio.ensure_future(svc.handle({"video": str(long_clip), **CHUNKED})) for _ in range(2)]
        await wait_until(lambda: len(engine.requests) >= 3, "3 requests in the engine")
        await asyncio.sleep(0.5)  # room for a fourth decode, which must not happen
        held = (len(engine.requests), len(decoded))
        released.set()
        assert held == (3, 3)  # 10 chunks wanted, 3 decoded and in the engine
        return list(await asyncio.gather(*jobs))

    outs = asyncio.run(two_jobs())
    assert [o["num_chunks"] for o in outs] == [5, 5] and len(decoded) == 10


def test_a_header_claiming_more_than_the_cap_is_checked_against_the_packets(
    engine: RecordingFakeEngine, media_dir: Path, work_dir: Path, tmp_path: Path
) -> None:
    from tests.hostile_media import mkv_duration

    lying = mkv_duration(media_dir / "claims_ten_hours.mkv", tmp_path, 36_000_000.0)  # 2 s of frames
    job = {"video": str(lying), "mode": "chunked", "chunk_seconds": 1.0, "fps": 2.0, "max_frames": 2}
    out = run(service(engine, media_dir, work_dir, max_video_seconds=60), job)[-1]
    assert out["metadata"]["video"]["duration"] == pytest.approx(2.0, abs=0.15)
    assert out["num_chunks"] == 2 and out["segments"][-1]["end"] == out["metadata"]["video"]["duration"]
    assert any("declares 36000 s but its frames end at 2.0 s" in w for w in out["metadata"]["warnings"])
