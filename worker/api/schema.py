"""The job input contract (its answer: worker/api/result.py).

Input validation is declarative (pydantic field constraints); ``parse_request`` turns pydantic's report
into one ``ValidationError`` that names every bad field. The media-source rules live here too, because
they are part of what a valid request is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import jsonschema
import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from worker.api.errors import ValidationError

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


def _classifiable(value: str) -> str:
    classify_video(value)  # raises ValueError for a rejected scheme or data URI
    return value


NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
MediaStr = Annotated[str, StringConstraints(min_length=1), AfterValidator(_classifiable)]
StopStr = Annotated[str, StringConstraints(min_length=1, max_length=256)]
PromptStr = Annotated[str, StringConstraints(min_length=1, max_length=16384)]


class ChatMessage(BaseModel):
    """One OpenAI-style turn of ``messages``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    role: Literal["system", "user", "assistant"]
    content: PromptStr


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
    videos: list[MediaStr] | None = Field(None, min_length=1, description="several videos, one result each")
    images: list[MediaStr] | None = Field(None, min_length=1, description="several images, one result each")

    prompt: PromptStr | None = Field(
        None, description=f"default: {DEFAULT_PROMPT!r} ({DEFAULT_IMAGE_PROMPT!r} for an image)"
    )
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, max_length=64, description="a conversation instead of prompt; media in the first user turn"
    )
    mode: Literal["single", "chunked"] = "single"
    chunk_seconds: float | None = Field(None, ge=1.0, le=3600.0, allow_inf_nan=False)
    combine: Literal["summary", "concat"] | None = Field(None, description='chunked mode; default "summary"')
    stream: bool = False
    json_schema: dict[str, Any] | None = Field(None, description="JSON Schema the caption must follow")
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
        return _classifiable(value) if value is not None else None

    @field_validator("videos", "images")
    @classmethod
    def _batch_size(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        limit = (info.context or {}).get("max_batch_items", 32)
        if value is not None and len(value) > limit:
            raise ValueError(f"at most {limit} items per job (MAX_BATCH_ITEMS of this deployment)")
        return value

    @field_validator("messages")
    @classmethod
    def _conversation(cls, value: list[ChatMessage] | None) -> list[ChatMessage] | None:
        if value is None:
            return None
        if any(m.role == "system" for m in value[1:]):
            raise ValueError("a system message may only come first")
        if value[-1].role != "user":
            raise ValueError("the last message must be the user's (the model answers it)")
        return value

    @field_validator("json_schema")
    @classmethod
    def _json_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            # The metaschema named by "$schema" (default: the latest draft) catches malformed schemas here,
            # before any download; what the engine's grammar compiler cannot handle is checked against the
            # engine before the media is fetched (pipeline).
            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as exc:
                where = "/".join(str(p) for p in exc.path)
                raise ValueError(f"not a valid JSON Schema: {exc.message}" + (f" (at {where})" if where else ""))
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CaptionRequest:
        given = [name for name in (*SOURCE_FIELDS, *BATCH_FIELDS) if getattr(self, name)]
        if len(given) != 1:
            names = ", ".join((*SOURCE_FIELDS, *BATCH_FIELDS))
            raise ValueError(f"give exactly one of {names}" + (f" (got {', '.join(given)})" if given else ""))
        if self.prompt is not None and self.messages is not None:
            raise ValueError("give prompt or messages, not both")
        if self.mode == "single" and (self.chunk_seconds is not None or self.combine is not None):
            raise ValueError('chunk_seconds and combine apply to mode "chunked" only')
        if self.mode == "chunked" and self.media_type == "image":
            raise ValueError('mode "chunked" is for videos')
        return self

    @property
    def is_batch(self) -> bool:
        return any(getattr(self, name) for name in BATCH_FIELDS)

    @property
    def sources(self) -> list[MediaSource]:
        """The job's media in input order: one, or the items of ``videos``/``images``."""
        for name, media_type in BATCH_FIELDS.items():
            values: list[str] | None = getattr(self, name)
            if values:
                return [_typed(classify_video(value), media_type) for value in values]
        name = next(name for name in SOURCE_FIELDS if getattr(self, name))  # exactly one, see above
        media_type, kind = SOURCE_FIELDS[name]
        value: str = getattr(self, name)
        if kind is None:
            return [_typed(classify_video(value), media_type)]
        return [MediaSource(kind, strip_data_uri(value) if kind == "base64" else value, media_type)]

    @property
    def source(self) -> MediaSource:
        return self.sources[0]

    @property
    def media_type(self) -> MediaType:
        for name, media_type in BATCH_FIELDS.items():
            if getattr(self, name):
                return media_type
        return SOURCE_FIELDS[next(name for name in SOURCE_FIELDS if getattr(self, name))][0]

    @property
    def chunk_length(self) -> float:
        """Seconds of video per chunk in chunked mode: ``chunk_seconds``, else what ``max_frames`` frames
        at ``fps`` span."""
        return self.chunk_seconds if self.chunk_seconds is not None else self.max_frames / self.fps

    @property
    def combine_method(self) -> Literal["summary", "concat"]:
        return self.combine or "summary"

    @property
    def text(self) -> str:
        """The request in words: the prompt, the last user turn of ``messages``, or the default."""
        if self.prompt is not None:
            return self.prompt
        if self.messages is not None:
            return next(m.content for m in reversed(self.messages) if m.role == "user")
        return DEFAULT_IMAGE_PROMPT if self.media_type == "image" else DEFAULT_PROMPT

    @property
    def conversation(self) -> list[ChatMessage]:
        """The turns to put to the model: ``messages``, or one user turn with the prompt."""
        return list(self.messages) if self.messages is not None else [ChatMessage(role="user", content=self.text)]

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


def _typed(source: MediaSource, media_type: MediaType) -> MediaSource:
    return MediaSource(source.kind, source.value, media_type)


def _field_name(loc: tuple[int | str, ...]) -> str:
    # pydantic puts union-member tags ("list[constrained-str]") in the location; callers only need the
    # field and the list index.
    if not loc:
        return "input"
    parts = [f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[1:] if _is_location(part)]
    return str(loc[0]) + "".join(parts)


def _is_location(part: int | str) -> bool:
    # Field names and list indices; union tags hold brackets or hyphens.
    return isinstance(part, int) or part.isidentifier()


def _short(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 80 else text[:77] + "..."


def parse_request(raw: Any, *, max_frames_limit: int, max_batch_items: int = 32) -> CaptionRequest:
    """Validate ``job["input"]``; every problem is listed in one ``ValidationError``."""
    if not isinstance(raw, dict):
        raise ValidationError(f"input must be a JSON object, got {type(raw).__name__}")
    context = {"max_frames_limit": max_frames_limit, "max_batch_items": max_batch_items}
    try:
        return CaptionRequest.model_validate(raw, context=context)
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
