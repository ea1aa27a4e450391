"""Bulk client mode: the manifest's jobs sent to a RunPod endpoint instead of a local engine, with the local
mode's output and resume rules (only final outcomes are written; a job lost to the transport or to the
endpoint's engine is left for the next run)."""

# Each line is one job through /runsync; a job that outlives /runsync's wait (RunPod answers
# IN_QUEUE/IN_PROGRESS with its id) is polled on /status/{id}. 429, 5xx and connection failures are retried
# with exponential backoff (honouring Retry-After); 401/403/404 stop the run (a wrong key or URL fails
# every line alike).

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
from typing import Any

import httpx

from worker.api.wire import error_type, parse_error
from worker.bulk.common import EXIT_UNFINISHED, entries, log, progress_bar, write_outcomes
from worker.bulk.manifest import Duplicates, Entry
from worker.bulk.output import OutputFileError, OutputWriter, drop_errors, scan

# httpx logs every request at INFO: thousands of lines that would bury the run's own messages.
logging.getLogger("httpx").setLevel(logging.WARNING)

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


def final_output(body: dict[str, Any]) -> dict[str, Any]:
    """A finished job's complete output (a result or ``{"error": {...}}``) from its status body. The
    worker's output is the result itself, or on a streaming endpoint the list of its parts, the complete
    result last (README, "Output")."""
    status = body.get("status")
    if status == "COMPLETED":
        output = body.get("output")
        if isinstance(output, list):
            output = output[-1] if output else None
        if not isinstance(output, dict):
            return {"error": parse_error(f"the endpoint returned no result: {json.dumps(output)[:300]}")}
        if "error" in output:
            return {"error": parse_error(output["error"])}
        return output
    if status == "FAILED":
        return {"error": parse_error(body.get("error"))}
    raise Transient(f"job ended {status}: {json.dumps(body)[:300]}")


async def caption(client: httpx.AsyncClient, base: str, job_input: dict[str, Any], retries: int) -> dict[str, Any]:
    body = await send(client, "POST", f"{base}/runsync", retries, json={"input": job_input})
    while body.get("status") in _RUNNING:
        await asyncio.sleep(_POLL_SECONDS)
        body = await send(client, "GET", f"{base}/status/{body['id']}", retries)
    output = final_output(body)
    if error_type(output) == "engine_error":
        raise Transient(f"the endpoint's engine failed: {output['error'].get('message')}")
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
    concurrency = args.concurrency or 8
    stop = asyncio.Event()
    bar = progress_bar(todo, disabled=args.no_progress)
    timeout = httpx.Timeout(args.request_timeout, connect=30.0)
    limits = httpx.Limits(max_connections=concurrency)

    with OutputWriter(args.output) as writer:
        async with httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits) as client:

            async def one(entry: Entry) -> dict[str, Any] | None:
                try:
                    return await asyncio.wait_for(
                        caption(client, base, entry.job_input, args.retries), args.request_timeout
                    )
                except (Transient, TimeoutError) as exc:
                    log.warning("line %d (%s): %s; left for the next run", entry.line, entry.key, exc or "timed out")
                except Fatal as exc:
                    stop.set()
                    log.error("%s; stopping", exc)
                return None

            todo_entries = (entry for entry in entries(args) if entry.key not in done)
            await write_outcomes(
                todo_entries, one, writer, args, concurrency=concurrency, stop=stop, on_line=lambda: bar.update(1)
            )
    bar.close()
    finished = scan(args.output, args.id_field).keys
    left = sum(1 for entry in entries(args) if entry.key not in finished)
    log.info("%d lines written; %d keys left%s", writer.written, left, "; rerun to finish them" if left else "")
    return EXIT_UNFINISHED if left or stop.is_set() else 0
