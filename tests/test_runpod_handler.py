"""The handler under the runpod SDK's own job runners (runpod-python 1.12.0), with a fake engine
(tests/fakes.py): what RunPod's /stream, /status (progress) and /runsync receive. The local API
cannot show these: it runs a job only when /runsync, /status or /stream is called, answers when the job
has ended, and has no progress (tests/test_long_videos.py covers it with the real engine)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import runpod
from runpod.serverless.modules import rp_job

from tests.fakes import FakeEngineSlot, RecordingFakeEngine
from worker.config import Settings
from worker.api.errors import EngineError
from worker.job.service import CaptionService
from worker.runpod_handler import SdkMode, make_handler, make_stream_handler, sdk_mode

pytestmark = pytest.mark.timeout(120)
QUEUE = {"RUNPOD_WEBHOOK_GET_JOB": "https://api.runpod.ai/v2/x/job-take/$RUNPOD_POD_ID"}


@pytest.mark.parametrize(
    "argv,environ,expected",
    [
        ([], QUEUE, SdkMode(generators=True, progress=True)),  # the worker loop on RunPod
        (["--rp_serve_api", "--rp_api_port", "8001"], {}, SdkMode(generators=True, progress=False)),
        (["--rp_serve_api"], QUEUE, SdkMode(generators=True, progress=False)),
        (["--test_input", '{"input": {}}'], QUEUE, SdkMode(generators=False, progress=False)),
        ([], {}, SdkMode(generators=False, progress=False)),  # test_input.json, run once
        ([], QUEUE | {"RUNPOD_REALTIME_PORT": "8080"}, SdkMode(generators=False, progress=False)),
    ],
)
def test_sdk_mode_follows_the_sdk_dispatch(argv: list[str], environ: dict[str, str], expected: SdkMode) -> None:
    assert sdk_mode(argv, environ) == expected


@pytest.fixture
def engine(tiny_model: Path) -> RecordingFakeEngine:
    return RecordingFakeEngine(tiny_model)


@pytest.fixture
def svc(engine: RecordingFakeEngine, media_dir: Path, work_dir: Path) -> CaptionService:
    return CaptionService(Settings(allowed_media_roots=[media_dir], work_dir=work_dir), FakeEngineSlot(engine))


@pytest.fixture
def clip(video: Callable[..., Path]) -> Path:
    return video("handler_60s.mp4", seconds=60.0, fps=5, width=64, height=48)


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


def handle_job(svc: CaptionService, job_input: dict[str, Any]) -> dict[str, Any]:
    """runpod's handle_job with the config build_worker gives on RunPod; returns the config after the job."""
    config: dict[str, Any] = {"return_aggregate_stream": True}
    config["handler"] = make_stream_handler(svc, config, progress=True)
    asyncio.run(rp_job.handle_job(None, config, {"id": "job-42", "input": job_input}))
    return config


