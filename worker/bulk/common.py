"""What the local engine processes and the endpoint client share: the manifest's entries, the output
record, the progress bar, and the one loop that captions entries a bounded number at a time."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from worker.bulk.manifest import Duplicates, Entry, read_manifest, unique
from worker.bulk.output import OutputWriter

log = logging.getLogger("worker.bulk")

# Exit status of a run that left keys undone (a worker or the endpoint failed); rerun to finish them.
EXIT_UNFINISHED = 1

# A job's output for its record, or None: no final outcome this run, the key is left for a rerun.
Caption = Callable[[Entry], Awaitable[dict[str, Any] | None]]


def entries(args: argparse.Namespace, duplicates: Duplicates | None = None) -> Iterator[Entry]:
    """The manifest's entries, each key once (repeats reported in ``duplicates``)."""
    lines = read_manifest(
        args.input,
        id_field=args.id_field,
        video_field=args.video_field,
        defaults=args.defaults,
        extra_fields=args.extra_fields,
    )
    return unique(lines, duplicates if duplicates is not None else Duplicates())


def record(entry: Entry, args: argparse.Namespace, output: dict[str, Any]) -> dict[str, Any]:
    """An output line: the key, the manifest line, the line's kept fields (--extra-fields keep) and the line
    itself (--raw), and the job's result or its error."""
    head = {args.id_field: entry.id_value, "line": entry.line} | entry.extra
    if getattr(args, "raw", False):
        head["raw"] = entry.raw
    if "error" in output:
        return head | {"error": output["error"]}
    return head | {"result": output}


def progress_bar(total: int, *, disabled: bool) -> Any:
    from tqdm import tqdm

    # tqdm's rate is videos/s (unit "video"), smoothed over recent updates, and its ETA follows from it.
    return tqdm(total=total, unit="video", dynamic_ncols=True, smoothing=0.05, disable=disabled)


async def write_outcomes(
    todo: Iterator[Entry],
    caption: Caption,
    writer: OutputWriter,
    args: argparse.Namespace,
    *,
    concurrency: int,
    stop: asyncio.Event,
    on_line: Callable[[], None] = lambda: None,
) -> None:
    """Write the outcome of every entry of ``todo``: a bad manifest line's error at once, a job's output
    when ``caption`` gives one. Starts no more jobs once ``stop`` is set; ``on_line`` after each line."""
    # Bounded prefetch: at most `concurrency` jobs fetching, decoding or in the engine at once, so
    # preparing the next videos overlaps the engine's work without piling frames up.
    slots = asyncio.Semaphore(concurrency)
    tasks: set[asyncio.Task[None]] = set()

    def write(entry: Entry, output: dict[str, Any]) -> None:
        writer.write(record(entry, args, output))
        on_line()

    async def one(entry: Entry) -> None:
        try:
            output = await caption(entry)
        finally:
            slots.release()
        if output is not None:
            write(entry, output)

    syncer = asyncio.create_task(_sync_now_and_then(writer, args.fsync_seconds))
    try:
        # Reading and checking lines touches the disk (relative paths are looked up): off the loop.
        while (entry := await asyncio.to_thread(next, todo, None)) is not None:
            if entry.error is not None:
                write(entry, entry.error)
                continue
            await slots.acquire()
            if stop.is_set():
                break
            task = asyncio.create_task(one(entry))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
    finally:
        syncer.cancel()


async def _sync_now_and_then(writer: OutputWriter, seconds: float) -> None:
    """Make the written lines durable every ``seconds``: a power loss costs seconds of work."""
    while True:
        await asyncio.sleep(seconds)
        await asyncio.to_thread(writer.sync)
