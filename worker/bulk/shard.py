"""One bulk engine process (one per GPU): captions the keys of its shard through the serverless worker's own
CaptionService and engine, appending to its own file, so the supervisor never loads the engine."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import time
from typing import Any

from worker.bulk.common import EXIT_UNFINISHED, entries, log, write_outcomes
from worker.bulk.manifest import Entry, shard_of
from worker.bulk.output import OutputWriter, scan, shard_path

# Imported only here, in the engine process, never by the supervisor: these load the engine's modules.
from worker.api.errors import EngineError
from worker.bootstrap import Runtime, bootstrap, exit_on_sigterm
from worker.config import get_settings

# A job that meets a dead engine is tried again this often in the same run (the engine is rebuilt in
# between); then the process stops and leaves the rest for a rerun rather than writing engine errors.
ENGINE_ATTEMPTS = 3
_PR_SET_PDEATHSIG = 1


def run_shard(args: argparse.Namespace) -> int:
    """Caption this process's shard (``--worker-shard INDEX/COUNT``); the process's exit status."""
    # A normal exit runs atexit, which stops the engine's own processes (EngineSlot.start registers it).
    exit_on_sigterm(
        "SIGTERM: stopping; the lines written so far stay, a rerun does the rest", 128 + signal.SIGTERM
    )
    if args.supervisor_pid is not None:
        die_with_parent(args.supervisor_pid)
    index, count = (int(part) for part in args.worker_shard.split("/"))
    settings = get_settings()
    roots = [*settings.allowed_media_roots, args.input.resolve().parent, *(p.resolve() for p in args.media_root)]
    settings = settings.model_copy(update={"allowed_media_roots": roots})
    # Decoding in processes (the cores shared between the shards) keeps the engine fed: in threads of
    # this process decodes contend for the GIL.
    runtime = bootstrap(
        settings,
        log_format=f"%(asctime)s %(levelname)s shard {index}: %(name)s: %(message)s",
        decoder_shares=count,
    )
    try:
        try:
            runtime.slot.get()
        except EngineError as exc:
            log.error("%s; nothing was captioned", exc.message)
            return EXIT_UNFINISHED
        return asyncio.run(_caption_shard(args, index, count, runtime))
    finally:
        runtime.decoder.shutdown()


def die_with_parent(supervisor: int) -> None:
    """SIGTERM this engine process when the supervisor dies, however it dies (SIGKILL included)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the line above: no signal will come
        raise SystemExit(128 + signal.SIGTERM)


async def _caption_shard(args: argparse.Namespace, index: int, count: int, runtime: Runtime) -> int:
    target = args.output if count == 1 else shard_path(args.output, index, count)
    done = scan(target, args.id_field).keys
    if count > 1:
        # The supervisor merged every earlier shard into the output before starting this run; nobody
        # writes the output until the run ends.
        done |= scan(args.output, args.id_field, repair=False).keys
    stop = asyncio.Event()
    started = time.perf_counter()

    async def caption(entry: Entry) -> dict[str, Any] | None:
        for attempt in range(1, ENGINE_ATTEMPTS + 1):
            output = await runtime.service.complete(entry.job_input, f"bulk-{entry.line}")
            if output.error_type != "engine_error":
                return output.body
            # Not the input's fault: never written as the key's outcome, so a rerun tries again.
            log.warning("line %d: %s (attempt %d)", entry.line, output.body["error"].get("message"), attempt)
            if output.refresh_worker or attempt == ENGINE_ATTEMPTS:
                log.error("the engine is unusable; stopping, a rerun does the keys left")
                stop.set()
                return None
        return None

    todo = (e for e in entries(args) if shard_of(e.key, count) == index and e.key not in done)
    concurrency = args.concurrency or runtime.settings.max_concurrency
    with OutputWriter(target) as writer:
        await write_outcomes(todo, caption, writer, args, concurrency=concurrency, stop=stop)
    log.info("shard %d/%d: %d lines written in %.1f s", index, count, writer.written, time.perf_counter() - started)
    return EXIT_UNFINISHED if stop.is_set() else 0
