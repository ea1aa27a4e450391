"""Glue between the runpod SDK and the caption service.

The handler is an async generator wherever the SDK runs generators, so a job with ``stream: true`` sends
each finished segment as it completes (RunPod ``/stream``). runpod-python 1.10.0 decides how to call the
handler from its type alone, once per process, not per job:

- on RunPod (``JobScaler`` -> ``rp_job.handle_job``) a generator's parts are posted to ``/stream`` as they
  come and, with ``return_aggregate_stream``, ``/run``/``/runsync``/``/status`` give the list of all
  parts; a part with ``"error"`` ends the job as FAILED.
- the local API (``--rp_serve_api``) runs generators for ``/runsync``, ``/status`` and ``/stream``, and
  also answers with the list of parts.
- ``--test_input`` / ``test_input.json`` (``rp_local.run_local``) and the realtime server
  (``RUNPOD_REALTIME_PORT``) call the handler through ``rp_job.run_job``, which does not iterate a
  generator: there the handler is a plain coroutine that returns the complete result.

So every job's output on RunPod is a list whose last element is the complete result (``[result]`` for a
job that does not stream); README, "Output".
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from worker.bootstrap import bootstrap, exit_on_sigterm
from worker.config import Settings, get_settings
from worker.api.wire import to_runpod
from worker.job.context import Progress
from worker.job.service import CaptionService

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
StreamHandler = Callable[[dict[str, Any]], AsyncIterator[dict[str, Any]]]


@dataclass(frozen=True)
class SdkMode:
    """How ``runpod.serverless.start`` will run this process's jobs."""

    generators: bool  # the SDK iterates an async-generator handler
    progress: bool  # progress_update reaches a RunPod job queue


def sdk_mode(argv: Sequence[str], environ: Mapping[str, str]) -> SdkMode:
    """The SDK's own dispatch (runpod/serverless/__init__.py ``start`` and worker.py ``main``, 1.10.0),
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
                # For a generator, runpod-python 1.10.0 (rp_job.handle_job) ignores "refresh_worker" in the
                # output and reads only config["refresh_worker"] when the job ends, adding "stopPod" to its
                # result: set it, so RunPod replaces this worker (whose engine could not be rebuilt).
                config["refresh_worker"] = True
            yield to_runpod(output.body)

    return handler


def make_handler(service: CaptionService) -> Handler:
    """The handler where the SDK only awaits a coroutine: the complete output, nothing streamed."""

    async def handler(job: dict[str, Any]) -> dict[str, Any]:
        output = await service.complete(job.get("input"), job.get("id"))
        return to_runpod(output.body, refresh_worker=output.refresh_worker)

    return handler


def build_worker(settings: Settings | None = None) -> dict[str, Any]:
    """Everything ``runpod.serverless.start`` needs. Builds the engine now, at cold start, once."""
    settings = settings or get_settings()
    exit_on_sigterm("SIGTERM: shutting down", 0)
    service = bootstrap(settings, log_format="%(asctime)s %(levelname)s %(name)s: %(message)s").service
    config: dict[str, Any] = {
        # /run, /runsync and /status give the list of everything the generator yielded, the result last.
        "return_aggregate_stream": True,
        # Jobs in flight at once; vLLM batches their generation and their decodes overlap it.
        "concurrency_modifier": lambda current: settings.max_concurrency,
    }
    mode = sdk_mode(sys.argv[1:], os.environ)
    if mode.generators:
        config["handler"] = make_stream_handler(service, config, progress=mode.progress)
    else:
        config["handler"] = make_handler(service)
    return config
