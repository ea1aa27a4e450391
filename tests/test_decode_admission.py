"""Decodes admitted in arrival order (worker/media/admission.py) on the real decoder pool with real PyAV:
the first jobs in reach the engine first (by the turn taken on arrival, not the download's end), no more
decode at once than the bound, a chunked video waiting for engine slots lets the jobs behind it decode;
and each job's CPU comes back by stage (worker/media/cpu.py). Observed through the pool's and the engine's
records, never through timings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import FakeEngineSlot, RecordingFakeEngine
from worker.config import Settings
from worker.job.service import CaptionService
from worker.media import cpu
from worker.media.admission import Admission
from worker.media.pool import DecodePool
from worker.media.probe import packet_index, probe
from worker.media.video import decode_span

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def clip(video: Callable[..., Path]) -> Path:
    return video("admission_clip.mp4", seconds=4.0, fps=30, width=320, height=240, audio="aac", texture=True)


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    decoders = DecodePool(2, frame_threads=1)
    decoders.start()
    yield decoders
    decoders.shutdown()


# ---- the gate alone ----


def test_the_gate_admits_in_arrival_order_at_most_its_limit() -> None:
    admission = Admission(2)
    entered: list[int] = []
    released: list[int] = []

    async def holder(i: int, hold: asyncio.Event) -> None:
        with await admission.enter():
            entered.append(i)
            assert admission.active <= 2
            await hold.wait()
            released.append(i)

    async def scenario() -> None:
        holds = [asyncio.Event() for _ in range(6)]
        tasks = [asyncio.create_task(holder(i, holds[i])) for i in range(6)]
        await asyncio.sleep(0)
        assert entered == [0, 1]
        # Release in reverse of arrival among the holders: the places still go to the waiters in order.
        for i in (1, 0, 3, 2, 5, 4):
            holds[i].set()
            while i not in released:
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    assert entered == [0, 1, 2, 3, 4, 5]
    assert admission.peak == 2 and admission.active == 0 and admission.admitted == 6


def test_a_cancelled_waiter_gives_up_its_turn_and_a_newcomer_cannot_jump_the_queue() -> None:
    admission = Admission(1)

    async def scenario() -> list[str]:
        order: list[str] = []
        first = await admission.enter()
        waiting = asyncio.create_task(admission.enter())
        behind = asyncio.create_task(admission.enter())
        await asyncio.sleep(0)
        waiting.cancel()
        first.release()
        ticket = await behind
        order.append("behind")
        newcomer = asyncio.create_task(admission.enter())
        await asyncio.sleep(0)
        assert not newcomer.done()  # the place is held: a newcomer waits its turn
        ticket.release()
        (await newcomer).release()
        order.append("newcomer")
        return order

    assert asyncio.run(scenario()) == ["behind", "newcomer"]
    assert admission.active == 0


def test_a_job_keeps_the_turn_it_took_on_arrival_while_its_media_was_fetched() -> None:
    admission = Admission(1)

    async def scenario() -> list[str]:
        order: list[str] = []
        early = admission.number()  # arrived first, still downloading
        holder = await admission.enter()

        async def waiter(name: str, number: int | None) -> None:
            with await admission.enter(number):
                order.append(name)

        late = asyncio.create_task(waiter("late", None))
        await asyncio.sleep(0)
        first = asyncio.create_task(waiter("early", early))  # its download is done now
        await asyncio.sleep(0)
        holder.release()
        await asyncio.gather(late, first)
        return order

    assert asyncio.run(scenario()) == ["early", "late"]


def test_the_gate_serves_one_event_loop_after_another() -> None:
    admission = Admission(1)  # a decoder pool outlives loops: benches and tests run several

    async def contend() -> None:
        first = await admission.enter()
        second = asyncio.create_task(admission.enter())
        await asyncio.sleep(0)
        first.release()
        (await second).release()

    asyncio.run(contend())
    asyncio.run(contend())
    assert admission.active == 0 and admission.admitted == 4


# ---- the real pool ----


async def _media_job(pool: DecodePool, clip: Path, i: int, admitted: list[int], done: list[int]) -> dict[str, float]:
    """What caption_video does with the decoders: admission, then probe, packet index and decode."""
    with cpu.opened() as spent:
        with await pool.admit():
            admitted.append(i)
            info = await pool.run(probe, clip)
            index = await pool.run(packet_index, clip, info)
            await pool.run(decode_span, clip, info, [0.5 * k for k in range(8)], (112, 140), None, index=index)
        done.append(i)
    return spent.seconds


def test_jobs_decode_in_arrival_order_at_most_as_many_as_processes(pool: DecodePool, clip: Path) -> None:
    admitted: list[int] = []
    done: list[int] = []
    peak_before = pool.peak_in_flight

    async def eight_at_once() -> list[dict[str, float]]:
        return await asyncio.gather(*(_media_job(pool, clip, i, admitted, done) for i in range(8)))

    spent = asyncio.run(eight_at_once())
    assert admitted == list(range(8))
    assert pool.admission.peak == 2 and pool.admission.active == 0
    assert max(peak_before, 2) >= pool.peak_in_flight  # the pool never had more calls than admitted jobs
    # A job is admitted only once all but one of those before it are done: none finishes more than one
    # place behind its turn.
    for position, job in enumerate(done):
        assert position >= job - 1, done
    for seconds in spent:  # every stage accounted, in the decoder processes and on the hand-over
        assert {"probe", "packet_index", "decode", "resize", "handover"} <= set(seconds)
        assert seconds["decode"] > 0 and "audio" not in seconds


def test_one_process_decodes_the_jobs_exactly_in_arrival_order(clip: Path) -> None:
    single = DecodePool(1, frame_threads=1)
    single.start()
    admitted: list[int] = []
    done: list[int] = []

    async def six_at_once() -> None:
        await asyncio.gather(*(_media_job(single, clip, i, admitted, done) for i in range(6)))

    try:
        asyncio.run(six_at_once())
    finally:
        single.shutdown()
    assert admitted == done == list(range(6))
    assert single.peak_in_flight == 1


# ---- through the service (real pipeline, fake engine) ----


@pytest.fixture
def engine(tiny_model: Path) -> RecordingFakeEngine:
    return RecordingFakeEngine(tiny_model)


def test_the_first_jobs_in_reach_the_engine_first_with_their_cpu_account(
    engine: RecordingFakeEngine, clip: Path, media_dir: Path, work_dir: Path
) -> None:
    decoders = DecodePool(1, frame_threads=1)
    decoders.start()
    service = CaptionService(Settings(allowed_media_roots=[media_dir], work_dir=work_dir), FakeEngineSlot(engine), decoders)
    job = {"video": str(clip), "fps": 2.0, "max_frames": 8, "process_audio": False}

    async def five_at_once() -> list[dict[str, Any]]:
        # The decoders busy while the five arrive: whichever download ends first, the turns are the arrivals'.
        busy = await decoders.admit()
        jobs = [asyncio.ensure_future(service.handle(job, f"job{i}")) for i in range(5)]
        while decoders.admission.waiting < 5:
            await asyncio.sleep(0.01)
        busy.release()
        return await asyncio.gather(*jobs)

    try:
        outputs = asyncio.run(five_at_once())
    finally:
        decoders.shutdown()
    assert [r.request_id.split("-")[0] for r in engine.requests] == [f"job{i}" for i in range(5)]
    for output in outputs:
        spent = output["metadata"]["timings"]["cpu"]
        assert {"probe", "packet_index", "decode", "resize", "handover"} <= set(spent), spent
        assert all(seconds >= 0 for seconds in spent.values())


def test_a_chunked_video_waiting_for_engine_slots_holds_no_admission(
    engine: RecordingFakeEngine, video: Callable[..., Path], clip: Path, media_dir: Path, work_dir: Path
) -> None:
    """A long video whose chunks fill the engine slots waits for a slot without an admission, so jobs that
    arrive behind it decode and reach the engine meanwhile (and the two waits cannot deadlock)."""
    long_clip = video("admission_40s.mp4", seconds=40.0, fps=5, width=64, height=48, gop=25)
    decoders = DecodePool(1, frame_threads=1)
    decoders.start()
    settings = Settings(allowed_media_roots=[media_dir], work_dir=work_dir, max_num_seqs=2)
    service = CaptionService(settings, FakeEngineSlot(engine), decoders)
    chunked = {"video": str(long_clip), "mode": "chunked", "chunk_seconds": 5, "fps": 0.5, "max_frames": 10}
    plain = {"video": str(clip), "fps": 2.0, "max_frames": 8}

    def requests(prefix: str) -> int:
        return sum(1 for r in engine.requests if r.request_id.startswith(prefix) and r.video is not None)

    async def wait_for(condition: Callable[[], bool]) -> None:
        while not condition():
            await asyncio.sleep(0.01)

    async def scenario() -> list[dict[str, Any]]:
        release = asyncio.Event()

        async def hold_the_long_video(request: Any) -> None:
            if request.request_id.startswith("long"):
                await release.wait()

        engine.gate = hold_the_long_video
        first = asyncio.ensure_future(service.handle(chunked, "long"))
        await wait_for(lambda: requests("long") == 2)  # both engine slots held by its chunks
        busy = await decoders.admit()  # held while the short jobs arrive, so their turns are their arrivals'
        shorts = [asyncio.ensure_future(service.handle(plain, f"short{i}")) for i in range(3)]
        await wait_for(lambda: decoders.admission.waiting == 3)
        busy.release()
        await wait_for(lambda: requests("short") == 3)
        assert requests("long") == 2 and decoders.admission.active == 0
        release.set()
        return await asyncio.gather(first, *shorts)

    try:
        outputs = asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        decoders.shutdown()
    assert all("error" not in out for out in outputs), outputs
    assert outputs[0]["num_chunks"] == 8
    order = [r.request_id.split("-")[0] for r in engine.requests if r.video is not None]
    assert order == ["long", "long", "short0", "short1", "short2"] + ["long"] * 6
