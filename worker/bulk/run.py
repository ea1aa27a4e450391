"""Bulk captioning: a JSONL manifest in, a JSONL of results out, resumable (README, "Bulk captioning").

    python -m worker.bulk --input in.jsonl --output out.jsonl [--gpus N]
    python -m worker.bulk --input in.jsonl --output out.jsonl --endpoint https://api.runpod.ai/v2/ID

Locally the command is a light supervisor: it repairs and reads the output, then starts one engine
process per GPU (``CUDA_VISIBLE_DEVICES`` each), which caption the keys of their shard (a stable hash of
the key) through the handler's own CaptionService and append to their own file; the supervisor shows
progress and merges the shard files into the output at the end. The engine lives in those children, never
in the supervisor, so killing the supervisor (even with SIGKILL) stops them cleanly through the parent
death signal, and a rerun resumes. Why processes and not vLLM's data_parallel_size: every decode, prompt
and multimodal preprocessing of a job runs in the process that owns the engine front end; one process per
GPU splits that CPU work too, and needs nothing of vLLM beyond what the serverless worker already uses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from worker.bulk.output import (
    OutputFileError,
    OutputWriter,
    drop_errors,
    leftover_shards,
    merge_shards,
    scan,
    shard_path,
)
from worker.bulk.manifest import Duplicates, Entry, read_manifest, shard_of, unique

if TYPE_CHECKING:
    # The supervisor never imports the engine's modules (vLLM, torch): only the engine processes do.
    from worker.config import Settings
    from worker.media.pool import DecodePool
    from worker.engine import EngineSlot

log = logging.getLogger("worker.bulk")

# A job that meets a dead engine is tried again this often in the same run (the engine is rebuilt in
# between); then the worker stops and leaves the rest for a rerun rather than writing engine errors.
ENGINE_ATTEMPTS = 3
# Exit status of a run that left keys undone (a worker or the endpoint failed); rerun to finish them.
EXIT_UNFINISHED = 1
_PR_SET_PDEATHSIG = 1
_RESERVED_FIELDS = ("line", "result", "error")


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
        "--defaults", type=_json_object, default={}, help="job input fields for every line, e.g. '{\"fps\": 2}'"
    )
    parser.add_argument(
        "--gpus", type=int, default=None, help="engine processes, one per GPU (default: every visible GPU, else 1)"
    )
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
    if args.gpus is not None and args.gpus < 1:
        parser.error("--gpus must be at least 1")
    if args.concurrency is not None and args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    if args.id_field in _RESERVED_FIELDS:
        parser.error(f"--id-field cannot be one of {', '.join(_RESERVED_FIELDS)} (output fields)")
    if not args.input.is_file():
        parser.error(f"--input {args.input}: no such file")
    if not args.output.parent.is_dir():
        parser.error(f"--output {args.output}: directory {args.output.parent} does not exist")
    return args


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def entries(args: argparse.Namespace, duplicates: Duplicates | None = None) -> Iterator[Entry]:
    """The manifest's entries, each key once (repeats reported in ``duplicates``)."""
    lines = read_manifest(args.input, id_field=args.id_field, video_field=args.video_field, defaults=args.defaults)
    return unique(lines, duplicates if duplicates is not None else Duplicates())


def record(entry: Entry, args: argparse.Namespace, output: dict[str, Any]) -> dict[str, Any]:
    """An output line: the key, the manifest line, and the job's result or its error."""
    head = {args.id_field: entry.id_value, "line": entry.line}
    if "error" in output:
        return head | {"error": output["error"]}
    return head | {"result": output}


@dataclass
class Outcome:
    """What one finished line was, for the counts and the progress bar."""

    error_type: str | None


def outcome_of(raw: bytes) -> Outcome:
    try:
        line = json.loads(raw)
    except ValueError:
        return Outcome("?")
    error = line.get("error") if isinstance(line, dict) else None
    return Outcome(error.get("type", "?") if isinstance(error, dict) else None)


