"""Glue between the runpod SDK and the caption service.

runpod-python (1.12.0; the same since 1.10.0) decides how to call the handler from its type alone, once per
process, not per job, and the type decides what a job's ``output`` is:

- a coroutine handler's return value is the job's ``output`` itself (``rp_job.run_job``, on RunPod, the local
  API, ``--test_input`` and the realtime server alike); one with ``"error"`` ends the job FAILED with it.
- an async generator's parts are posted to ``/stream`` as they come (``rp_job.handle_job`` on RunPod; the
  local API runs them for ``/runsync``, ``/status`` and ``/stream``), and with ``return_aggregate_stream``
  the job's ``output`` is the list of all parts; a part with ``"error"`` ends the job as FAILED. The
  one-shot runners (``--test_input``, realtime) never iterate a generator.

So by default (``ENABLE_STREAMING`` false) the handler is a coroutine: ``output`` is the result, as a client
written for a plain RunPod worker reads it, and a job asking to stream is refused naming the setting. With
``ENABLE_STREAMING`` true it is a generator wherever the SDK runs one, so a job with ``stream: true`` sends
each finished segment as it completes, and every job's output is the list of its parts, the result last
(README, "Output"). Progress updates reach RunPod's ``/status`` either way. A job RunPod stops (``/cancel``,
a timeout: the SDK cancels its task) stops its work, engine requests included (CaptionService.run).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from worker.bootstrap import bootstrap, configure_logging, exit_on_sigterm
from worker.config import Settings, get_settings, warn_unknown_settings
from worker.api.wire import to_runpod
from worker.job.context import Progress
from worker.job.service import CaptionService

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
StreamHandler = Callable[[dict[str, Any]], AsyncIterator[dict[str, Any]]]


@dataclass(frozen=True)
class SdkMode:
    """How ``runpod.serverless.start`` will run this process's jobs."""

    generators: bool  # the SDK iterates an async-generator handler
    progress: bool  # progress_update reaches a RunPod job queue


def sdk_mode(argv: Sequence[str], environ: Mapping[str, str]) -> SdkMode:
    """The SDK's own dispatch (runpod/serverless/__init__.py ``start`` and worker.py ``main``, 1.12.0),
    with its own argument parser: local API first, then the realtime server, then a one-shot local test
    when there is a test input or no job queue to poll, else the worker loop."""
    from runpod.serverless import parser

    args, _ = parser.parse_known_args(list(argv))
    if args.rp_serve_api:
        return SdkMode(generators=True, progress=False)
    if int(environ.get("RUNPOD_REALTIME_PORT") or 0):
        return SdkMode(generators=False, progress=False)
    if args.test_input or environ.get("RUNPOD_WEBHOOK_GET_JOB") is None:
        return SdkMode(generators=False, progress=False)
    return SdkMode(generators=True, progress=True)


def make_stream_handler(service: CaptionService, config: dict[str, Any], *, progress: bool) -> StreamHandler:
    """The handler where the SDK runs generators: yields the job's parts, the complete output last.
    ``config`` is the dict given to ``runpod.serverless.start``."""

    async def handler(job: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        report: Progress | None = None
        if progress:
            import runpod

            # Shown by RunPod's /status while the job runs; posted from a thread of the SDK's own.
            report = partial(runpod.serverless.progress_update, job)
        async for output in service.run(job.get("input"), job.get("id"), report):
            if output.refresh_worker:
                # For a generator, runpod-python 1.12.0 (rp_job.handle_job) ignores "refresh_worker" in the
                # output and reads only config["refresh_worker"] when the job ends, adding "stopPod" to its
                # result: set it, so RunPod replaces this worker (whose engine could not be rebuilt).
                config["refresh_worker"] = True
            yield to_runpod(output.body)

    return handler


def make_handler(service: CaptionService, *, progress: bool = False, streaming: bool = True) -> Handler:
    """The handler the SDK awaits: returns the complete output, which becomes the job's ``output`` itself
    (a dict) or, with ``"error"``, a FAILED job. ``progress``: post progress updates (RunPod's job queue);
    ``streaming`` False: a job asking to stream is refused with a validation error naming ENABLE_STREAMING
    (with True, as for ``--test_input`` of a streaming endpoint, it just gets the complete output)."""

    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        report: Progress | None = None
        if progress:
            import runpod

            report = partial(runpod.serverless.progress_update, job)
        output = await service.complete(job.get("input"), job.get("id"), report, streaming=streaming)
        return to_runpod(output.body, refresh_worker=output.refresh_worker)

    return handler


def build_worker(settings: Settings | None = None) -> dict[str, Any]:
    """Everything ``runpod.serverless.start`` needs. Builds the engine now, at cold start, once."""
    settings = settings or get_settings()
    exit_on_sigterm("SIGTERM: shutting down", 0)
    # The misspelt and foreign variables first, before the minutes of the engine's start (bootstrap configures
    # logging again, to the same effect).
    configure_logging(settings, LOG_FORMAT)
    warn_unknown_settings(os.environ)
    service = bootstrap(settings, log_format=LOG_FORMAT).service
    config: dict[str, Any] = {
        # Jobs in flight at once; vLLM batches their generation and their decodes overlap it.
        "concurrency_modifier": lambda current: settings.max_concurrency,
    }
    mode = sdk_mode(sys.argv[1:], os.environ)
    if settings.enable_streaming and mode.generators:
        # /run, /runsync and /status give the list of everything the generator yielded, the result last.
        config["return_aggregate_stream"] = True
        config["handler"] = make_stream_handler(service, config, progress=mode.progress)
    else:
        config["handler"] = make_handler(service, progress=mode.progress, streaming=settings.enable_streaming)
    streams = "return_aggregate_stream" in config
    log.info("jobs answer with %s", "the list of their parts (ENABLE_STREAMING)" if streams else "their result")
    return config
