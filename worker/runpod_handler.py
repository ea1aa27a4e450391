"""Glue between the runpod SDK and the caption service."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

from worker.compile_cache import configure_compile_caches
from worker.config import Settings, get_settings
from worker.engine import EngineSlot
from worker.pipeline import CaptionService
from worker.redact import RedactingFormatter

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def make_handler(service: CaptionService) -> Handler:
    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        output = await service.handle(job.get("input"), job.get("id"))
        if "error" in output:
            # RunPod marks a job FAILED when the output has "error", and its API carries that error as a
            # string (the SDK's local API rejects anything else), so the structured error travels as JSON
            # text: json.loads(response["error"]) gives {"type", "message", "traceback", ...}.
            failed: dict[str, Any] = {"error": json.dumps(output["error"])}
            if output.get("refresh_worker"):
                # runpod-python turns this into "stopPod": RunPod stops this worker after the job and
                # starts a fresh one (the local API ignores it).
                failed["refresh_worker"] = True
            return failed
        return output

    return handler


def _exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into a normal exit so atexit stops the engine's processes. Without this they outlive
    the worker: uvicorn (local API) re-raises SIGTERM after its own shutdown and the default action kills
    the process before atexit runs."""

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("SIGTERM: shutting down")
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)


def build_worker(settings: Settings | None = None) -> dict[str, Any]:
    """Everything ``runpod.serverless.start`` needs. Builds the engine now, at cold start, once."""
    settings = settings or get_settings()
    logging.basicConfig(level=logging.DEBUG if settings.debug else logging.INFO)
    for log_handler in logging.getLogger().handlers:
        log_handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    _exit_cleanly_on_sigterm()
    # Before the engine imports vLLM and torch, which read the cache locations at import.
    configure_compile_caches(settings.compile_cache_dir)
    slot = EngineSlot()
    slot.start(settings)
    service = CaptionService(settings, slot)
    return {
        "handler": make_handler(service),
        # Jobs in flight at once; vLLM batches their generation and their decodes overlap it.
        "concurrency_modifier": lambda current: settings.max_concurrency,
    }
