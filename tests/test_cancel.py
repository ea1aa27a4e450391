"""A job RunPod stops (``/cancel``, or its execution timeout: both reach the worker through the runpod SDK's
stop channel, and the SDK cancels the job's task) stops its work at once: the engine requests of every chunk
are aborted, its engine slots and scratch files are released, and the worker serves the next job. Through
the SDK's own worker loop on the real CPU engine (tests/cancel_worker.py)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from runpod.serverless.modules import rp_job

from tests.fakes import FakeEngineSlot, FakeRequest, RecordingFakeEngine
from worker.config import Settings
from worker.engine import Engine, MediaPixels, PixelLimits
from worker.job.service import CaptionService
from worker.runpod_handler import make_stream_handler

ROOT = Path(__file__).resolve().parent.parent


async def until(condition: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {seconds} s: {what}")


@pytest.mark.timeout(120)
def test_a_job_stopped_in_its_summary_cancels_the_summary_request_fake_engine(
    tiny_model: Path, video: Callable[..., Path], media_dir: Path, work_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's own job runner (rp_job.handle_job, as RunPod's worker loop runs it) cancelled while the job's
    text-only summary request is in the engine: that request is cancelled too and the engine slots are free."""
    clip = video("cancel_summary.mp4", seconds=20.0, fps=4, width=64, height=48)
    engine = RecordingFakeEngine(tiny_model)

    async def summaries_never_end(request: FakeRequest) -> None:
        if request.video is None:  # the summary: text only
            await asyncio.Event().wait()

    engine.gate = summaries_never_end
    settings = Settings(allowed_media_roots=[media_dir], work_dir=work_dir, max_num_seqs=4)
    svc = CaptionService(settings, FakeEngineSlot(engine))
    config: dict[str, Any] = {"return_aggregate_stream": True}
    config["handler"] = make_stream_handler(svc, config, progress=False)
    posted: list[str] = []

    async def record(*args: Any, **kwargs: Any) -> None:
        posted.append("result")

    monkeypatch.setattr(rp_job, "stream_result", record)
    monkeypatch.setattr(rp_job, "send_result", record)

    async def stop_in_summary() -> None:
        job = {"id": "job-7", "input": {"video": str(clip), "mode": "chunked", "fps": 0.5, "max_frames": 5}}
        task = asyncio.ensure_future(rp_job.handle_job(None, config, job))
        await until(lambda: any(r.video is None for r in engine.requests), "the summary request")
        task.cancel()  # what JobScaler.stop_job does
        with pytest.raises(asyncio.CancelledError):
            await task
        summary = next(r for r in engine.requests if r.video is None)
        await until(lambda: summary.cancelled, "the summary request cancelled")
        for _ in range(settings.max_num_seqs):  # every engine slot free again
            await asyncio.wait_for(svc._fan_out.acquire(), 1)  # noqa: SLF001 - the service's own bound

    asyncio.run(stop_in_summary())
    assert [r.video is None for r in engine.requests] == [False, False, True]  # 2 chunks, then the summary
    assert posted == []  # nothing streamed (stream is off) and no result for a stopped job
    assert list(work_dir.iterdir()) == []


def test_a_cancelled_request_is_aborted_by_its_id_too() -> None:
    """vLLM aborts a request whose stream is cancelled, except while the request is still being added; the
    engine then aborts it by the worker's id, which is a no-op when vLLM already did."""
    aborted: list[str] = []
    started = asyncio.Event()

    async def generate(inputs: Any, params: Any, request_id: str) -> Any:
        started.set()
        await asyncio.Event().wait()
        yield None

    async def abort(request_id: str) -> None:
        aborted.append(request_id)

    llm = SimpleNamespace(
        vllm_config=SimpleNamespace(model_config=SimpleNamespace(max_model_len=4096, get_diff_sampling_param=dict)),
        generate=generate,
        abort=abort,
    )
    pixels = MediaPixels(video=PixelLimits(56 * 56, 448 * 448), image=PixelLimits(56 * 56, 1280 * 28 * 28))
    engine = Engine(llm, adapter=None, tokenizer=None, model="fake", pixels=pixels)  # type: ignore[arg-type]

    async def cancel() -> None:
        task = asyncio.ensure_future(engine.generate({"prompt": "x"}, {"max_tokens": 4}, "job-1-abcd1234"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel())
    assert aborted == ["job-1-abcd1234"]


@pytest.mark.engine
@pytest.mark.timeout(900)
@pytest.mark.parametrize("streaming", [False, True], ids=["result", "stream"])
def test_a_stopped_chunked_job_leaves_nothing_behind_and_the_next_job_runs(
    worker_env: dict[str, str], video: Callable[..., Path], work_dir: Path, tmp_path: Path, streaming: bool
) -> None:
    """Both handlers RunPod may run: the default coroutine, and the async generator of ENABLE_STREAMING."""
    long_clip = video("cancel_60s.mp4", seconds=60.0, fps=4, width=64, height=48)
    short_clip = video("cancel_next.mp4", seconds=4.0, fps=4, width=64, height=48)
    # 30 chunks of 2 s, 8 (MAX_NUM_SEQS) at a time in the engine, each asking for 512 tokens; base64, so the
    # job has a file in its scratch directory until its last chunk is decoded, long after the first is done.
    long_job = {
        "video": base64.b64encode(long_clip.read_bytes()).decode(),
        "mode": "chunked",
        "fps": 1.0,
        "max_frames": 2,
        "max_tokens": 512,
        "stream": streaming,
    }
    next_job = {"video": str(short_clip), "max_frames": 4, "max_tokens": 8}
    paths = [tmp_path / name for name in ("long.json", "next.json", "report.json")]
    paths[0].write_text(json.dumps(long_job))
    paths[1].write_text(json.dumps(next_job))
    env = {k: v for k, v in worker_env.items() if not k.startswith("RUNPOD_WEBHOOK_")}
    env["ENABLE_STREAMING"] = str(streaming).lower()
    proc = subprocess.run(
        [sys.executable, "-m", "tests.cancel_worker", *map(str, paths)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=840,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    report = json.loads(paths[2].read_text())
    print({k: v for k, v in report.items() if k not in ("events", "files_at_stop")})
    assert "referee_error" not in report, report["referee_error"] + "\n" + log[-3000:]

    # Stopped mid-way: requests done, others in the engine, chunks still to decode from its scratch file.
    assert 1 <= report["requests_done_before_stop"] < 30
    assert report["requests_at_stop"] >= 1 and report["files_at_stop"]
    if streaming:  # the segments of the finished requests were streamed
        assert report["num_chunks"] == 30 and report["segments_before_stop"] >= 1
    # The SDK ends the job (no result is posted for it: RunPod has already marked it cancelled) and everything
    # it held goes with it at once.
    long_events = [(kind, data) for kind, job, data in report["events"] if job == "long"]
    assert [kind for kind, _ in long_events] == ["stream"] * len(long_events)
    assert report["job_ended_s"] < 5 and report["requests_gone_s"] < 5 and report["files_gone_s"] < 5
    assert report["core_drained_s"] < 2  # a leftover request would keep the engine core busy for seconds
    assert report["slots_free"] == int(worker_env["MAX_NUM_SEQS"])
    # The worker keeps serving.
    (done,) = [data for kind, job, data in report["events"] if kind == "done" and job == "next"]
    result = done["output"][-1] if streaming else done["output"]  # the list of parts, or the result itself
    assert "error" not in done and result["metadata"]["completion_tokens"] >= 1
    assert report["in_engine_at_end"] == 0
    assert list(work_dir.iterdir()) == []
