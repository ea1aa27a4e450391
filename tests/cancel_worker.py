"""A job stopped the way RunPod stops one, for tests/test_cancel.py, in its own process (vLLM engines are built
under ``__main__``). RunPod's ``/cancel`` and a job's execution timeout reach the worker the same way: the
runpod SDK's stop channel names the job and its ``JobScaler`` cancels the job's task. Here that is the SDK's
own worker loop (``JobScaler.run`` with ``rp_job.handle_job``) over the worker ``build_worker`` builds at cold
start, real engine and decoders; only the transport is the SDK's local-test one (its ``jobs_fetcher`` and
``stop_signals_fetcher`` hooks instead of RunPod's job API, the results recorded instead of posted).

    python -m tests.cancel_worker LONG_JOB.json NEXT_JOB.json OUT.json
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STOP_WHEN_DONE = 1  # the long job is stopped once this many of its engine requests have finished


async def until(condition: Callable[[], bool], seconds: float, what: str) -> float:
    """Seconds until ``condition`` holds; raises after ``seconds``."""
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > seconds:
            raise TimeoutError(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.02)
    return round(time.perf_counter() - started, 3)


async def drive(config: dict[str, Any], runtime: Any, long_job: dict[str, Any], next_job: dict[str, Any]) -> dict:
    from runpod.serverless.modules import rp_job, rp_scale, worker_state

    assert worker_state.IS_LOCAL_TEST, "RUNPOD_WEBHOOK_GET_JOB must be unset: the SDK's local hooks are used"
    engine = runtime.slot.get()
    llm = engine.llm
    work_dir: Path = runtime.settings.work_dir
    events: list[tuple[str, str, Any]] = []
    report: dict[str, Any] = {}
    finished: list[str] = []
    generate = engine.generate

    async def counted(*args: Any, **kwargs: Any) -> Any:
        generation = await generate(*args, **kwargs)
        finished.append(args[2] if len(args) > 2 else kwargs["request_id"])
        return generation

    engine.generate = counted  # an observer: the engine requests that finished

    async def stream_result(session: Any, data: dict[str, Any], job: dict[str, Any]) -> None:
        events.append(("stream", job["id"], data))

    async def send_result(session: Any, data: dict[str, Any], job: dict[str, Any], is_stream: bool = False) -> None:
        events.append(("done", job["id"], data))

    rp_job.stream_result, rp_job.send_result = stream_result, send_result  # what would go to RunPod's job API
    queue = [{"id": "long", "input": long_job}]

    def in_engine() -> int:
        return llm.output_processor.get_num_unfinished_requests()

    def files() -> list[str]:
        return sorted(str(p.relative_to(work_dir)) for p in work_dir.rglob("*")) if work_dir.exists() else []

    async def jobs_fetcher(session: Any, wanted: int) -> list[dict[str, Any]]:
        if queue:
            return [queue.pop(0)]
        await asyncio.sleep(0.05)
        return []

    async def stop_signals_fetcher(session: Any) -> list[str]:
        if "requests_at_stop" not in report and len(finished) >= STOP_WHEN_DONE and in_engine() > 0:
            streamed = [data for kind, job, data in events if kind == "stream" and job == "long"]
            report.update(
                stopped_at=time.perf_counter(),
                requests_done_before_stop=len(finished),
                segments_before_stop=len(streamed),
                num_chunks=streamed[0]["output"]["num_chunks"] if streamed else None,
                requests_at_stop=in_engine(),
                files_at_stop=files(),
            )
            return ["long"]
        await asyncio.sleep(0.05)
        return []

    config |= {"jobs_fetcher": jobs_fetcher, "stop_signals_fetcher": stop_signals_fetcher}
    scaler = rp_scale.JobScaler(config)

    async def referee() -> None:
        try:
            await until(lambda: "stopped_at" in report, 600, "a request of the long job finishes")
            stopped = report["stopped_at"]
            # The SDK has dropped the job (its task is done) ...
            await until(lambda: "long" not in scaler.jobs_tasks, 30, "the SDK ends the stopped job")
            report["job_ended_s"] = round(time.perf_counter() - stopped, 3)
            # ... and the job's engine requests, its scratch files and its slots are gone with it.
            await until(lambda: in_engine() == 0, 30, "no request of the stopped job left in the engine")
            report["requests_gone_s"] = round(time.perf_counter() - stopped, 3)
            await until(lambda: not files(), 30, "the stopped job's scratch files removed")
            report["files_gone_s"] = round(time.perf_counter() - stopped, 3)
            # The engine core too: a pause that waits for in-flight requests returns at once when none is left
            # (a leftover request of max_tokens tokens would hold it for seconds).
            started = time.perf_counter()
            await asyncio.wait_for(llm.pause_generation(mode="wait", clear_cache=False), 120)
            report["core_drained_s"] = round(time.perf_counter() - started, 3)
            await llm.resume_generation()
            # Every engine slot of the service (MAX_NUM_SEQS, shared by all jobs' chunks) is free again.
            slots = runtime.service._fan_out  # noqa: SLF001 - the service's own bound, read by the test
            for _ in range(runtime.settings.max_num_seqs):
                await asyncio.wait_for(slots.acquire(), 5)
            for _ in range(runtime.settings.max_num_seqs):
                slots.release()
            report["slots_free"] = runtime.settings.max_num_seqs
            # The worker keeps serving: the next job runs to its result.
            queue.append({"id": "next", "input": next_job})
            await until(lambda: any(k == "done" and j == "next" for k, j, _ in events), 600, "the next job's result")
        except BaseException as exc:
            report["referee_error"] = f"{type(exc).__name__}: {exc}"
        finally:
            scaler.kill_worker()

    watch = asyncio.create_task(referee())
    await scaler.run()
    await watch
    report["events"] = [[kind, job, data] for kind, job, data in events]
    report["in_engine_at_end"] = in_engine()
    report["requests_done_at_end"] = len(finished)
    return report


def main(long_path: str, next_path: str, out_path: str) -> None:
    import worker.runpod_handler as runpod_handler

    runtimes: list[Any] = []
    bootstrap = runpod_handler.bootstrap

    def capture(*args: Any, **kwargs: Any) -> Any:
        runtimes.append(bootstrap(*args, **kwargs))
        return runtimes[-1]

    runpod_handler.bootstrap = capture  # the same cold start; the test reads the engine and service it built
    # The handler build_worker gives RunPod's worker loop: a coroutine, or with ENABLE_STREAMING an async
    # generator (picked for the worker loop and the local API alike; the local API's flag is given here since
    # RunPod's job queue variables must stay unset).
    sys.argv = [sys.argv[0], "--rp_serve_api"]
    config = runpod_handler.build_worker()
    long_job = json.loads(Path(long_path).read_text())
    next_job = json.loads(Path(next_path).read_text())
    report = asyncio.run(drive(config, runtimes[0], long_job, next_job))
    Path(out_path).write_text(json.dumps(report))
    runtimes[0].slot.shutdown()
    runtimes[0].decoder.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:4])
