"""Shared fixtures: generated media, a private work dir per test session (left empty by every test) and a
local HTTP server with hostile endpoints."""

from __future__ import annotations

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
