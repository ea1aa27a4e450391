"""What every step of one job shares: its request, the worker's engine, decoders and settings, where it
streams parts and reports progress, and the engine slots that bound the frames held in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from worker.api.schema import CaptionRequest
from worker.config import Settings
from worker.engine import EngineSlot
from worker.media.pool import DecodePool
from worker.media.sources import job_workspace

log = logging.getLogger(__name__)
T = TypeVar("T")  # not PEP 695 syntax: the worker also runs on Python 3.11

Progress = Callable[[dict[str, Any]], None]


@dataclass
class Tally:
    """What a job has planned and finished so far, for its progress updates (shared by its items)."""

    num_items: int = 1
    items_done: int = 0
    chunks_planned: int = 0
    chunks_done: int = 0


@dataclass
class JobContext:
    """One job's request, what it runs on, and where it reports what it finishes. A batch item runs with
    its own view (``for_item``): its request, the job's everything else."""

    request: CaptionRequest
    job_id: str
    settings: Settings
    engines: EngineSlot  # a request acquires the live engine from it (it may have been rebuilt mid-job)
    decoder: DecodePool
    emit: Callable[[dict[str, Any]], None] | None  # streamed parts; None when the job does not stream
    progress: Progress
    # Taken by each engine request from being decoded for until it is done; bounds the frames in memory.
    slots: asyncio.Semaphore
    tally: Tally = field(default_factory=Tally)

    def for_item(self, request: CaptionRequest) -> JobContext:
        """This job as one of its batch items sees it: ``request`` (CaptionRequest.for_item), the same
        engine, slots, stream and tally."""
        return dataclasses.replace(self, request=request)

    def report(self) -> None:
        tally = self.tally
        if tally.num_items == 1 and tally.chunks_planned <= 1:
            return  # one request: nothing to report on the way
        update = {
            "items_done": tally.items_done,
            "num_items": tally.num_items,
            "chunks_done": tally.chunks_done,
            "num_chunks": tally.chunks_planned,
        }
        try:
            self.progress(update)
        except Exception:
            log.exception("job %s: progress update failed; the job goes on", self.job_id)


def no_progress(update: dict[str, Any]) -> None:
    log.debug("progress: %s", update)


@contextlib.asynccontextmanager
async def workspace(settings: Settings) -> AsyncIterator[Path]:
    """``job_workspace`` entered and left off the event loop (removing a large download takes a while)."""
    manager: contextlib.AbstractContextManager[Path] = job_workspace(settings)
    path = await asyncio.to_thread(manager.__enter__)
    try:
        yield path
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)


async def gather_all(calls: Iterator[Awaitable[T]]) -> list[T]:
    """Run ``calls`` together; when one fails or the caller is cancelled, the others are cancelled."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


def since(start: float) -> float:
    """Seconds since ``start`` (``time.perf_counter``), rounded as results report them."""
    return round(time.perf_counter() - start, 4)
