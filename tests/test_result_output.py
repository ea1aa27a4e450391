"""A job's ``output`` is its result (the video-SALMONN 2 guide's client reads ``output["caption"]``), through the
runpod SDK's own worker loop (``rp_job.handle_job``, as ``JobScaler`` calls it on RunPod) and its one-shot
runner (``rp_job.run_job``), with the worker ``build_worker`` configures and a fake engine (tests/fakes.py).
Streaming stays one setting away (ENABLE_STREAMING); progress reaches /status either way."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import runpod
from runpod.serverless.modules import rp_job
from runpod.serverless.modules.rp_handler import is_generator

import worker.runpod_handler as runpod_handler
from tests.fakes import FakeEngineSlot, RecordingFakeEngine
from worker.api.errors import EngineError
from worker.config import Settings
from worker.job.service import CaptionService

pytestmark = pytest.mark.timeout(120)
QUEUE_URL = "https://api.runpod.ai/v2/x/job-take/$RUNPOD_POD_ID"


class RunPodRecorder:
    """Stands in for RunPod's job API: what the SDK posts to /stream and job-done, and progress updates."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, Any]] = []

        async def stream_result(session: Any, job_data: dict[str, Any], job: dict[str, Any]) -> None:
            self.events.append(("stream", job_data))

        async def send_result(session: Any, job_data: dict[str, Any], job: dict[str, Any], is_stream: bool) -> None:
            self.events.append(("done", job_data))

        monkeypatch.setattr(rp_job, "stream_result", stream_result)
        monkeypatch.setattr(rp_job, "send_result", send_result)
        monkeypatch.setattr(
            runpod.serverless, "progress_update", lambda job, update: self.events.append(("progress", update))
        )

    def of(self, kind: str) -> list[Any]:
        return [data for event, data in self.events if event == kind]


@pytest.fixture
def engine(tiny_model: Path) -> RecordingFakeEngine:
    return RecordingFakeEngine(tiny_model)


@pytest.fixture
def clip(video: Callable[..., Path]) -> Path:
    return video("result_60s.mp4", seconds=60.0, fps=5, width=64, height=48)


def worker_config(
    monkeypatch: pytest.MonkeyPatch,
    service: CaptionService,
    *,
    streaming: bool,
    argv: list[str] | None = None,
    queue: bool = True,
) -> dict[str, Any]:
    """What ``build_worker`` hands ``runpod.serverless.start`` for ``service`` (its cold start skipped)."""

    class Started:
        pass

    started = Started()
    started.service = service  # type: ignore[attr-defined]
    monkeypatch.setattr(runpod_handler, "bootstrap", lambda settings, **kwargs: started)
    monkeypatch.setattr(runpod_handler, "exit_on_sigterm", lambda message, status: None)
    monkeypatch.setattr(runpod_handler, "configure_logging", lambda settings, log_format: None)
    monkeypatch.setattr(runpod_handler.sys, "argv", ["handler.py", *(argv or [])])
    if queue:
        monkeypatch.setenv("RUNPOD_WEBHOOK_GET_JOB", QUEUE_URL)
    else:
        monkeypatch.delenv("RUNPOD_WEBHOOK_GET_JOB", raising=False)
    return runpod_handler.build_worker(service.settings.model_copy(update={"enable_streaming": streaming}))


@pytest.fixture
def svc(engine: RecordingFakeEngine, media_dir: Path, work_dir: Path) -> CaptionService:
    return CaptionService(Settings(allowed_media_roots=[media_dir], work_dir=work_dir), FakeEngineSlot(engine))


def handle(config: dict[str, Any], job_input: dict[str, Any]) -> None:
    """One job through the SDK's worker-loop step (what JobScaler runs for each job it takes)."""
    asyncio.run(rp_job.handle_job(None, config, {"id": "job-7", "input": job_input}))


@pytest.mark.parametrize(
    "streaming,argv,queue,generator",
    [
        (False, [], True, False),  # the default, on RunPod: a coroutine, its result is the output
        (False, ["--rp_serve_api"], False, False),
        (True, [], True, True),  # ENABLE_STREAMING on RunPod: a generator, its parts listed
        (True, ["--rp_serve_api"], False, True),
        (True, ["--test_input", '{"input": {}}'], False, False),  # one-shot runners never iterate generators
    ],
)
def test_the_handler_type_follows_the_setting_and_the_sdk(
    monkeypatch: pytest.MonkeyPatch, svc: CaptionService, streaming: bool, argv: list[str], queue: bool, generator: bool
) -> None:
    config = worker_config(monkeypatch, svc, streaming=streaming, argv=argv, queue=queue)
    assert is_generator(config["handler"]) is generator
    assert config.get("return_aggregate_stream", False) is generator


