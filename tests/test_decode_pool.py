"""Decoder processes (worker/media/pool.py) with real PyAV: the same frames and sound as threads, the
worker's errors keep their type across the process boundary, and a process that dies fails only the call
that killed it, even under the pipeline with jobs in flight (FakeEngine past the decoder)."""

from __future__ import annotations

import asyncio
import os
import pickle
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fakes import FakeEngine, FakeEngineSlot, load_tokenizer
from worker.devtools.media import make_corrupt
from worker.config import Settings
from worker.media.probe import packet_index, probe
from worker.media.video import decode_span
from worker.media.pool import DecodePool, _cgroup_cpu_quota, _portable_call, start_decoders
from worker.api.errors import (
    DecodeError,
    EngineError,
    FetchError,
    InternalError,
    UnsupportedInputError,
    ValidationError,
    WorkerError,
)
from worker.job.service import CaptionService

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    decoders = DecodePool(2)
    decoders.start()
    yield decoders
    decoders.shutdown()


@pytest.fixture(scope="module")
def clip(video: Callable[..., Path]) -> Path:
    return video("pool_clip.mp4", seconds=3.0, fps=30, width=320, height=240, audio="aac", texture=True)


def test_processes_deliver_exactly_what_threads_deliver(pool: DecodePool, clip: Path) -> None:
    info = probe(clip)
    index = packet_index(clip, info)
    args = (clip, info, [0.0, 0.7, 1.4, 2.9], (112, 140), (0.5, 2.5))
    in_thread = asyncio.run(DecodePool(0).run(decode_span, *args, index=index))
    in_process = asyncio.run(pool.run(decode_span, *args, index=index))
    assert pool.call(probe, clip) == info and pool.call(packet_index, clip, info) == index
    (frames, audio), (frames_p, audio_p) = in_thread, in_process
    assert frames_p.frames.dtype == np.uint8 and frames_p.frames.shape == (4, 112, 140, 3)
    assert np.array_equal(frames.frames, frames_p.frames)
    assert (frames.timestamps, frames.indices) == (frames_p.timestamps, frames_p.indices)
    assert audio is not None and audio_p is not None and audio_p.start == 0.5
    assert np.array_equal(audio.samples, audio_p.samples) and audio_p.samples.dtype == np.float32


def _frame_threads() -> int:
    import worker.media.frames

    return worker.media.frames._frame_threads


def test_tuned_decoder_processes_run_below_the_server_and_decode_the_same_frames(clip: Path) -> None:
    """The knobs bench/e2e.py compares (DECODE_NICE, FFmpeg threads) take effect in the decoder processes
    and change nothing in what they deliver."""
    info = probe(clip)
    args = (clip, info, [0.0, 0.7, 1.4, 2.9], (112, 140), (0.5, 2.5))
    tuned = DecodePool(1, nice=5, frame_threads=1)
    tuned.start()
    try:
        assert tuned.call(os.nice, 0) == os.nice(0) + 5
        assert tuned.call(_frame_threads) == 1 and _frame_threads() == 0
        (frames, audio), (frames_t, audio_t) = DecodePool(0).call(decode_span, *args), tuned.call(decode_span, *args)
        assert np.array_equal(frames.frames, frames_t.frames) and frames.timestamps == frames_t.timestamps
        assert audio is not None and audio_t is not None and np.array_equal(audio.samples, audio_t.samples)
    finally:
        tuned.shutdown()


def test_the_workers_decoder_processes_run_decode_nice_below_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DECODE_WORKERS", "1")
    monkeypatch.setenv("DECODE_NICE", "3")
    decoders = start_decoders(Settings())
    try:
        assert decoders.uses_processes and decoders.call(os.nice, 0) == min(19, os.nice(0) + 3)
    finally:
        decoders.shutdown()


@pytest.mark.parametrize(
    "error",
    [
        ValidationError("bad field", details=[{"field": "fps", "message": "too high"}]),
        FetchError("gone"),
        DecodeError("not a video"),
        UnsupportedInputError("too big"),
        EngineError("died", refresh_worker=True),
        InternalError("bug"),
    ],
)
def test_worker_errors_pickle_with_type_message_and_details(error: WorkerError) -> None:
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and back.type == error.type
    assert (back.message, back.details, back.refresh_worker) == (error.message, error.details, error.refresh_worker)


