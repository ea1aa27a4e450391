"""The bulk output file: JSONL, one line per finished manifest key, appended as jobs finish, written so that
a crash or power loss at any point costs at most the last few seconds of work, never the file."""

# Crash safety rests on three rules:
# - a line is written with one write on an O_APPEND descriptor and counts as done only once its newline
#   is there; a crash leaves at most a torn last line, which scan cuts off (that key is redone);
# - lines are fsync'd every few seconds and at the end, so a power loss costs seconds of work, not the
#   file (what the disk lost is, again, a torn or missing tail);
# - shard files of a multi-GPU run are merged by appending the lines whose keys the output lacks, then
#   deleting the shard: a crash in between leaves duplicates only in the shard, which the next merge skips.

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from worker.bulk.manifest import line_key


class OutputFileError(Exception):
    """The output file holds something this tool did not write; it is left untouched."""


@dataclass
class Scan:
    """What an output file already holds: finished keys and the error type of each failed one."""

    keys: set[str] = field(default_factory=set)
    errors: dict[str, str] = field(default_factory=dict)
    torn_bytes: int = 0  # cut off the end: a line a crash left half-written


def record_key(record: dict[str, Any], id_field: str) -> str | None:
    """The manifest key an output line answers (keyless manifest lines are keyed by line number)."""
    value = record.get(id_field)
    if value is None:
        line = record.get("line")
        return line_key(line) if isinstance(line, int) else None
    return str(value)


def _parse(raw: bytes, id_field: str) -> tuple[str, dict[str, Any]] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict) or ("result" not in record and "error" not in record):
        return None
    key = record_key(record, id_field)
    return (key, record) if key is not None else None


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(offset, line with its newline) for every line; the last may lack its newline."""
    offset = 0
    with path.open("rb") as f:
        for raw in f:
            yield offset, raw
            offset += len(raw)


def scan(path: Path, id_field: str, *, repair: bool = True) -> Scan:
    """Read ``path``'s finished keys. A tail that is not whole lines of ours (a crash mid-write, or zeros
    a power loss left) is truncated when ``repair``; a bad line *followed by good ones* means the file is
    not a bulk output, and nothing is touched."""
    result = Scan()
    if not path.exists():
        return result
    good_end = 0
    bad_at: int | None = None
    for offset, raw in _lines(path):
        parsed = _parse(raw, id_field) if raw.endswith(b"\n") else None
        if parsed is None:
            if bad_at is None:
                bad_at = offset
            continue
        if bad_at is not None:
            raise OutputFileError(
                f"{path}: byte {bad_at} starts a line that is not a bulk output record, and records follow it; "
                "is this the right --output (and --id-field)?"
            )
        key, record = parsed
        result.keys.add(key)
        if "error" in record:
            error = record["error"]
            result.errors[key] = error.get("type", "") if isinstance(error, dict) else ""
        good_end = offset + len(raw)
    size = path.stat().st_size
    if good_end < size:
        result.torn_bytes = size - good_end
        if repair:
            with path.open("r+b") as f:
                f.truncate(good_end)
                os.fsync(f.fileno())
    return result


def encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


class OutputWriter:
    """Appends records, one ``write`` each; ``sync`` makes them durable (call it off the event loop)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.written = 0
        self.synced_at = time.monotonic()

    def write(self, record: dict[str, Any]) -> None:
        self.write_raw(encode(record))

    def write_raw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            # A regular file takes the whole buffer at once in practice; the loop covers a short write.
            view = view[os.write(self._fd, view) :]
        self.written += 1

    def sync(self) -> None:
        os.fsync(self._fd)
        self.synced_at = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shard_path(output: Path, index: int, count: int) -> Path:
    return output.with_name(f"{output.name}.shard-{index}-of-{count}")


def leftover_shards(output: Path) -> list[Path]:
    """Shard files a multi-GPU run left behind (killed before it merged them), any shard count."""
    return sorted(output.parent.glob(f"{_glob_escape(output.name)}.shard-*-of-*"))


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def merge_shards(output: Path, shards: list[Path], id_field: str) -> int:
    """Append to ``output`` the shard lines whose keys it lacks, then delete the shards. Returns the lines
    appended. Safe to interrupt anywhere and run again."""
    have = scan(output, id_field).keys
    appended = 0
    with OutputWriter(output) as writer:
        for shard in shards:
            scan(shard, id_field)  # cut a torn tail off the shard first
            for _, raw in _lines(shard):
                parsed = _parse(raw, id_field)
                if parsed is not None and parsed[0] not in have:
                    writer.write_raw(raw)
                    have.add(parsed[0])
                    appended += 1
            writer.sync()  # the shard's lines are durable in the output before the shard goes
            shard.unlink()
    _sync_dir(output.parent)
    return appended


def drop_errors(output: Path, id_field: str) -> int:
    """Rewrite ``output`` without its error lines, so their keys run again (``--retry-errors``). The new
    file replaces the old atomically: a crash leaves one or the other. Returns the lines dropped."""
    if not output.exists():
        return 0
    scan(output, id_field)
    dropped = 0
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    os.fchmod(fd, 0o644)
    try:
        with os.fdopen(fd, "wb") as new:
            for _, raw in _lines(output):
                parsed = _parse(raw, id_field)
                if parsed is not None and "error" in parsed[1]:
                    dropped += 1
                    continue
                new.write(raw)
            new.flush()
            os.fsync(new.fileno())
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_dir(output.parent)
    return dropped


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
