"""Bulk client mode: the manifest's jobs sent to a RunPod endpoint instead of a local engine.

Each line is one job through ``/runsync``; a job that outlives /runsync's wait (RunPod answers
IN_QUEUE/IN_PROGRESS with its id) is polled on ``/status/{id}``. At most ``--concurrency`` jobs are in
flight. 429, 5xx and connection failures are retried with exponential backoff (honouring Retry-After);
401/403/404 stop the run (a wrong key or URL fails every line alike). The output and resume rules are
the local mode's (worker/bulk/output.py): only final outcomes are written; a job lost to the transport or
to the endpoint's engine is left for the next run, which the exit status says.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
from typing import Any

import httpx

from worker.bulk.run import EXIT_UNFINISHED, _progress_bar, entries, record
from worker.bulk.output import OutputFileError, OutputWriter, drop_errors, scan
from worker.bulk.manifest import Duplicates

log = logging.getLogger("worker.bulk")
# httpx logs every request at INFO: thousands of lines that would bury the run's own messages.
logging.getLogger("httpx").setLevel(logging.WARNING)

# The type of an output error this client made up itself (the endpoint answered something that is not a
# worker's structured error, e.g. HTTP 413 for a body over RunPod's limit).
ENDPOINT_ERROR = "endpoint_error"
_RUNNING = ("IN_QUEUE", "IN_PROGRESS")
_RETRIED_STATUS = (429, 500, 502, 503, 504)
_FATAL_STATUS = (401, 403, 404)
_POLL_SECONDS = 1.0
_MAX_BACKOFF = 30.0


class Transient(Exception):
    """The job did not get a final answer this run (retries spent, timed out, engine failure)."""


class Fatal(Exception):
    """The endpoint refuses every job (authentication, wrong URL): stop the run."""


def backoff(attempt: int, retry_after: str | None) -> float:
    """Seconds before try ``attempt + 1``: the server's Retry-After when it gives seconds, else
    exponential with full jitter (so many clients retrying do not come back in step)."""
    if retry_after is not None:
        try:
            return min(_MAX_BACKOFF, max(0.0, float(retry_after)))
        except ValueError:
            pass
    return random.uniform(0, min(_MAX_BACKOFF, 0.5 * 2**attempt))


async def send(client: httpx.AsyncClient, method: str, url: str, retries: int, **kwargs: Any) -> dict[str, Any]:
    """One API call, retried on transient failures; the JSON body of its 2xx answer."""
    for attempt in range(retries):
        retry_after = None
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code in _FATAL_STATUS:
                raise Fatal(f"{method} {url}: HTTP {response.status_code} {response.text[:300]}")
            if response.status_code < 400:
                return response.json()
            if response.status_code not in _RETRIED_STATUS:
                return {"status": "FAILED", "error": f"HTTP {response.status_code}: {response.text[:1000]}"}
            reason, retry_after = f"HTTP {response.status_code}", response.headers.get("retry-after")
        if attempt + 1 < retries:
            delay = backoff(attempt, retry_after)
            log.info("%s %s: %s; retry in %.1f s", method, url, reason, delay)
            await asyncio.sleep(delay)
    raise Transient(f"{method} {url}: {reason} after {retries} tries")


def structured_error(error: Any) -> dict[str, Any]:
    """The worker's ``{"type", "message", ...}`` from a RunPod answer, where it travels as JSON text."""
    if isinstance(error, str):
        try:
            parsed = json.loads(error)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and "type" in parsed:
            return parsed
        return {"type": ENDPOINT_ERROR, "message": error}
    if isinstance(error, dict) and "type" in error:
        return error
    return {"type": ENDPOINT_ERROR, "message": json.dumps(error)[:1000]}


def final_output(body: dict[str, Any]) -> dict[str, Any]:
    """A finished job's complete output (a result or ``{"error": {...}}``) from its status body. The
    worker's output is the list of its parts, the complete result last (README, "Output")."""
    status = body.get("status")
    if status == "COMPLETED":
        output = body.get("output")
        if isinstance(output, list):
            output = output[-1] if output else None
        if not isinstance(output, dict):
            return {"error": structured_error(f"the endpoint returned no result: {json.dumps(output)[:300]}")}
        if "error" in output:
            return {"error": structured_error(output["error"])}
        return output
    if status == "FAILED":
        return {"error": structured_error(body.get("error"))}
    raise Transient(f"job ended {status}: {json.dumps(body)[:300]}")


async def caption(client: httpx.AsyncClient, base: str, job_input: dict[str, Any], retries: int) -> dict[str, Any]:
    body = await send(client, "POST", f"{base}/runsync", retries, json={"input": job_input})
    while body.get("status") in _RUNNING:
        await asyncio.sleep(_POLL_SECONDS)
        body = await send(client, "GET", f"{base}/status/{body['id']}", retries)
    output = final_output(body)
    error = output.get("error")
    if isinstance(error, dict) and error.get("type") == "engine_error":
        raise Transient(f"the endpoint's engine failed: {error.get('message')}")
    return output


async def run_client(args: argparse.Namespace) -> int:
    try:
        if args.retry_errors:
            log.info("--retry-errors: %d error lines removed", drop_errors(args.output, args.id_field))
        done = scan(args.output, args.id_field).keys
    except OutputFileError as exc:
        log.error("%s", exc)
        return 2
    duplicates = Duplicates()
    todo = sum(entry.key not in done for entry in entries(args, duplicates))
    if duplicates.lines:
        log.warning("manifest: %s", duplicates.summary())
    log.info("%d keys to send to %s", todo, args.endpoint)
    base = args.endpoint.rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    slots = asyncio.Semaphore(args.concurrency or 8)
    stop = asyncio.Event()
    bar = _progress_bar(todo, disabled=args.no_progress)
    timeout = httpx.Timeout(args.request_timeout, connect=30.0)
    limits = httpx.Limits(max_connections=args.concurrency or 8)

    with OutputWriter(args.output) as writer:
        async with httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits) as client:

            async def one(entry: Any) -> None:
                try:
                    output = await asyncio.wait_for(
                        caption(client, base, entry.job_input, args.retries), args.request_timeout
                    )
                except (Transient, TimeoutError) as exc:
                    log.warning("line %d (%s): %s; left for the next run", entry.line, entry.key, exc or "timed out")
                    return
                except Fatal as exc:
                    stop.set()
                    log.error("%s; stopping", exc)
                    return
                finally:
                    slots.release()
                writer.write(record(entry, args, output))
                bar.update(1)

            async def sync_now_and_then() -> None:
                while True:
                    await asyncio.sleep(args.fsync_seconds)
                    await asyncio.to_thread(writer.sync)

            syncer = asyncio.create_task(sync_now_and_then())
            tasks: set[asyncio.Task[None]] = set()
            for entry in entries(args):
                if entry.key in done:
                    continue
                if entry.error is not None:
                    writer.write(record(entry, args, entry.error))
                    bar.update(1)
                    continue
                await slots.acquire()
                if stop.is_set():
                    break
                task = asyncio.create_task(one(entry))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
            syncer.cancel()
    bar.close()
    finished = scan(args.output, args.id_field).keys
    left = sum(1 for entry in entries(args) if entry.key not in finished)
    log.info("%d lines written; %d keys left%s", writer.written, left, "; rerun to finish them" if left else "")
    return EXIT_UNFINISHED if left or stop.is_set() else 0
