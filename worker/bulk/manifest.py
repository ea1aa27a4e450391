"""Bulk manifests (README, "Bulk captioning"): JSONL lines turned into keyed job inputs, pure functions, so
that every line, even a malformed one, gets exactly one answer under a key that is stable across runs."""

# A line is a job input (the fields of job["input"]) plus its key under --id-field; the video may sit under
# another field (--video-field), and defaults fill what a line leaves out. With --extra-fields keep, the
# fields that are no job option (a dataset's "meta") travel to the output line instead of failing the job.
# A line that is not a JSON object, or has no usable key, is still an entry: its outcome is an error keyed
# by its line number.

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from worker.api.errors import ValidationError
from worker.api.schema import CaptionRequest
from worker.api.wire import error_payload

ExtraFields = Literal["error", "keep"]
# Fields of an output line; a kept manifest field of the same name would overwrite them.
OUTPUT_FIELDS = ("line", "result", "error", "raw")
JOB_OPTIONS = frozenset(CaptionRequest.model_fields)

# A key made from the video field (no id given) is used only while it is short enough to read: a path or
# URL. A base64 video needs an id.
MAX_DERIVED_KEY = 1024


@dataclass(frozen=True)
class Entry:
    """One manifest line. ``key`` identifies it across runs: the id (or the video path/URL when the line
    has no id), or ``line:N`` for a line that has neither. ``error`` is set when the line cannot become a
    job; then ``job_input`` is empty."""

    line: int  # 1-based
    key: str
    id_value: Any  # what the output line carries under the id field (None for a keyless line)
    job_input: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # kept fields that are no job option (--extra-fields)
    raw: Any = None  # the line as read (JSON), for --raw; None when it is not JSON


def line_key(line: int) -> str:
    return f"line:{line}"


def shard_of(key: str, shards: int) -> int:
    """The shard that owns ``key``: a stable hash (the same in every process and Python version, unlike
    ``hash``), so a restarted run with the same shard count gives every key to the same worker."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def parse_line(
    text: str,
    line: int,
    *,
    id_field: str,
    video_field: str,
    defaults: dict[str, Any],
    base_dir: Path,
    extra_fields: ExtraFields = "error",
) -> Entry:
    """One manifest line as an entry (never raises). ``extra_fields`` "keep": fields that are no job option
    go to ``Entry.extra`` (except near-misses of an option's name, which stay errors: a typo)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        return _bad(line, f"manifest line {line} is not JSON: {exc}")
    if not isinstance(raw, dict):
        return _bad(line, f"manifest line {line} must be a JSON object, got {type(raw).__name__}", raw)
    fields = dict(raw)
    id_value = fields.pop(id_field, None)
    if id_value is not None and (isinstance(id_value, bool) or not isinstance(id_value, (str, int))):
        return _bad(line, f"manifest line {line}: {id_field!r} must be a string or an integer", raw)
    if video_field != "video" and video_field in fields:
        if "video" in fields:
            return _bad(line, f"manifest line {line} has both {video_field!r} and 'video'", raw)
        fields["video"] = fields.pop(video_field)
    extra = split_extra(fields) if extra_fields == "keep" else {}
    clash = [name for name in extra if name in OUTPUT_FIELDS]
    if clash:
        return _bad(line, f"manifest line {line}: field {clash[0]!r} is a field of the output line; rename it", raw)
    if isinstance(fields.get("video"), str):
        fields["video"] = resolve_relative(fields["video"], base_dir)
    if id_value is None:
        derived = fields.get("video")
        if not isinstance(derived, str) or not derived or len(derived) > MAX_DERIVED_KEY:
            return _bad(
                line, f"manifest line {line} has no {id_field!r} and no {video_field!r} path or URL to key it by", raw
            )
        id_value = derived
    key = str(id_value)
    if not key:
        return _bad(line, f"manifest line {line}: {id_field!r} is empty", raw)
    return Entry(line=line, key=key, id_value=id_value, job_input=defaults | fields, extra=extra, raw=raw)


def split_extra(fields: dict[str, Any]) -> dict[str, Any]:
    """Remove from ``fields`` and return those that are no job option, in their order. A near-miss of an
    option's name (``max_frame``) stays, so the job's validation error names it rather than keep a typo."""
    extra = {}
    for name in list(fields):
        if name not in JOB_OPTIONS and not difflib.get_close_matches(name, JOB_OPTIONS, n=1, cutoff=0.8):
            extra[name] = fields.pop(name)
    return extra


def resolve_relative(value: str, base_dir: Path) -> str:
    """A relative path in the video field, read from the manifest's directory: the usual dataset layout.
    Anything else (absolute path, URL, data: URI, base64) keeps the worker's own rules; a value counts as
    a relative path only when that file exists, since base64 text can look like one."""
    if value.startswith("/") or "://" in value or value.lower().startswith("data:") or len(value) > 4096:
        return value
    candidate = base_dir / value
    try:
        return str(candidate.resolve()) if candidate.is_file() else value
    except OSError:
        return value


def read_manifest(
    path: Path,
    *,
    id_field: str = "id",
    video_field: str = "video",
    defaults: dict[str, Any] | None = None,
    extra_fields: ExtraFields = "error",
) -> Iterator[Entry]:
    """The manifest's entries in order; blank lines are skipped. Streams: the file is never held whole."""
    base_dir = path.resolve().parent
    with path.open("r", encoding="utf-8", errors="replace") as lines:
        for number, text in enumerate(lines, start=1):
            if text.strip():
                yield parse_line(
                    text,
                    number,
                    id_field=id_field,
                    video_field=video_field,
                    defaults=defaults or {},
                    base_dir=base_dir,
                    extra_fields=extra_fields,
                )


@dataclass
class Duplicates:
    """Keys given on more than one line; each is captioned once, for its first line."""

    lines: dict[str, list[int]] = field(default_factory=dict)

    def summary(self, limit: int = 10) -> str:
        shown = [f"{key!r} (lines {', '.join(map(str, lines))})" for key, lines in list(self.lines.items())[:limit]]
        more = f" and {len(self.lines) - limit} more" if len(self.lines) > limit else ""
        return f"{len(self.lines)} duplicate keys, each captioned once for its first line: {'; '.join(shown)}{more}"


def unique(entries: Iterator[Entry], duplicates: Duplicates) -> Iterator[Entry]:
    """``entries`` without repeated keys (the first line of a key wins); repeats land in ``duplicates``."""
    first: dict[str, int] = {}
    for entry in entries:
        if entry.key in first:
            duplicates.lines.setdefault(entry.key, [first[entry.key]]).append(entry.line)
            continue
        first[entry.key] = entry.line
        yield entry


def _bad(line: int, message: str, raw: Any = None) -> Entry:
    error = error_payload(ValidationError(message), debug=False)
    return Entry(line=line, key=line_key(line), id_value=None, error=error, raw=raw)
