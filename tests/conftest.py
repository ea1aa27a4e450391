"""Shared fixtures: generated media, a private work dir per test session (left empty by every test) and a
local HTTP server with hostile endpoints."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from worker.devtools.media import make_video

# Tests never assert timings, and hypothesis's per-example deadline is one: a property test once failed at
# 226 ms against its 200 ms default while other suites shared CI's two cores.
settings.register_profile("worker", deadline=None)
settings.load_profile("worker")

# KV cache of every CPU engine the tests start (vLLM's VLLM_CPU_KVCACHE_SPACE, whole GiB).
KV_CACHE_GIB = "1"


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def video(media_dir: Path) -> Callable[..., Path]:
    """``video(name, **make_video_kwargs)``: generated once per session and cached by name."""
    cache: dict[str, Path] = {}

    def make(name: str, **kwargs: Any) -> Path:
        if name not in cache:
            cache[name] = make_video(media_dir / name, **kwargs)
        return cache[name]

    return make


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.devtools.dummy_model import build_dummy_model

    return build_dummy_model(tmp_path_factory.mktemp("models") / "tiny-qwen2_5_vl", "qwen2_5_vl", "tiny")


@pytest.fixture(scope="session")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """WORK_DIR of the worker processes under test; must be empty whenever no job runs."""
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="session")
def worker_env(tiny_model: Path, media_dir: Path, work_dir: Path) -> dict[str, str]:
    """Environment for `python handler.py` on the CPU engine with the tiny model."""
    import os

    env = dict(os.environ)
    env.update(
        MODEL_NAME=str(tiny_model),
        LOAD_FORMAT="dummy",
        MAX_MODEL_LEN="4096",
        # The CPU backend's KV cache, in GiB: an absolute budget (2M tokens of the tiny models), so the engine
        # starts whatever else the machine runs. GPU_MEMORY_UTILIZATION would be a share of the NUMA node's RAM
        # minus what the process already holds, which fails on a smaller or busier machine.
        VLLM_CPU_KVCACHE_SPACE=KV_CACHE_GIB,
        ENFORCE_EAGER="true",
        MAX_CONCURRENCY="8",
        MAX_NUM_SEQS="8",
        ALLOWED_MEDIA_ROOTS=str(media_dir),
        WORK_DIR=str(work_dir),
        # The tests' URL servers listen on 127.0.0.1.
        ALLOW_PRIVATE_URLS="true",
        # A streaming endpoint: every job's output is the list of its parts (tests/local_api.py reads that);
        # tests/test_seeds_api.py runs the default, whose output is the result itself.
        ENABLE_STREAMING="true",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(autouse=True)
def _work_dir_left_empty(work_dir: Path) -> Iterator[None]:
    """Every job's scratch files are gone once it has answered, whatever happened to it."""
    yield
    leftovers = sorted(str(p.relative_to(work_dir)) for p in work_dir.rglob("*"))
    assert not leftovers, f"files left in WORK_DIR after the test: {leftovers[:20]}"


@pytest.fixture(scope="session")
def clip_for_sources(video: Callable[..., Path]) -> Path:
    """A small clip with audio under the allowed media root, served by ``hostile_server`` too."""
    return video("sources_clip.mp4", seconds=2.0, fps=10, width=64, height=48, audio="aac")


@pytest.fixture(scope="session")
def hostile_server(clip_for_sources: Path) -> Iterator[str]:
    """Base URL of tests.http_server: the clip at /clip.mp4 next to stalls, drops, bombs and bad redirects."""
    from tests.http_server import serve

    with serve(clip_for_sources.read_bytes()) as url:
        yield url


def _processes_left() -> list[str]:
    """Processes of this process group that descend from this one, or were orphaned (their ancestry no longer
    reaches this process's parents): what would hold CI's output pipe open after pytest has exited.
    Siblings in a shell pipeline (``| tee``) share the group and are not counted."""
    parents: dict[int, int] = {}
    info: dict[int, tuple[int, str]] = {}  # pid: (process group, command line)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid, pgrp = stat.read_text().rsplit(")", 1)[1].split()[:3]
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue  # ended meanwhile
        if state != "Z":
            parents[int(stat.parent.name)] = int(ppid)
            info[int(stat.parent.name)] = (int(pgrp), cmdline.strip()[:200])

    def ancestry(pid: int) -> list[int]:
        chain = []
        while pid in parents and pid not in chain:
            chain.append(pid)
            pid = parents[pid]
        return chain

    me = os.getpid()
    elders = set(ancestry(me)) - {me, 1}  # an orphan is adopted by init (pid 1)
    left = []
    for pid, (pgrp, cmdline) in info.items():
        chain = ancestry(pid)
        if pgrp == os.getpgid(0) and pid != me and pid not in elders and (me in chain or not elders & set(chain)):
            left.append(f"pid {pid} (parent {parents[pid]}): {cmdline}")
    return left


def _threads_left() -> list[threading.Thread]:
    """Threads that the interpreter joins at exit (non-daemon), besides the main one."""
    return [t for t in threading.enumerate() if t.is_alive() and not t.daemon and t is not threading.main_thread()]


_exit_status = pytest.StashKey[int]()
EXIT_GRACE_S = 60.0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Name and end what would keep the run from ending once its summary is printed: a run whose tests all
    passed once held CI until its time limit. Processes a test left behind (they hold CI's output pipe) are
    killed; their names, and those of threads the interpreter would join, are printed for a fix."""
    session.config.stash[_exit_status] = int(exitstatus)
    threads = [t.name for t in _threads_left()]
    processes = _processes_left()
    # multiprocessing's resource tracker and forkserver end with this process: they are not leftovers.
    processes = [p for p in processes if "resource_tracker" not in p and "forkserver" not in p]
    if threads or processes:
        print(f"\nat session end: non-daemon threads {threads}, processes left {processes}", file=sys.stderr)
    for line in processes:
        with contextlib.suppress(OSError):
            os.kill(int(line.split()[1]), signal.SIGKILL)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Exit with the session's status even if a thread a test started never ends (the interpreter would join
    it forever): such threads get EXIT_GRACE_S, are named, and the process then exits without joining them."""
    if _exit_status not in config.stash:
        return
    deadline = time.monotonic() + EXIT_GRACE_S
    for thread in _threads_left():
        thread.join(max(0.0, deadline - time.monotonic()))
    if stuck := [t.name for t in _threads_left()]:
        print(f"threads still running {EXIT_GRACE_S:g} s after the session: {stuck}; exiting without them", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[_exit_status])
