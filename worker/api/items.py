"""The parts of a job input that are objects of their own: a batch item carrying its own prompt and sampling
(Tarsier2's ``video_configs``), and an earlier job's segments given as context for a follow-up question.
worker/api/schema.py's CaptionRequest holds them and checks how they fit the rest of the job."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from annotated_types import Len
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from worker.api.media_fields import (
    SOURCE_FIELDS,
    MediaSource,
    MediaStr,
    MediaType,
    NonEmptyStr,
    PathStr,
    PromptStr,
    UrlStr,
    source_from,
)

Mode = Literal["single", "chunked", "auto"]
# The options a batch item may set for itself; the job's own values are the defaults.
ITEM_OPTIONS = ("prompt", "fps", "max_frames", "mode", "min_fps", "chunk_seconds")
MAX_CONTEXT_SEGMENTS = 4096
DEFAULT_MAX_VIDEO_SECONDS = 3 * 3600.0  # MAX_VIDEO_SECONDS' default (worker/config.py)


def max_frames_limit(value: int | None, info: ValidationInfo) -> int | None:
    limit = (info.context or {}).get("max_frames_limit", 100)
    if value is not None and value > limit:
        raise ValueError(f"must be at most {limit} (MAX_FRAMES_LIMIT of this deployment)")
    return value


def max_seconds_limit(value: float | None, info: ValidationInfo) -> float | None:
    limit = (info.context or {}).get("max_video_seconds", DEFAULT_MAX_VIDEO_SECONDS)
    if value is not None and value > limit:
        raise ValueError(f"must be at most {limit:g} (MAX_VIDEO_SECONDS of this deployment)")
    return value


def auto_when_min_fps(data: Any) -> Any:
    """``min_fps`` only means something to mode "auto": given without a mode, it asks for that mode."""
    if isinstance(data, dict) and "min_fps" in data and "mode" not in data:
        return data | {"mode": "auto"}
    return data


class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    # "question": the word of Tarsier2's video_configs/image_configs.
    prompt: PromptStr | None = Field(None, validation_alias=AliasChoices("prompt", "question"))

    @model_validator(mode="after")
    def _one_source(self) -> _Item:
        given = [name for name in SOURCE_FIELDS if getattr(self, name, None)]
        if len(given) != 1:
            names = ", ".join(name for name in SOURCE_FIELDS if name in type(self).model_fields)
            raise ValueError(f"give exactly one of {names}" + (f" (got {', '.join(given)})" if given else ""))
        return self

    @property
    def source(self) -> MediaSource:
        name = next(name for name in SOURCE_FIELDS if getattr(self, name, None))
        return source_from(name, getattr(self, name))

    def options(self) -> dict[str, Any]:
        """The job options this item sets for itself."""
        return {name: getattr(self, name) for name in ITEM_OPTIONS if getattr(self, name, None) is not None}


class VideoItem(_Item):
    """One item of ``videos`` given as an object: its video and, optionally, its own options."""

    video: MediaStr | None = None
    video_url: UrlStr | None = None
    video_path: PathStr | None = None
    video_base64: NonEmptyStr | None = None
    fps: float | None = Field(None, ge=0.1, le=30.0, allow_inf_nan=False)
    max_frames: int | None = Field(None, ge=1)
    mode: Mode | None = None
    min_fps: float | None = Field(None, ge=0.1, le=30.0, allow_inf_nan=False)
    chunk_seconds: float | None = Field(None, ge=1.0, le=3600.0, allow_inf_nan=False)

    _max_frames = field_validator("max_frames")(max_frames_limit)
    _auto = model_validator(mode="before")(auto_when_min_fps)


class ImageItem(_Item):
    """One item of ``images`` given as an object: its image and, optionally, its own prompt."""

    image: MediaStr | None = None
    image_url: UrlStr | None = None
    image_path: PathStr | None = None
    image_base64: NonEmptyStr | None = None


def _shape(value: Any) -> str:
    # Tags with a hyphen: worker/api/schema.py leaves them out of the field names it reports.
    return "as-string" if isinstance(value, str) else "as-object"


VideoEntry = Annotated[
    Union[Annotated[MediaStr, Tag("as-string")], Annotated[VideoItem, Tag("as-object")]], Discriminator(_shape)
]
ImageEntry = Annotated[
    Union[Annotated[MediaStr, Tag("as-string")], Annotated[ImageItem, Tag("as-object")]], Discriminator(_shape)
]


def entry_source(entry: str | _Item, media_type: MediaType) -> MediaSource:
    """The media of one batch entry, a string (read by classify_video's rules) or an item."""
    if isinstance(entry, str):
        return source_from(media_type, entry)
    return entry.source


class ContextSegment(BaseModel):
    """A timestamped caption of an earlier job (one of its ``segments``); its other fields are not needed."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    start: float = Field(ge=0.0, allow_inf_nan=False)
    end: float = Field(ge=0.0, allow_inf_nan=False)
    caption: PromptStr

    @model_validator(mode="after")
    def _ordered(self) -> ContextSegment:
        if self.end < self.start:
            raise ValueError("end must not be before start")
        return self


class _EarlierVideo(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    duration: float = Field(ge=0.0, allow_inf_nan=False)


class _EarlierMetadata(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    video: _EarlierVideo | None = None


class EarlierResult(BaseModel):
    """A whole earlier result: its ``segments`` (chunked), else its caption standing for the whole video."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    caption: PromptStr
    segments: list[ContextSegment] | None = Field(None, min_length=1, max_length=MAX_CONTEXT_SEGMENTS)
    metadata: _EarlierMetadata | None = None

    def timeline(self) -> list[ContextSegment]:
        if self.segments:
            return list(self.segments)
        video = self.metadata.video if self.metadata is not None else None
        duration = video.duration if video is not None else 0.0
        return [ContextSegment(start=0.0, end=duration, caption=self.caption)]


def _context_shape(value: Any) -> str:
    return "segment-list" if isinstance(value, list) else "earlier-result"


Context = Annotated[
    Union[
        Annotated[list[ContextSegment], Len(1, MAX_CONTEXT_SEGMENTS), Tag("segment-list")],
        Annotated[EarlierResult, Tag("earlier-result")],
    ],
    Discriminator(_context_shape),
]


def context_timeline(context: list[ContextSegment] | EarlierResult) -> list[ContextSegment]:
    """The timestamped captions a context gives, in time order."""
    segments = context.timeline() if isinstance(context, EarlierResult) else list(context)
    return sorted(segments, key=lambda s: (s.start, s.end))