def test_runpod_streams_segments_reports_progress_and_aggregates_the_result(
    svc: CaptionService, clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = RunPodRecorder(monkeypatch)
    job = {"video": str(clip), "mode": "chunked", "fps": 0.5, "max_frames": 10, "stream": True, "max_tokens": 8}
    handle_job(svc, job)
    kinds = [event for event, _ in api.events]
    # Per chunk: its segment on /stream and a progress update; then the result; job-done last.
    assert kinds.count("stream") == 4 and kinds.count("progress") == 3 and kinds[-1] == "done"
    streamed = [data["output"] for data in api.of("stream")]
    assert all(set(part) == {"segment", "num_chunks"} for part in streamed[:3])
    assert [u["chunks_done"] for u in api.of("progress")] == [1, 2, 3]
    assert kinds.index("progress") < kinds.index("stream", kinds.index("stream") + 1)  # interleaved, not at the end
    (done,) = api.of("done")
    # /run, /runsync, /status: the list of everything yielded; the complete result last.
    assert done["output"] == streamed and "error" not in done
    assert done["output"][-1]["num_chunks"] == 3 and len(done["output"][-1]["segments"]) == 3


def test_runpod_job_without_stream_gives_a_one_element_list(
    svc: CaptionService, clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = RunPodRecorder(monkeypatch)
    handle_job(svc, {"video": str(clip), "max_frames": 4})
    (done,) = api.of("done")
    assert len(done["output"]) == 1 and set(done["output"][0]) == {"caption", "metadata"}
    assert api.of("progress") == []  # one request, nothing to report on the way


def test_runpod_marks_an_error_job_failed_with_the_json_error(
    svc: CaptionService, media_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = RunPodRecorder(monkeypatch)
    handle_job(svc, {"video": str(media_dir / "nope.mp4"), "stream": True})
    (done,) = api.of("done")
    assert set(done) == {"error"}  # RunPod: FAILED, with error as a string
    error = json.loads(done["error"])
    assert error["type"] == "fetch_error" and "file not found" in error["message"]


def test_one_shot_runner_gets_the_complete_result(svc: CaptionService, clip: Path) -> None:
    """``--test_input`` runs the handler through rp_job.run_job, which never iterates a generator."""
    result = asyncio.run(rp_job.run_job(make_handler(svc), {"id": "local_test", "input": {"video": str(clip)}}))
    assert set(result["output"]) == {"caption", "metadata"}
    failed = asyncio.run(rp_job.run_job(make_handler(svc), {"id": "local_test", "input": {"video": 3}}))
    assert json.loads(failed["error"])["type"] == "validation_error"


class DeadEngineSlot(FakeEngineSlot):
    """An engine that died and could not be rebuilt (worker.engine.EngineSlot.acquire's failure)."""

    async def acquire(self) -> Any:
        raise EngineError("the inference engine died and could not be rebuilt", refresh_worker=True)


def test_runpod_replaces_the_worker_when_its_engine_cannot_be_rebuilt(
    engine: RecordingFakeEngine, media_dir: Path, work_dir: Path, clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = RunPodRecorder(monkeypatch)
    svc = CaptionService(Settings(allowed_media_roots=[media_dir], work_dir=work_dir), DeadEngineSlot(engine))
    config = handle_job(svc, {"video": str(clip), "stream": True})
    (done,) = api.of("done")
    # A generator's "refresh_worker" output is not read by runpod 1.12.0: the handler sets the config flag,
    # which handle_job turns into stopPod.
    assert done["stopPod"] is True and json.loads(done["error"])["type"] == "engine_error"
    assert config["refresh_worker"] is True
    # The one-shot runner reads it from the output, as for any coroutine handler.
    result = asyncio.run(rp_job.run_job(make_handler(svc), {"id": "local_test", "input": {"video": str(clip)}}))
    assert result["stopPod"] is True


class DiesAfterFirstAcquire(FakeEngineSlot):
    """Alive when the job starts, dead and not rebuildable when its requests go to the engine."""

    def __init__(self, engine: Any) -> None:
        super().__init__(engine)
        self.calls = 0

    async def acquire(self) -> Any:
        self.calls += 1
        if self.calls > 1:
            raise EngineError("the inference engine died and could not be rebuilt", refresh_worker=True)
        return self.engine


def test_batch_items_that_lose_the_engine_ask_for_a_new_worker_once(
    engine: RecordingFakeEngine, media_dir: Path, work_dir: Path, clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = RunPodRecorder(monkeypatch)
    settings = Settings(allowed_media_roots=[media_dir], work_dir=work_dir)
    svc = CaptionService(settings, DiesAfterFirstAcquire(engine))
    handle_job(svc, {"videos": [str(clip), str(clip)], "max_frames": 2, "stream": True})
    (done,) = api.of("done")
    assert done["stopPod"] is True
    streamed, result = done["output"][:-1], done["output"][-1]
    assert "refresh_worker" not in result and len(streamed) == 2
    for entry in [*result["results"], *(part["result"] for part in streamed)]:
        assert set(entry) == {"error"} and entry["error"]["type"] == "engine_error"
