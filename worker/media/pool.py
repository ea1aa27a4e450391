"""Where probing and decoding run: a pool of decoder processes, or threads of the worker process.

Processes, because PyAV takes the GIL back for every packet and frame, so decodes in threads stall each
other under load; results travel through files and a crashed process costs only its own call
(docs/architecture.md, "Decoder processes"). Each call's CPU by stage comes back with its result
(worker/media/cpu.py), and jobs enter the decoders in arrival order through the pool's admission
(worker/media/admission.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import pickle
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from worker.api.errors import DecodeError
from worker.config import parse_cpu_list
from worker.media import cpu
from worker.media.admission import Admission, Ticket

if TYPE_CHECKING:
    from worker.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")  # not PEP 695 syntax: the worker also runs on Python 3.11

# Imported once by the fork server, so every decoder process starts with them loaded: the libraries
# worker.media's decoders need (most of their import time), not those modules themselves. The fork server
# runs `python -c` in the current directory and, in Python 3.12, ignores the parent's sys.path, so ``worker``
# imported there could be another copy on the path (an editable install, another checkout) or none; each
# process imports it after the initializer below has put this package's folder first.
_PRELOAD = ["av", "numpy", "PIL.Image"]
_ROOT = str(Path(__file__).resolve().parents[2])
_FIND_WORKER = f"import sys\nif {_ROOT!r} not in sys.path: sys.path.insert(0, {_ROOT!r})"


def default_workers() -> int:
    """The cores this process may use, which the decoder layout divides (``decoder_layout``): the cores it
    may run on, fewer when its cgroup has a CPU quota (containers often see every core of the host but may
    use only their share)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def _cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs the cgroup may use (quota / period), None when unlimited or unknown. cgroup v2's ``cpu.max``
    ("max 100000" or "1600000 100000"), else v1's ``cpu.cfs_quota_us`` (-1: unlimited)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def decoder_cpus(spec: str | None) -> list[int] | None:
    """The CPUs DECODE_CPUS names ("0-7,12": those; "8": the first 8 this process may use), limited to
    those this process may use; None: unset. Raises ValueError when none of them is usable."""
    if spec is None:
        return None
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    wanted = parse_cpu_list(spec)
    if isinstance(wanted, int):
        return usable[:wanted]
    chosen = [c for c in wanted if c in usable]
    if not chosen:
        raise ValueError(f"DECODE_CPUS={spec} names no CPU this process may use (those: {usable})")
    if len(chosen) < len(wanted):
        log.warning("DECODE_CPUS=%s: only %s of them may be used here", spec, chosen)
    return chosen


