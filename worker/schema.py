"""The job input and output contract.

Input validation is declarative (pydantic field constraints); ``parse_request`` turns pydantic's report
into one ``ValidationError`` that names every bad field. The media-source rules live here too, because
they are part of what a valid request is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, field_validator, model_validator

from worker.errors import ValidationError

DEFAULT_PROMPT = "Describe this video in detail."
DEFAULT_IMAGE_PROMPT = "Describe this image in detail."
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


NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
StopStr = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class CaptionRequest(BaseModel):
    """``job["input"]``. Unknown fields are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    video: NonEmptyStr | None = Field(None, description="base64, data: URI, absolute path or http(s) URL")
    video_url: NonEmptyStr | None = None
    video_path: NonEmptyStr | None = None
    video_base64: NonEmptyStr | None = None
    image: NonEmptyStr | None = Field(None, description="one still image instead of a video; same rules")
    image_url: NonEmptyStr | None = None
    image_path: NonEmptyStr | None = None
    image_base64: NonEmptyStr | None = None

    prompt: Annotated[str, StringConstraints(min_length=1, max_length=16384)] | None = Field(
        None, description=f"default: {DEFAULT_PROMPT!r} ({DEFAULT_IMAGE_PROMPT!r} for an image)"
    )
    fps: float = Field(1.0, ge=0.1, le=30.0, allow_inf_nan=False)
    max_frames: int = Field(30, ge=1, description="upper bound: env MAX_FRAMES_LIMIT (default 100)")
    temperature: float = Field(0.7, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(0.9, gt=0.0, le=1.0, allow_inf_nan=False)
    max_tokens: int = Field(512, ge=1, le=2048)
    process_audio: bool = False
    top_k: int | None = Field(None, ge=1, le=1000)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: StopStr | list[StopStr] | None = Field(None, max_length=16)

    @field_validator("max_frames")
    @classmethod
    def _max_frames_limit(cls, value: int, info: ValidationInfo) -> int:
        limit = (info.context or {}).get("max_frames_limit", 100)
        if value > limit:
            raise ValueError(f"must be at most {limit} (MAX_FRAMES_LIMIT of this deployment)")
        return value

    @field_validator("video_url", "image_url")
    @classmethod
    def _url_scheme(cls, value: str | None) -> str | None:
        if value is not None and classify_video(value).kind != "url":
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("video_path", "image_path")
    @classmethod
    def _absolute_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value

    @field_validator("video", "image")
    @classmethod
    def _classifiable(cls, value: str | None) -> str | None:
        if value is not None:
            classify_video(value)  # raises ValueError for a rejected scheme or data URI
        return value

    @model_validator(mode="after")
    def _exactly_one_source(self) -> CaptionRequest:
        given = [name for name in SOURCE_FIELDS if getattr(self, name)]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of {', '.join(SOURCE_FIELDS)}" + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def source(self) -> MediaSource:
        name = next(name for name in SOURCE_FIELDS if getattr(self, name))  # exactly one, see above
        media_type, kind = SOURCE_FIELDS[name]
        value: str = getattr(self, name)
        if kind is None:
            found = classify_video(value)
            return MediaSource(found.kind, found.value, media_type)
        return MediaSource(kind, strip_data_uri(value) if kind == "base64" else value, media_type)

    @property
    def media_type(self) -> MediaType:
        return self.source.media_type

    @property
    def text(self) -> str:
        """The prompt, or the default for the media type."""
        if self.prompt is not None:
            return self.prompt
        return DEFAULT_IMAGE_PROMPT if self.media_type == "image" else DEFAULT_PROMPT

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


def _field_name(loc: tuple[int | str, ...]) -> str:
    # pydantic puts union-member tags ("list[constrained-str]") in the location; callers only need the
    # field and the list index.
    if not loc:
        return "input"
    return str(loc[0]) + "".join(f"[{part}]" for part in loc[1:] if isinstance(part, int))


def _short(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 80 else text[:77] + "..."


def parse_request(raw: Any, *, max_frames_limit: int) -> CaptionRequest:
    """Validate ``job["input"]``; every problem is listed in one ``ValidationError``."""
    if not isinstance(raw, dict):
        raise ValidationError(f"input must be a JSON object, got {type(raw).__name__}")
    try:
        return CaptionRequest.model_validate(raw, context={"max_frames_limit": max_frames_limit})
    except pydantic.ValidationError as exc:
        problems: dict[str, dict[str, Any]] = {}
        for err in exc.errors(include_url=False):
            field = _field_name(err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            if field in problems:  # a union field fails once per member: one entry, all reasons
                problems[field]["message"] += f" or {message[0].lower()}{message[1:]}"
                continue
            problems[field] = {"field": field, "message": message}
            if err["type"] != "missing" and field != "input":
                problems[field]["input"] = _short(err.get("input"))
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems.values())
        raise ValidationError(f"invalid input: {summary}", details=list(problems.values())) from None


class VideoInfo(BaseModel):
    """The source media as found (for an image: its size and format, duration 0)."""

    duration: float
    width: int
    height: int
    fps: float | None
    has_audio: bool
    rotation: int = 0
    codec: str | None = None
    audio_seconds: float = 0.0


class Timings(BaseModel):
    fetch: float
    decode: float
    inference: float


class CaptionMetadata(BaseModel):
    media_type: MediaType
    num_frames: int
    fps_used: float
    audio_processed: bool
    audio_seconds: float = Field(0.0, description="seconds of sound given to the model")
    audio_tokens: int = Field(0, description="prompt tokens the model spent on that sound")
    processing_time: float
    frame_timestamps: list[float]
    frame_size: tuple[int, int] = Field(description="(width, height) of the frames given to the model")
    video: VideoInfo
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    sampling: dict[str, Any] = Field(description="sampling parameters in effect (job's, else the model's defaults)")
    timings: Timings
    warnings: list[str]


class CaptionResult(BaseModel):
    caption: str
    metadata: CaptionMetadata
