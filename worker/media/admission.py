"""Decodes admitted in arrival order, a few at a time, so the first jobs in reach the engine first.

Without it, 32 jobs arriving together each queue a probe, then an index, then a decode in the decoder
pool's one FIFO: every job's decode waits behind every job's probe, all decodes run at once and finish
together while the engine idles (measured on an H200: 16 processes busy for ~6 s, the GPU idle meanwhile).

The rule (worker/job/video.py keeps it): a video takes a number when its job arrives, before its media is
fetched, and holds one admission from its probe through its first decode; waiting videos are admitted by
number, lowest first, at most ``limit`` at once, so a download does not hold a place but keeps its turn.
Each later chunk of a chunked video takes a new number, at the back: a long video advances one chunk per
turn of the queue and never holds back a job that arrived after it for more than one of its decodes. A
job takes its admission only while it holds its engine slot, never waits for a slot while holding one (no
cycle).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
from types import TracebackType


class Admission:
    """A gate for ``limit`` holders, the waiters let in lowest number (earliest arrival) first. Hand-written
    rather than asyncio.Semaphore (FIFO too, but by the wait's start, not the job's arrival; and it binds
    to the first event loop that waits on it, while a decoder pool outlives loops: tests, benches)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("an admission needs a limit of at least 1")
        self.limit = limit
        self.active = 0  # holders now
        self.peak = 0  # most holders at once so far
        self.admitted = 0  # holders so far
        self._numbers = itertools.count()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # a heap: lowest number first
        self._lock = threading.Lock()  # counts are read from other threads (benches, tests)

    @property
    def waiting(self) -> int:
        """Callers waiting for their turn now."""
        return sum(1 for _, waiter in self._waiters if not waiter.done())

    def number(self) -> int:
        """A place in the queue, taken when a job arrives; ``enter`` with it later keeps that turn."""
        return next(self._numbers)

    def _take(self) -> None:
        with self._lock:
            self.active += 1
            self.admitted += 1
            self.peak = max(self.peak, self.active)

    async def enter(self, number: int | None = None) -> Ticket:
        """Wait for this caller's turn (after every waiter with a lower ``number``; None: a new number, at
        the back), then hold one place until ``Ticket.release``."""
        if number is None:
            number = self.number()
        if self.active < self.limit and not self._waiters:
            self._take()
            return Ticket(self)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (number, waiter))
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._leave()  # handed a place just as it was cancelled: pass it on
            elif (number, waiter) in self._waiters:  # a leaver may have dropped it, cancelled, already
                self._waiters.remove((number, waiter))
                heapq.heapify(self._waiters)
            raise
        return Ticket(self)

    def _leave(self) -> None:
        """A holder leaves: its place goes straight to the waiter with the lowest number, else is freed."""
        while self._waiters:
            _, waiter = heapq.heappop(self._waiters)
            if not waiter.done():
                with self._lock:
                    self.admitted += 1  # the place passes on: ``active`` stays
                waiter.set_result(None)
                return
        with self._lock:
            self.active -= 1


class Ticket:
    """One place in an Admission; ``release`` is idempotent, and leaving a ``with`` block releases it."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._leave()

    @property
    def held(self) -> bool:
        return self._admission is not None

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()
