"""``python -m worker.bulk``: a JSONL manifest in, a JSONL of results out, resumable (README, "Bulk
captioning"); this module reads the command line and hands the run to the supervisor, an engine process
or the endpoint client.

    python -m worker.bulk --input in.jsonl --output out.jsonl [--gpus N | --gpus 0,1,2,3]
    python -m worker.bulk --input in.jsonl --output out.jsonl --endpoint https://api.runpod.ai/v2/ID
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from worker.bulk.common import log

RESERVED_FIELDS = ("line", "result", "error")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m worker.bulk",
        description="Caption every video of a JSONL manifest into a JSONL output; rerun to resume.",
    )
    parser.add_argument("--input", required=True, type=Path, help="manifest: one job input (+ id) per line")
    parser.add_argument("--output", required=True, type=Path, help="results, one line per key; resumed if present")
    parser.add_argument("--id-field", default="id", help="field holding each line's key (default: id)")
    parser.add_argument("--video-field", default="video", help="field holding the video (default: video)")
    parser.add_argument(
        "--defaults", type=json_object, default={}, help="job input fields for every line, e.g. '{\"fps\": 2}'"
    )
    parser.add_argument(
        "--gpus",
        type=gpus,
        default=None,
        help="engine processes, one per GPU: a count, or the devices by id (0,1,2,3; one device: 3,) "
        "(default: every visible GPU, else 1)",
    )
    parser.add_argument(
        "--extra-fields",
        choices=("error", "keep"),
        default="error",
        help="manifest fields that are no job option (e.g. meta): an error of the line (default), or kept: "
        "copied to its output line untouched",
    )
    parser.add_argument("--raw", action="store_true", help="copy each manifest line to its output line as raw")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="jobs in flight per engine (default: MAX_CONCURRENCY)"
    )
    parser.add_argument(
        "--media-root",
        action="append",
        type=Path,
        default=[],
        help="allow video paths under this directory too (repeatable; the manifest's directory always is)",
    )
    parser.add_argument("--retry-errors", action="store_true", help="redo the keys whose output line is an error")
    parser.add_argument("--fsync-seconds", type=float, default=5.0, help="make written lines durable this often")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    client = parser.add_argument_group("client mode: send the manifest to a RunPod endpoint instead")
    client.add_argument("--endpoint", help="endpoint base URL, e.g. https://api.runpod.ai/v2/ENDPOINT_ID")
    client.add_argument("--api-key", default=os.environ.get("RUNPOD_API_KEY"), help="default: $RUNPOD_API_KEY")
    client.add_argument("--retries", type=int, default=5, help="tries per job on 429/5xx/connection errors")
    client.add_argument("--request-timeout", type=float, default=600.0, help="seconds per job, polling included")
    # Internal: the supervisor starts the engine processes with this.
    parser.add_argument("--worker-shard", help=argparse.SUPPRESS)
    parser.add_argument("--supervisor-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # A device list sets the devices, and with them the count (supervisor.py); a count leaves the choice.
    args.devices = args.gpus if isinstance(args.gpus, list) else None
    if args.devices is not None:
        args.gpus = None
    if args.gpus is not None and args.gpus < 1:
        parser.error("--gpus must be at least 1 (one device by id: --gpus 0,)")
    if args.concurrency is not None and args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.id_field in RESERVED_FIELDS:
        parser.error(f"--id-field cannot be one of {', '.join(RESERVED_FIELDS)} (output fields)")
    if not args.input.is_file():
        parser.error(f"--input {args.input}: no such file")
    if not args.output.parent.is_dir():
        parser.error(f"--output {args.output}: directory {args.output.parent} does not exist")
    return args


def gpus(text: str) -> int | list[str]:
    """``--gpus``: a count (``2``), or device ids as CUDA_VISIBLE_DEVICES takes them (``0,1,2,3``; ``3,``)."""
    if "," not in text:
        try:
            return int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a count or a comma-separated device list: {text!r}") from None
    devices = [part.strip() for part in text.split(",") if part.strip()]
    if not devices or len(set(devices)) != len(devices):
        raise argparse.ArgumentTypeError(f"a device list names each device once: {text!r}")
    return devices


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


@contextlib.contextmanager
def only_run_on(output: Path) -> Iterator[int | None]:
    """Holds an exclusive lock for ``output`` and yields its descriptor (None when another run holds it):
    two runs appending to one output would caption keys twice. The engine processes inherit the
    descriptor, so a killed supervisor's lock lasts until they have stopped writing too."""
    with output.with_name(f"{output.name}.lock").open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield lock.fileno()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Each mode's module is imported only when it runs: the engine's (shard) never in the supervisor,
    # httpx only in client mode.
    if args.worker_shard:
        from worker.bulk.shard import run_shard

        return run_shard(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s bulk: %(message)s")
    if not args.endpoint:  # a local run's engines read the settings: a misspelt one is named before they start
        from worker.config import warn_unknown_settings

        warn_unknown_settings(os.environ)
    with only_run_on(args.output) as lock:
        if lock is None:
            log.error("another bulk run is writing %s; wait for it or stop it", args.output)
            return 2
        if args.endpoint:
            from worker.bulk.client import run_client

            return asyncio.run(run_client(args))
        from worker.bulk.supervisor import supervise

        return supervise(args, lock)
