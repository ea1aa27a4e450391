"""Shared fixtures: generated media and a private work dir per test session."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.media_factory import make_video


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
    from worker.dummy_model import build_dummy_model

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
        # On the CPU backend this is the share of the NUMA node's RAM kept for the KV cache.
        GPU_MEMORY_UTILIZATION="0.25",
        ENFORCE_EAGER="true",
        MAX_CONCURRENCY="8",
        MAX_NUM_SEQS="8",
        ALLOWED_MEDIA_ROOTS=str(media_dir),
        WORK_DIR=str(work_dir),
        PYTHONUNBUFFERED="1",
    )
    return env