# --- the engine process (one per GPU) ---------------------------------------------------------------


def run_worker(args: argparse.Namespace) -> int:
    """Caption this process's shard with the handler's pipeline and engine, appending to its file."""
    from worker.compile_cache import configure_compile_caches
    from worker.config import get_settings
    from worker.media.pool import start_decoders
    from worker.engine import EngineSlot
    from worker.api.errors import EngineError
    from worker.api.redact import RedactingFormatter

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if args.supervisor_pid is not None:
        _die_with_parent(args.supervisor_pid)
    index, count = (int(part) for part in args.worker_shard.split("/"))
    settings = get_settings()
    roots = [*settings.allowed_media_roots, args.input.resolve().parent, *(p.resolve() for p in args.media_root)]
    settings = settings.model_copy(update={"allowed_media_roots": roots})
    logging.basicConfig(level=logging.DEBUG if settings.debug else logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(RedactingFormatter(f"%(asctime)s %(levelname)s shard {index}: %(name)s: %(message)s"))
    configure_compile_caches(settings.compile_cache_dir)
    slot = EngineSlot()
    slot.start(settings)
    try:
        slot.get()
    except EngineError as exc:
        log.error("%s; nothing was captioned", exc.message)
        return EXIT_UNFINISHED
    concurrency = args.concurrency or settings.max_concurrency
    # Decoding in processes (the cores shared between the shards) keeps the engine fed: in threads of
    # this process decodes contend for the GIL.
    decoder = start_decoders(settings, count)
    try:
        return asyncio.run(_work(args, index, count, settings, slot, decoder, concurrency))
    finally:
        decoder.shutdown()


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # A normal exit runs atexit, which stops the engine's own processes (EngineSlot.start registers it).
    log.info("SIGTERM: stopping; the lines written so far stay, a rerun does the rest")
    sys.exit(128 + signum)


async def _work(
    args: argparse.Namespace,
    index: int,
    count: int,
    settings: Settings,
    slot: EngineSlot,
    decoder: DecodePool,
    concurrency: int,
) -> int:
    from worker.job.service import CaptionService

    service = CaptionService(settings, slot, decoder)
    target = args.output if count == 1 else shard_path(args.output, index, count)
    done = scan(target, args.id_field).keys
    if count > 1:
        # The supervisor merged every earlier shard into the output before starting this run; nobody
        # writes the output until the run ends.
        done |= scan(args.output, args.id_field, repair=False).keys
    slots = asyncio.Semaphore(concurrency)
    stop = asyncio.Event()
    tasks: set[asyncio.Task[None]] = set()
    started = time.perf_counter()

    with OutputWriter(target) as writer:

        async def sync_now_and_then() -> None:
            while True:
                await asyncio.sleep(args.fsync_seconds)
                await asyncio.to_thread(writer.sync)

        async def caption(entry: Entry) -> None:
            try:
                output: dict[str, Any] = {}
                for attempt in range(1, ENGINE_ATTEMPTS + 1):
                    output = await service.handle(entry.job_input, f"bulk-{entry.line}")
                    error = output.get("error")
                    if not (isinstance(error, dict) and error.get("type") == "engine_error"):
                        break
                    # Not the input's fault: never written as the key's outcome, so a rerun tries again.
                    log.warning("line %d: %s (attempt %d)", entry.line, error.get("message"), attempt)
                    if output.get("refresh_worker") or attempt == ENGINE_ATTEMPTS:
                        log.error("the engine is unusable; stopping, a rerun does the keys left")
                        stop.set()
                        return
                output.pop("refresh_worker", None)
                writer.write(record(entry, args, output))
            finally:
                slots.release()

        syncer = asyncio.create_task(sync_now_and_then())
        try:
            manifest = entries(args)
            # Reading and checking lines touches the disk (relative paths are looked up): off the loop.
            while (entry := await asyncio.to_thread(next, manifest, None)) is not None:
                if shard_of(entry.key, count) != index or entry.key in done:
                    continue
                if entry.error is not None:
                    writer.write(record(entry, args, entry.error))
                    continue
                # Bounded prefetch: at most `concurrency` jobs fetching, decoding or in the engine at once,
                # so decoding the next videos overlaps the engine's work without piling frames up.
                await slots.acquire()
                if stop.is_set():
                    break
                task = asyncio.create_task(caption(entry))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
        finally:
            syncer.cancel()
    log.info("shard %d/%d: %d lines written in %.1f s", index, count, writer.written, time.perf_counter() - started)
    return EXIT_UNFINISHED if stop.is_set() else 0


# --- the supervisor ---------------------------------------------------------------------------------


def _die_with_parent(supervisor: int) -> None:
    """SIGTERM this engine process when the supervisor dies, however it dies (SIGKILL included)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the line above: no signal will come
        raise SystemExit(128 + signal.SIGTERM)


def visible_gpus(visible: str | None) -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists (0 without)."""
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines())


