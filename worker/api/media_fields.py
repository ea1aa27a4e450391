"""What names a job's media: the source fields, the rules that read a bare ``video``/``image`` string, and the
constrained strings of a job input. Shared by the request (worker/api/schema.py) and its batch items
(worker/api/items.py), so neither imports the other's internals."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import AfterValidator, StringConstraints

# Linux PATH_MAX. A `video` string starting with "/" is a path up to this length; longer ones are base64.
PATH_MAX = 4096
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_DATA_URI = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w-]+=[\w.-]+)*;base64,", re.IGNORECASE)

SourceKind = Literal["url", "path", "base64"]
MediaType = Literal["video", "image"]
# The fields that name the job's media: a bare one (classified by classify_video's rules) and three
# explicit ones per media type. Exactly one of them must be given.
SOURCE_FIELDS: dict[str, tuple[MediaType, SourceKind | None]] = {
    "video": ("video", None),
    "video_url": ("video", "url"),
    "video_path": ("video", "path"),
    "video_base64": ("video", "base64"),
    "image": ("image", None),
    "image_url": ("image", "url"),
    "image_path": ("image", "path"),
    "image_base64": ("image", "base64"),
}
# Several media in one job, each string read by classify_video's rules; they count as a source field.
BATCH_FIELDS: dict[str, MediaType] = {"videos": "video", "images": "image"}


@dataclass(frozen=True)
class MediaSource:
    kind: SourceKind
    value: str  # the URL, the path, or the base64 payload without any data: prefix
    media_type: MediaType = "video"

    def describe(self) -> str:
        """A log- and error-safe description (never the payload itself)."""
        if self.kind == "base64":
            return f"base64 ({len(self.value)} chars)"
        return f"{self.kind} {self.value[:200]!r}"


def strip_data_uri(value: str) -> str:
    match = _DATA_URI.match(value)
    return value[match.end() :] if match else value


def classify_video(value: str) -> MediaSource:
    """Decide what a bare ``video`` (or ``image``) string is. The rules, in order (README, "Media sources"):

    1. ``data:...;base64,`` prefix -> base64.
    2. ``http://`` / ``https://`` -> URL; any other ``scheme://`` is rejected.
    3. Starts with ``/`` and at most PATH_MAX characters -> absolute path. (Base64 may start with "/"
       too, but only when the first byte is 0xFC-0xFF, which no video container does; callers with such
       payloads use ``video_base64``.)
    4. Anything else -> base64.
    """
    if value.lower().startswith("data:"):
        if not _DATA_URI.match(value):
            raise ValueError("a data: URI must look like data:video/mp4;base64,<payload>")
        return MediaSource("base64", strip_data_uri(value))
    scheme = _SCHEME.match(value)
    if scheme:
        if scheme.group(1).lower() in ("http", "https"):
            return MediaSource("url", value)
        raise ValueError(f"URL scheme {scheme.group(1)!r} is not supported; use http(s)")
    if value.startswith("/") and len(value) <= PATH_MAX:
        return MediaSource("path", value)
    return MediaSource("base64", value)


def source_from(name: str, value: str, media_type: MediaType | None = None) -> MediaSource:
    """The source a field of SOURCE_FIELDS (or an item of a batch field, ``name`` "video"/"image") names."""
    field_type, kind = SOURCE_FIELDS[name]
    media_type = media_type or field_type
    if kind is None:
        found = classify_video(value)
        return MediaSource(found.kind, found.value, media_type)
    return MediaSource(kind, strip_data_uri(value) if kind == "base64" else value, media_type)


def classifiable(value: str) -> str:
    classify_video(value)  # raises ValueError for a rejected scheme or data URI
    return value


def http_url(value: str) -> str:
    if classify_video(value).kind != "url":
        raise ValueError("must be an http:// or https:// URL")
    return value


def absolute_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    return value


NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
MediaStr = Annotated[str, StringConstraints(min_length=1), AfterValidator(classifiable)]
UrlStr = Annotated[str, StringConstraints(min_length=1), AfterValidator(http_url)]
PathStr = Annotated[str, StringConstraints(min_length=1), AfterValidator(absolute_path)]
StopStr = Annotated[str, StringConstraints(min_length=1, max_length=256)]
PromptStr = Annotated[str, StringConstraints(min_length=1, max_length=16384)]
