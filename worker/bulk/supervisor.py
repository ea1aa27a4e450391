"""The local bulk run's supervisor: starts one engine process per GPU group, shows their progress and merges
their shard files, holding no engine itself so that killing it (even with SIGKILL) stops them cleanly."""

# Why processes and not vLLM's data_parallel_size: every decode, prompt and multimodal preprocessing of a
# job runs in the process that owns the engine front end; one process per GPU splits that CPU work too,
# and needs nothing of vLLM beyond what the serverless worker already uses. Each engine process dies with
# the supervisor through the parent death signal (shard.py), and a rerun resumes.

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import FrameType

from worker.api.wire import error_type
from worker.bulk.common import EXIT_UNFINISHED, entries, log, progress_bar
from worker.bulk.manifest import Duplicates
from worker.bulk.output import OutputFileError, drop_errors, leftover_shards, merge_shards, scan, shard_path


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


def outcome_type(raw: bytes) -> str | None:
    """A finished output line's error type (None for a result), for the counts and the progress bar."""
    try:
        return error_type(json.loads(raw))
    except ValueError:
        return "?"


def supervise(args: argparse.Namespace, lock: int) -> int:
    """Run the manifest's remaining keys on the local engine processes; the run's exit status."""
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
    if args.devices is not None:
        # The devices named (torchrun style): one engine per TENSOR_PARALLEL_SIZE of them.
        per_engine = settings.tensor_parallel_size
        if len(args.devices) % per_engine:
            named, count = ",".join(args.devices), len(args.devices)
            log.error("--gpus %s: %d devices, not a multiple of TENSOR_PARALLEL_SIZE %d", named, count, per_engine)
            return 2
        visible = ",".join(args.devices)
        args.gpus = len(args.devices) // per_engine
    elif args.gpus is None:
        args.gpus = max(1, visible_gpus(visible) // settings.tensor_parallel_size)
    groups = device_groups(args.gpus, settings.tensor_parallel_size, visible)
    targets = [args.output] if args.gpus == 1 else [shard_path(args.output, i, args.gpus) for i in range(args.gpus)]
    tails = [Tail(path) for path in targets]
    logs = [args.output.with_name(f"{args.output.name}.worker-{i}.log") for i in range(args.gpus)]
    children = [start_shard(args, i, group, logs[i], lock) for i, group in enumerate(groups)]
    where = f" on CUDA_VISIBLE_DEVICES {', '.join(groups)}" if args.gpus > 1 or args.devices else ""
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
    bar = progress_bar(todo, disabled=args.no_progress)
    first_at = last_at = 0.0
    while True:
        running = [child.poll() is None for child in children]
        for tail in tails:
            for raw in tail.read():
                counts[outcome_type(raw) or "ok"] += 1
                last_at = time.perf_counter()
                first_at = first_at or last_at
                bar.update(1)
                bar.set_postfix(failed=sum(counts.values()) - counts["ok"], refresh=False)
        if not any(running):
            break
        time.sleep(0.5)
    bar.close()
    for i, child in enumerate(children):
        reap_group(child)
        if child.returncode != 0:
            log.error(
                "engine process %d exited with %s; last lines of %s:\n%s",
                i,
                child.returncode,
                logs[i],
                tail_of(logs[i]),
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


def start_shard(
    args: argparse.Namespace, index: int, devices: str, log_path: Path, lock: int
) -> subprocess.Popen[bytes]:
    """Start engine process ``index`` as ``python -m worker.bulk ... --worker-shard INDEX/COUNT``."""
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
        "--extra-fields",
        args.extra_fields,
        "--fsync-seconds",
        str(args.fsync_seconds),
        "--worker-shard",
        f"{index}/{args.gpus}",
        "--supervisor-pid",
        str(os.getpid()),
    ]
    if args.concurrency is not None:
        argv += ["--concurrency", str(args.concurrency)]
    if args.raw:
        argv.append("--raw")
    for root in args.media_root:
        argv += ["--media-root", str(root)]
    env = dict(os.environ)
    if devices:  # one engine without a device list: the environment's own value (or none)
        env["CUDA_VISIBLE_DEVICES"] = devices
    with log_path.open("ab") as out:
        # Own process group: the supervisor can stop the engine's helper processes with it when a worker
        # dies without cleaning up after itself. The lock travels along (cli.py, only_run_on).
        return subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            process_group=0,
            pass_fds=(lock,),
        )


def reap_group(child: subprocess.Popen[bytes]) -> None:
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


def tail_of(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
