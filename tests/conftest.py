"""Shared fixtures: generated media, a private work dir per test session (left empty by every test) and a
local HTTP server with hostile endpoints."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

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


class Leftover(NamedTuple):
    pid: int
    parent: int
    command: str
    orphan: bool  # adopted by init (or a subreaper), not a descendant of pytest any more
    ancestors: tuple[int, ...]  # parent first


def _processes_left() -> list[Leftover]:
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

    me, group = os.getpid(), os.getpgid(0)
    elders = set(ancestry(me)) - {me, 1}  # an orphan is adopted by init (pid 1)
    left = []
    for pid, (pgrp, cmdline) in info.items():
        chain = ancestry(pid)
        if pgrp == group and pid != me and pid not in elders and (me in chain or not elders & set(chain)):
            left.append(Leftover(pid, parents[pid], cmdline, me not in chain, tuple(chain[1:])))
    return left


def _kill(processes: list[Leftover]) -> None:
    for pid, *_ in processes:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


_exit_status = pytest.StashKey[int]()
# The interpreter's own exit (joining threads and decoder pools) takes seconds; a hang is what exceeds this.
EXIT_GRACE_S = 60.0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Processes a test left running would hold CI's output pipe open after pytest exits: orphans (no longer
    pytest's descendants, still in its process group) and children that multiprocessing does not end at
    exit (a subprocess never waited for). They are named and killed. Decoder pools, vLLM's helpers and
    multiprocessing's own resource tracker and forkserver end with the interpreter's exit."""
    session.config.stash[_exit_status] = int(exitstatus)
    managed = {child.pid for child in multiprocessing.active_children()}
    helpers = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
    stray = [
        p
        for p in _processes_left()
        if p.orphan or not (managed & {p.pid, *p.ancestors} or any(helper in p.command for helper in helpers))
    ]
    if stray:
        print(f"\nprocesses left by the tests, killed: {stray}", file=sys.stderr)
        _kill(stray)


def pytest_unconfigure(config: pytest.Config) -> None:
    """A run whose tests all passed once held CI until its time limit. The exit that follows the summary
    (the interpreter joins every non-daemon thread and decoder pool) gets EXIT_GRACE_S; past that, what
    holds it is named, the processes are killed, and pytest exits with the session's status."""
    if _exit_status not in config.stash:
        return
    status = config.stash[_exit_status]

    def watch() -> None:
        time.sleep(EXIT_GRACE_S)
        threads = [t.name for t in threading.enumerate() if t.is_alive() and not t.daemon]
        processes = _processes_left()
        print(
            f"pytest had not exited {EXIT_GRACE_S:g} s after the session; threads {threads}, "
            f"processes {processes}: ending them",
            file=sys.stderr,
            flush=True,
        )
        _kill(processes)
        os._exit(status)

    threading.Thread(target=watch, name="exit-watchdog", daemon=True).start()
