"""EngineSlot's recovery logic with fake engines: one rebuild for all waiting jobs, and RunPod's
refresh_worker when the rebuild fails. The real thing (the engine core process killed under load, the
engine rebuilt in-process) is test_reliability_api.py's last test."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from runpod.serverless.modules.rp_job import run_job

from tests.fakes import FakeEngine, load_tokenizer
from worker.config import Settings
from worker.engine import Engine, EngineSlot
from worker.job.service import CaptionService
from worker.runpod_handler import make_handler


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    return load_tokenizer(tiny_model)


def fake_builds(monkeypatch: pytest.MonkeyPatch, tokenizer: Any, failures: dict[int, Exception]) -> list[FakeEngine]:
    """Engine.build returns a new FakeEngine each call (slowly, like a real build), or raises failures[n]."""
    built: list[FakeEngine] = []

    def build(settings: Settings) -> FakeEngine:
        time.sleep(0.2)
        if len(built) in failures:
            raise failures[len(built)]
        built.append(FakeEngine(tokenizer))
        return built[-1]

    monkeypatch.setattr(Engine, "build", staticmethod(build))
    return built


def test_a_dead_engine_is_rebuilt_once_for_all_waiting_jobs_fake_engine(
    monkeypatch: pytest.MonkeyPatch, tokenizer: Any
) -> None:
    built = fake_builds(monkeypatch, tokenizer, {})
    slot = EngineSlot()
    slot.start(Settings())
    built[0].healthy = False

    async def jobs() -> list[Any]:
        return await asyncio.gather(*(slot.acquire() for _ in range(5)))

    assert all(engine is built[1] for engine in asyncio.run(jobs()))
    assert len(built) == 2 and slot.restarts == 1 and built[0].shut_down
    assert built[1].on_death is not None  # the new engine reports its own death too


def test_a_failed_rebuild_asks_runpod_for_a_new_worker_fake_engine(
    monkeypatch: pytest.MonkeyPatch, tokenizer: Any, media_dir: Path, work_dir: Path, clip_for_sources: Path
) -> None:
    built = fake_builds(monkeypatch, tokenizer, {1: RuntimeError("CUDA error: out of memory")})
    slot = EngineSlot()
    settings = Settings(allowed_media_roots=[media_dir], work_dir=work_dir)
    slot.start(settings)
    handler = make_handler(CaptionService(settings, slot))
    job = {"id": "job-1", "input": {"video": str(clip_for_sources), "max_frames": 2}}

    async def two_jobs() -> list[dict[str, Any]]:
        assert "error" not in await run_job(handler, job)
        built[0].healthy = False
        return [await run_job(handler, job), await run_job(handler, job)]

    for result in asyncio.run(two_jobs()):
        # runpod-python turns the handler's refresh_worker into stopPod: RunPod replaces the worker.
        assert result["stopPod"] is True, result
        error = json.loads(result["error"])
        assert error["type"] == "engine_error" and "could not be rebuilt: RuntimeError: CUDA error" in error["message"]
    assert len(built) == 1 and slot.restarts == 0


def test_a_failed_cold_start_does_not_ask_for_a_new_worker_fake_engine(
    monkeypatch: pytest.MonkeyPatch, tokenizer: Any, media_dir: Path, work_dir: Path, clip_for_sources: Path
) -> None:
    # The same failure would come back on a fresh worker; reporting it per job beats a restart loop.
    fake_builds(monkeypatch, tokenizer, {0: OSError("no such model")})
    slot = EngineSlot()
    settings = Settings(allowed_media_roots=[media_dir], work_dir=work_dir)
    slot.start(settings)
    result = asyncio.run(
        run_job(make_handler(CaptionService(settings, slot)), {"id": "j", "input": {"video": str(clip_for_sources)}})
    )
    assert "stopPod" not in result and json.loads(result["error"])["type"] == "engine_error"
