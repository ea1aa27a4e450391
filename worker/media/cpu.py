"""A job's CPU seconds by stage (probe, packet index, decode, resize, audio, hand-over, front end), so a run
under load shows which stage costs more than it does alone (docs/performance.md, "CPU account").

A ledger rides in a context variable: the job opens one, and whatever runs in its context (its asyncio
tasks, ``asyncio.to_thread``, a decoder call, which opens its own and sends it back with the result)
charges it. Stages nest: an enclosing stage is charged only its own time, not its inner stages'.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from functools import wraps
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")  # not PEP 695 syntax: the worker also runs on Python 3.11

STAGES = ("probe", "packet_index", "decode", "resize", "audio", "handover", "frontend")

_ledger: ContextVar[Ledger | None] = ContextVar("cpu_ledger", default=None)
# True in a decoder process, which runs one call at a time: the whole process's CPU (FFmpeg's own threads
# included) is then the call's. In the serving process only the calling thread's CPU is the job's.
_whole_process = False


def count_whole_process() -> None:
    """Called once in each decoder process (worker/media/pool.py): its stages count every thread's CPU."""
    global _whole_process
    _whole_process = True


def clock() -> float:
    """CPU seconds so far of what runs this stage: the process in a decoder process, else this thread."""
    return time.process_time() if _whole_process else time.thread_time()


class Ledger:
    """CPU seconds per stage of one job (or of one decoder call, on its way back to the job's)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + max(0.0, seconds)

    def merge(self, seconds: dict[str, float]) -> None:
        for stage, spent in seconds.items():
            self.add(stage, spent)

    def total(self) -> float:
        return sum(self.seconds.values())

    def rounded(self) -> dict[str, float]:
        """Per stage, in STAGES order, rounded as results report them."""
        order = {stage: i for i, stage in enumerate(STAGES)}
        return {k: round(v, 4) for k, v in sorted(self.seconds.items(), key=lambda kv: order.get(kv[0], 99))}


def current() -> Ledger | None:
    return _ledger.get()


@contextlib.contextmanager
def opened() -> Iterator[Ledger]:
    """A fresh ledger for what runs inside (a job, or one decoder call)."""
    ledger = Ledger()
    token = _ledger.set(ledger)
    try:
        yield ledger
    finally:
        _ledger.reset(token)


def charge(stage: str, seconds: float) -> None:
    """``seconds`` of CPU to ``stage`` of the current ledger; nothing when no job is accounting."""
    ledger = _ledger.get()
    if ledger is not None:
        ledger.add(stage, seconds)


@contextlib.contextmanager
def measured(stage: str, read: Callable[[], float] = clock) -> Iterator[None]:
    """The CPU spent inside, less what inner stages charged meanwhile, charged to ``stage``."""
    ledger = _ledger.get()
    if ledger is None:
        yield
        return
    before, inner = read(), ledger.total()
    try:
        yield
    finally:
        ledger.add(stage, (read() - before) - (ledger.total() - inner))


def accounted(stage: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A decorator: each call of the function is measured as ``stage``."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @wraps(fn)  # keeps the name, so the decoder pool still sends the function by reference
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            with measured(stage):
                return fn(*args, **kwargs)

        return inner

    return wrap