def device_groups(count: int, per_engine: int, visible: str | None) -> list[str]:
    """``CUDA_VISIBLE_DEVICES`` for each engine process: consecutive groups of ``per_engine`` devices
    (TENSOR_PARALLEL_SIZE) out of the ones this process may use."""
    devices = [d.strip() for d in visible.split(",") if d.strip()] if visible else None
    if count == 1:
        return [visible or ""]  # one engine: the environment as it is
    needed = count * per_engine
    if devices is not None and len(devices) < needed:
        raise SystemExit(
            f"--gpus {count} x TENSOR_PARALLEL_SIZE {per_engine} needs {needed} devices; "
            f"CUDA_VISIBLE_DEVICES={visible} has {len(devices)}"
        )
    ids = devices if devices is not None else [str(i) for i in range(needed)]
    return [",".join(ids[i * per_engine : (i + 1) * per_engine]) for i in range(count)]


class Tail:
    """Counts the whole lines appended to a file since it was opened (the progress of one writer)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.partial = b""

    def read(self) -> list[bytes]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return lines


def supervise(args: argparse.Namespace, lock: int) -> int:
    from worker.config import get_settings

    try:
        leftovers = leftover_shards(args.output)
        if leftovers:
            merged = merge_shards(args.output, leftovers, args.id_field)
            log.info("merged %d lines from %d shard files of an earlier run", merged, len(leftovers))
        if args.retry_errors:
            log.info(
                "--retry-errors: %d error lines removed; their keys run again", drop_errors(args.output, args.id_field)
            )
        before = scan(args.output, args.id_field)
    except OutputFileError as exc:
        log.error("%s", exc)
        return 2
    if before.torn_bytes:
        log.warning("the output ended in a half-written line (%d bytes, a crash); cut off, redone", before.torn_bytes)
    duplicates = Duplicates()
    total = todo = 0
    for entry in entries(args, duplicates):
        total += 1
        todo += entry.key not in before.keys
    if duplicates.lines:
        log.warning("manifest: %s", duplicates.summary())
    log.info("manifest: %d keys, %d already in %s, %d to do", total, total - todo, args.output, todo)
    if todo == 0:
        return 0

    settings = get_settings()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if args.gpus is None:
        args.gpus = max(1, visible_gpus(visible) // settings.tensor_parallel_size)
    groups = device_groups(args.gpus, settings.tensor_parallel_size, visible)
    targets = [args.output] if args.gpus == 1 else [shard_path(args.output, i, args.gpus) for i in range(args.gpus)]
    tails = [Tail(path) for path in targets]
    logs = [args.output.with_name(f"{args.output.name}.worker-{i}.log") for i in range(args.gpus)]
    children = [_start_worker(args, i, group, logs[i], lock) for i, group in enumerate(groups)]
    where = f" on CUDA_VISIBLE_DEVICES {', '.join(groups)}" if args.gpus > 1 else ""
    log.info("%d engine process(es) started%s; logs: %s", len(children), where, ", ".join(map(str, logs)))

    interrupted = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        interrupted = True
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    counts: Counter[str] = Counter()
    bar = _progress_bar(todo, disabled=args.no_progress)
    first_at = last_at = 0.0
    while True:
        running = [child.poll() is None for child in children]
        for tail in tails:
            for raw in tail.read():
                error_type = outcome_of(raw).error_type
                counts[error_type or "ok"] += 1
                last_at = time.perf_counter()
                first_at = first_at or last_at
                bar.update(1)
                bar.set_postfix(failed=sum(counts.values()) - counts["ok"], refresh=False)
        if not any(running):
            break
        time.sleep(0.5)
    bar.close()
    for i, child in enumerate(children):
        _reap_group(child)
        if child.returncode != 0:
            log.error(
                "engine process %d exited with %s; last lines of %s:\n%s",
                i,
                child.returncode,
                logs[i],
                _tail_of(logs[i]),
            )
    if args.gpus > 1:
        merge_shards(args.output, [t for t in targets if t.exists()], args.id_field)
    after = scan(args.output, args.id_field)
    left = sum(1 for entry in entries(args) if entry.key not in after.keys)
    done_now = sum(counts.values())
    rate = (done_now - 1) / (last_at - first_at) if done_now > 1 and last_at > first_at else 0.0
    errors = {k: v for k, v in counts.items() if k != "ok"}
    log.info(
        "%d lines written (%d captions, errors: %s), %.2f videos/s after the first; %s keys left%s",
        done_now,
        counts["ok"],
        json.dumps(errors) if errors else "none",
        rate,
        left,
        "; rerun the same command to finish them" if left else "",
    )
    if interrupted:
        return 130
    return EXIT_UNFINISHED if left else 0


def _start_worker(
    args: argparse.Namespace, index: int, devices: str, log_path: Path, lock: int
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "worker.bulk",
        "--input",
        str(args.input),
        "--output",
        str(args.output),
        "--id-field",
        args.id_field,
        "--video-field",
        args.video_field,
        "--defaults",
        json.dumps(args.defaults),
        "--fsync-seconds",
        str(args.fsync_seconds),
        "--worker-shard",
        f"{index}/{args.gpus}",
        "--supervisor-pid",
        str(os.getpid()),
    ]
    if args.concurrency is not None:
        argv += ["--concurrency", str(args.concurrency)]
    for root in args.media_root:
        argv += ["--media-root", str(root)]
    env = dict(os.environ)
    if args.gpus > 1:
        env["CUDA_VISIBLE_DEVICES"] = devices
    with log_path.open("ab") as out:
        # Own process group: the supervisor can stop the engine's helper processes with it when a worker
        # dies without cleaning up after itself.
        return subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,
            pass_fds=(lock,),
        )


def _reap_group(child: subprocess.Popen[bytes]) -> None:
    """Wait for a worker, then for what it left in its process group (the engine core it started);
    kill what is still there after a grace period (a worker killed outright cannot stop it)."""
    child.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(child.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)


def _tail_of(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _progress_bar(total: int, *, disabled: bool) -> Any:
    from tqdm import tqdm

    # tqdm's rate is videos/s (unit "video"), smoothed over recent updates, and its ETA follows from it.
    return tqdm(total=total, unit="video", dynamic_ncols=True, smoothing=0.05, disable=disabled)


@contextlib.contextmanager
def _only_run_on(output: Path) -> Iterator[int | None]:
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
    if args.worker_shard:
        return run_worker(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s bulk: %(message)s")
    with _only_run_on(args.output) as lock:
        if lock is None:
            log.error("another bulk run is writing %s; wait for it or stop it", args.output)
            return 2
        if args.endpoint:
            from worker.bulk.client import run_client

            return asyncio.run(run_client(args))
        return supervise(args, lock)