def test_on_runpod_the_output_is_the_result_and_progress_is_reported(
    monkeypatch: pytest.MonkeyPatch, svc: CaptionService, clip: Path
) -> None:
    api = RunPodRecorder(monkeypatch)
    config = worker_config(monkeypatch, svc, streaming=False)
    handle(config, {"video": str(clip), "mode": "chunked", "fps": 0.5, "max_frames": 10, "max_tokens": 8})
    kinds = [kind for kind, _ in api.events]
    assert kinds == ["progress"] * 3 + ["done"]  # nothing streamed; /status shows progress, then the result
    assert [u["chunks_done"] for u in api.of("progress")] == [1, 2, 3]
    (done,) = api.of("done")
    assert set(done) == {"output"} and isinstance(done["output"], dict)
    assert done["output"]["num_chunks"] == 3 and isinstance(done["output"]["caption"], str)
    handle(config, {"video": str(clip), "max_frames": 4})
    assert set(api.of("done")[-1]["output"]) == {"caption", "metadata"}


def test_on_runpod_an_error_fails_the_job_with_the_structured_error(
    monkeypatch: pytest.MonkeyPatch, svc: CaptionService, media_dir: Path
) -> None:
    api = RunPodRecorder(monkeypatch)
    config = worker_config(monkeypatch, svc, streaming=False)
    handle(config, {"video": str(media_dir / "nope.mp4")})
    handle(config, {"video": str(media_dir / "nope.mp4"), "stream": True})
    missing, streamed = api.of("done")
    assert set(missing) == {"error"}  # RunPod: FAILED, with error as JSON text
    error = json.loads(missing["error"])
    assert error["type"] == "fetch_error" and "file not found" in error["message"] and error["traceback"] is None
    error = json.loads(streamed["error"])  # a job asking to stream where the endpoint does not
    assert error["type"] == "validation_error" and error["details"][0]["field"] == "stream"
    assert "ENABLE_STREAMING" in error["message"]


def test_on_runpod_a_dead_engine_still_replaces_the_worker(
    monkeypatch: pytest.MonkeyPatch, engine: RecordingFakeEngine, media_dir: Path, work_dir: Path, clip: Path
) -> None:
    class Dead(FakeEngineSlot):
        async def acquire(self) -> Any:
            raise EngineError("the inference engine died and could not be rebuilt", refresh_worker=True)

    api = RunPodRecorder(monkeypatch)
    svc = CaptionService(Settings(allowed_media_roots=[media_dir], work_dir=work_dir), Dead(engine))
    handle(worker_config(monkeypatch, svc, streaming=False), {"video": str(clip)})
    (done,) = api.of("done")
    assert done["stopPod"] is True and json.loads(done["error"])["type"] == "engine_error"


def test_a_streaming_endpoint_still_streams_segments_and_lists_the_parts(
    monkeypatch: pytest.MonkeyPatch, svc: CaptionService, clip: Path
) -> None:
    api = RunPodRecorder(monkeypatch)
    config = worker_config(monkeypatch, svc, streaming=True)
    handle(config, {"video": str(clip), "mode": "chunked", "fps": 0.5, "max_frames": 10, "stream": True})
    assert [kind for kind, _ in api.events].count("stream") == 4 and len(api.of("progress")) == 3
    (done,) = api.of("done")
    assert isinstance(done["output"], list) and done["output"][-1]["num_chunks"] == 3


def test_the_one_shot_runner_gives_the_same_output(
    monkeypatch: pytest.MonkeyPatch, svc: CaptionService, clip: Path
) -> None:
    """``--test_input`` (rp_local.run_local) runs the handler through rp_job.run_job."""
    config = worker_config(monkeypatch, svc, streaming=False, argv=["--test_input", '{"input": {}}'], queue=False)
    result = asyncio.run(rp_job.run_job(config["handler"], {"id": "local_test", "input": {"video": str(clip)}}))
    assert set(result) == {"output"} and set(result["output"]) == {"caption", "metadata"}