def test_errors_from_a_decoder_process_keep_their_type(pool: DecodePool, clip: Path, tmp_path: Path) -> None:
    corrupt = make_corrupt(tmp_path / "not_a_video.mp4", "text")
    with pytest.raises(DecodeError) as in_thread:
        probe(corrupt)
    with pytest.raises(DecodeError) as in_process:
        pool.call(probe, corrupt)
    assert in_process.value.message == in_thread.value.message
    with pytest.raises(UnsupportedInputError, match="above MAX_SOURCE_PIXELS=1000"):
        asyncio.run(pool.run(probe, clip, max_pixels=1000))


class _Unpicklable(Exception):
    def __reduce__(self) -> Any:
        raise TypeError("cannot pickle this")


def _raise_unpicklable() -> None:
    raise _Unpicklable("library internals")


def test_an_exception_that_cannot_cross_comes_back_as_a_runtime_error_naming_it() -> None:
    with pytest.raises(RuntimeError, match="^_Unpicklable: library internals$"):
        _portable_call(_raise_unpicklable, (), {})
    with pytest.raises(DecodeError):  # the worker's own pass as they are
        _portable_call(probe, (Path("/nonexistent.mp4"),), {})


def test_a_dead_decoder_process_fails_only_its_own_call(pool: DecodePool, clip: Path) -> None:
    info = probe(clip)
    before = pool.replaced

    async def crash_beside_decodes() -> list[Any]:
        decodes = [pool.run(decode_span, clip, info, [0.1 * k, 1.0, 2.0], (56, 84), (0.0, 3.0)) for k in range(3)]
        # os._exit: the process ends at once, as after a crash inside FFmpeg or the OOM killer.
        return await asyncio.gather(pool.run(os._exit, 70), *decodes, return_exceptions=True)

    crashed, *decoded = asyncio.run(crash_beside_decodes())
    assert isinstance(crashed, DecodeError) and "decoder process died" in crashed.message
    # The calls queued or running beside it were broken with the pool, run again alone, and delivered.
    for got in decoded:
        assert not isinstance(got, BaseException), got
        assert got[0].frames.shape == (3, 56, 84, 3) and got[1] is not None
    assert pool.replaced == before + 1
    assert pool.call(probe, clip) == info and len(pool.pids()) >= 1  # the new pool serves
    assert pool._results is not None and list(pool._results.iterdir()) == []  # every result file removed


# Kills land at different stages: probing, decoding, and while a result of megabytes is on its way back
# (that one used to hang the pool for good, see worker/media/pool.py).
@pytest.mark.parametrize("kill_after", [0.05, 0.15, 0.3, 0.5])
def test_jobs_survive_decoder_processes_killed_mid_job_fake_engine(
    tiny_model: Path, video: Callable[..., Path], media_dir: Path, work_dir: Path, kill_after: float
) -> None:
    longer = video("pool_longer.mp4", seconds=8.0, fps=30, width=640, height=360, audio="aac", texture=True)
    settings = Settings(allowed_media_roots=[media_dir], work_dir=work_dir)
    decoders = DecodePool(2)
    decoders.start()
    service = CaptionService(settings, FakeEngineSlot(FakeEngine(load_tokenizer(tiny_model))), decoders)
    job = {"video": str(longer), "fps": 4.0, "max_frames": 32, "process_audio": True}

    async def jobs_while_killing() -> list[dict[str, Any]]:
        running = [asyncio.ensure_future(service.handle(job)) for _ in range(3)]
        await asyncio.sleep(kill_after)
        for pid in decoders.pids():  # the OOM killer's way: SIGKILL, no clean-up
            os.kill(pid, signal.SIGKILL)
        return await asyncio.gather(*running)

    try:
        outputs = asyncio.run(jobs_while_killing())
        for output in outputs:
            assert "error" not in output, output
            assert output["metadata"]["num_frames"] == 32
        assert decoders.replaced >= 1 or kill_after >= 0.3  # a late kill may find every decode done
        bad = asyncio.run(service.handle({"video": str(make_corrupt(media_dir / "pool_bad.mp4", "text"))}))
        assert bad["error"]["type"] == "decode_error"
    finally:
        decoders.shutdown()


def test_threads_when_decode_workers_is_zero(clip: Path) -> None:
    threads = DecodePool(0)
    threads.start()  # nothing to start
    assert not threads.uses_processes and threads.pids() == []
    assert threads.call(probe, clip).duration == pytest.approx(3.0, abs=0.05)
    assert asyncio.run(threads.run(probe, clip)).width == 320


@pytest.mark.parametrize(
    ("files", "cpus"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "1600000 100000\n"}, 16.0),
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4.0),
        ({}, None),
    ],
)
def test_cgroup_cpu_quota_v1_and_v2(tmp_path: Path, files: dict[str, str], cpus: float | None) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _cgroup_cpu_quota(tmp_path) == cpus