class DecodePool:
    """Runs blocking media calls (module-level functions of worker/media's decoders) off the serving
    process's GIL. ``workers`` 0: in threads of this process instead (DECODE_WORKERS=0)."""

    def __init__(
        self,
        workers: int,
        nice: int = 0,
        frame_threads: int = 0,
        cpus: Sequence[int] | None = None,
        admit: int | None = None,
    ) -> None:
        self.workers = workers
        # 0 leaves each as is. nice: the decoder processes' CPU priority below the serving process's
        # (DECODE_NICE); frame_threads: FFmpeg threads per decode (DECODE_THREADS; FFmpeg's own choice is
        # one per core, in every process); cpus: the CPUs they may run on (DECODE_CPUS).
        self._init = _FIND_WORKER + "\nimport worker.media.cpu\nworker.media.cpu.count_whole_process()"
        if nice:
            self._init += f"\nimport os\nos.nice({int(nice)})"
        if frame_threads:
            threads = int(frame_threads)
            self._init += f"\nimport worker.media.frames\nworker.media.frames.set_frame_threads({threads})"
        self.cpus = sorted(int(c) for c in cpus) if cpus else None
        if self.cpus:
            self._init += f"\nimport os\nos.sched_setaffinity(0, {self.cpus})"
        # Jobs decoding at once, in arrival order: as many as there are processes (threads: usable cores).
        self.admission = Admission(admit or workers or default_workers())
        self.in_flight = 0  # calls submitted and not yet answered
        self.peak_in_flight = 0
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(_PRELOAD)  # takes effect when the fork server first starts
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._results: Path | None = None  # the folder of result files while processes may run
        self.replaced = 0  # pools replaced after a process died

    @property
    def uses_processes(self) -> bool:
        return self.workers > 0

    async def admit(self, number: int | None = None) -> Ticket:
        """This job's turn to decode, after every waiting job with a lower ``number`` (taken from
        ``admission.number()`` as it arrived; None: now) (worker/media/admission.py)."""
        return await self.admission.enter(number)

    def _count(self, step: int) -> None:
        with self._lock:
            self.in_flight += step
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def start(self) -> None:
        """Start every decoder process now (cold start), not on the first jobs. Blocking."""
        if not self.uses_processes:
            return
        started = time.perf_counter()
        pool = self._current()
        # A process is started per submitted call while none is idle: one call per worker starts them all.
        for future in [pool.submit(_ready, 0.05) for _ in range(self.workers)]:
            future.result()
        log.info("%d decoder processes ready in %.1f s", self.workers, time.perf_counter() - started)

    def _current(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._results is None:
                self._results = Path(tempfile.mkdtemp(prefix="decoder-results-"))
            if self._pool is None:
                self._pool = self._new(self.workers)
            return self._pool

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:  # the first caller to see it broken replaces it; the others find it done
                self._pool = None
                self.replaced += 1
                log.error("a decoder process died; replacing the pool (%d so far)", self.replaced)
        broken.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a decoder process (or a thread), awaited without blocking the loop.
        Its CPU by stage is charged to the caller's ledger (worker/media/cpu.py), if any."""
        self._count(1)
        try:
            if not self.uses_processes:  # the thread runs in a copy of this context: it charges the ledger
                return await asyncio.to_thread(fn, *args, **kwargs)
            pool = self._current()
            try:
                return _charged(*await asyncio.wrap_future(self._submit(pool, fn, args, kwargs)))
            except BrokenProcessPool:
                self._replace(pool)
            alone = self._alone()
            try:
                return _charged(*await asyncio.wrap_future(self._submit(alone, fn, args, kwargs)))
            except BrokenProcessPool as exc:
                raise _crashed() from exc
            finally:
                alone.shutdown(wait=False)
        finally:
            self._count(-1)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``run`` for callers already in a thread of their own: blocks until the result is there."""
        if not self.uses_processes:
            return fn(*args, **kwargs)
        pool = self._current()
        try:
            return _charged(*self._submit(pool, fn, args, kwargs).result())
        except BrokenProcessPool:
            self._replace(pool)
        alone = self._alone()
        try:
            return _charged(*self._submit(alone, fn, args, kwargs).result())
        except BrokenProcessPool as exc:
            raise _crashed() from exc
        finally:
            alone.shutdown(wait=False)

    def _alone(self) -> ProcessPoolExecutor:
        """A one-process pool for a call that was in a pool when one of its processes died: run there
        again, a crash can only be its own."""
        return self._new(1)

    def _new(self, workers: int) -> ProcessPoolExecutor:
        # exec: a builtin, so the initializer crosses to the process by name, before anything of ours.
        return ProcessPoolExecutor(workers, mp_context=self._context, initializer=exec, initargs=(self._init,))

    def pids(self) -> list[int]:
        """The decoder processes running now (none with threads)."""
        with self._lock:
            pool = self._pool
        return [] if pool is None else [p.pid for p in list(getattr(pool, "_processes", {}).values())]

    def _submit(self, pool: ProcessPoolExecutor, fn: Callable[..., Any], args: Any, kwargs: Any) -> Future[Any]:
        """The call's (result, CPU seconds by stage) as a future of this process, read from the file the
        decoder process wrote (in the pool's manager thread, as the call completes); the file is removed
        whatever the outcome, also when the caller stopped waiting."""
        assert self._results is not None
        path = self._results / f"{uuid.uuid4().hex}.pickle"
        try:
            remote = pool.submit(_portable_call, fn, args, kwargs, path)
        except RuntimeError as exc:  # a pool already marked broken refuses new calls with its own error
            raise BrokenProcessPool(str(exc)) from exc
        local: Future[Any] = Future()

        def settle(done: Future[Any]) -> None:
            if done.cancelled():
                local.cancel()
                return
            error, value = done.exception(), None
            try:
                if error is None and not local.cancelled():
                    started = time.thread_time()  # this thread's: the hand-over's share of the serving process
                    with path.open("rb") as file:
                        value, spent = pickle.load(file), pickle.load(file)
                    spent["handover"] = spent.get("handover", 0.0) + time.thread_time() - started
                    value = (value, spent)
            except Exception as exc:  # noqa: BLE001 - an unreadable result fails this call only, as its error
                error = exc
            finally:
                path.unlink(missing_ok=True)
            if local.set_running_or_notify_cancel():
                if error is None:
                    local.set_result(value)
                else:
                    local.set_exception(error)

        local.add_done_callback(lambda f: remote.cancel() if f.cancelled() else None)
        remote.add_done_callback(settle)
        return local

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            results, self._results = self._results, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if results is not None:
            shutil.rmtree(results, ignore_errors=True)


def _crashed() -> DecodeError:
    return DecodeError(
        "the decoder process died while reading this media (a crash inside FFmpeg, or out of memory); "
        "it cannot be decoded here"
    )


def _ready(seconds: float) -> int:
    time.sleep(seconds)  # keeps this process busy so the next call starts another
    return os.getpid()


def _charged(value: T, spent: dict[str, float]) -> T:
    """A decoder call's result, its CPU by stage charged to the caller's ledger."""
    ledger = cpu.current()
    if ledger is not None:
        ledger.merge(spent)
    return value


def _portable_call(fn: Callable[..., Any], args: Any, kwargs: Any, result_path: Path | None = None) -> Any:
    """``fn`` in the decoder process, its result pickled into ``result_path`` followed by its CPU seconds
    by stage (then None is returned), its exception made fit to cross back. The worker's errors pickle
    with their type, message and details; an exception that does not survive pickling (some library's
    own) would break the whole pool when the result is read, so it comes back as a RuntimeError that
    names it (the job then reports an internal_error, as it would for the same exception in a thread)."""
    try:
        with cpu.opened() as ledger:
            result = fn(*args, **kwargs)
            if result_path is None:
                return result
            with result_path.open("wb") as file:
                with cpu.measured("handover", time.thread_time):
                    pickle.dump(result, file, protocol=pickle.HIGHEST_PROTOCOL)
                pickle.dump(ledger.seconds, file, protocol=pickle.HIGHEST_PROTOCOL)
        return None
    except Exception as exc:
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            log.exception("decoder process: unpicklable %s", type(exc).__name__)
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
        raise


def decoder_layout(settings: Settings, shares: int = 1) -> tuple[int, list[int] | None]:
    """(decoder processes, the CPUs they may use; None: any). DECODE_WORKERS; when unset, one per
    DECODE_THREADS (4) usable cores (DECODE_CPUS's, else this process's), split between ``shares`` workers
    on one machine (bulk's engine processes), and no more than decodes can run at once: MAX_CONCURRENCY
    jobs, or MAX_NUM_SEQS chunks and batch items."""
    cpus = decoder_cpus(settings.decode_cpus)
    if settings.decode_workers is not None:
        return settings.decode_workers, cpus
    cores = len(cpus) if cpus else default_workers()
    per_process = max(1, settings.decode_threads)  # 0 (FFmpeg's choice): one process per core, as before
    workers = max(1, cores // shares // per_process)
    return min(workers, max(settings.max_concurrency, settings.max_num_seqs)), cpus


def start_decoders(settings: Settings, shares: int = 1) -> DecodePool:
    """The decoder processes (``decoder_layout``), all started now. When they cannot start, the caller
    decodes in its own threads rather than not working at all."""
    workers, cpus = decoder_layout(settings, shares)
    pool = DecodePool(workers, nice=settings.decode_nice, frame_threads=settings.decode_threads, cpus=cpus)
    try:
        pool.start()
    except Exception:
        log.exception("decoder processes failed to start; decoding in threads instead")
        pool.shutdown()
        return DecodePool(0)
    return pool
