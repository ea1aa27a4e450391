"""The job input contract (its answer: worker/api/result.py).

Input validation is declarative (pydantic field constraints); ``parse_request`` turns pydantic's report
into one ``ValidationError`` that names every bad field. The media-source rules (worker/api/media_fields.py)
and the object-valued fields (worker/api/items.py) are part of what a valid request is, checked here together.
"""

from __future__ import annotations

from typing import Any, Literal

import jsonschema
import pydantic
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from worker.api.commentary_rules import COMMENTARY, commentary_problems
from worker.api.errors import ValidationError
from worker.api.items import (
    DEFAULT_MAX_VIDEO_SECONDS,
    Context,
    ContextSegment,
    ImageEntry,
    Mode,
    VideoEntry,
    VideoItem,
    auto_when_min_fps,
    context_timeline,
    entry_source,
    max_frames_limit,
    max_seconds_limit,
)
from worker.api.media_fields import (
    BATCH_FIELDS,
    PATH_MAX,
    SOURCE_FIELDS,
    MediaSource,
    MediaStr,
    MediaType,
    NonEmptyStr,
    PathStr,
    PromptStr,
    SourceKind,
    StopStr,
    UrlStr,
    classify_video,
    source_from,
    strip_data_uri,
)
from worker.api.presets import TASKS, TaskName

# Re-exported: callers name the media types and source rules through the request contract.
__all__ = [
    "BATCH_FIELDS",
    "PATH_MAX",
    "SOURCE_FIELDS",
    "CaptionRequest",
    "ChatMessage",
    "MediaSource",
    "MediaType",
    "SourceKind",
    "classify_video",
    "parse_request",
    "strip_data_uri",
]

DEFAULT_PROMPT = "Describe this video in detail."
DEFAULT_IMAGE_PROMPT = "Describe this image in detail."
STREAMING_SETTING = "ENABLE_STREAMING"


class ChatMessage(BaseModel):
    """One OpenAI-style turn of ``messages``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    role: Literal["system", "user", "assistant"]
    content: PromptStr


class CaptionRequest(BaseModel):
    """``job["input"]``. Unknown fields are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    video: MediaStr | None = Field(None, description="base64, data: URI, absolute path or http(s) URL")
    video_url: UrlStr | None = None
    video_path: PathStr | None = None
    video_base64: NonEmptyStr | None = None
    image: MediaStr | None = Field(None, description="one still image instead of a video; same rules")
    image_url: UrlStr | None = None
    image_path: PathStr | None = None
    image_base64: NonEmptyStr | None = None
    videos: list[VideoEntry] | None = Field(
        None, min_length=1, description="several videos, one result each; an item may be an object with its own options"
    )
    images: list[ImageEntry] | None = Field(None, min_length=1, description="several images, one result each")
    context: Context | None = Field(
        None, description="an earlier job's segments (or whole result): the prompt is answered from them, no media"
    )
    task: TaskName | None = Field(None, description="a named prompt and json_schema (worker/api/presets.py)")

    prompt: PromptStr | None = Field(
        None, description=f"default: {DEFAULT_PROMPT!r} ({DEFAULT_IMAGE_PROMPT!r} for an image)"
    )
    messages: list[ChatMessage] | None = Field(
        None, min_length=1, max_length=64, description="a conversation instead of prompt; media in the first user turn"
    )
    mode: Mode | Literal["commentary"] = Field("single", description='"commentary": LiveCC\'s live commentary')
    min_fps: float | None = Field(None, ge=0.1, le=30.0, allow_inf_nan=False, description='mode "auto" (implies it)')
    chunk_seconds: float | None = Field(None, ge=1.0, le=3600.0, allow_inf_nan=False)
    combine: Literal["summary", "concat"] | None = Field(None, description='chunked mode; default "summary"')
    stream: bool = False
    json_schema: dict[str, Any] | None = Field(None, description="JSON Schema the caption must follow")
    fps: float = Field(1.0, ge=0.1, le=30.0, allow_inf_nan=False)
    max_frames: int = Field(30, ge=1, description="upper bound: env MAX_FRAMES_LIMIT (default 100)")
    temperature: float = Field(0.7, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(0.9, ge=0.0, le=1.0, allow_inf_nan=False, description="0: greedy (temperature 0)")
    max_tokens: int = Field(512, ge=1, le=2048)
    process_audio: bool = False
    max_seconds: float | None = Field(
        None, gt=0.0, allow_inf_nan=False, description="HLS streams: seconds to read; at most MAX_VIDEO_SECONDS"
    )
    top_k: int | None = Field(None, ge=1, le=1000)
    repetition_penalty: float | None = Field(None, gt=0.0, le=2.0, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    stop: StopStr | list[StopStr] | None = Field(None, max_length=16)

    _max_frames_limit = field_validator("max_frames")(max_frames_limit)
    _max_seconds_limit = field_validator("max_seconds")(max_seconds_limit)

    @field_validator("videos", "images")
    @classmethod
    def _batch_size(cls, value: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
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

    @model_validator(mode="before")
    @classmethod
    def _fill_in(cls, data: Any) -> Any:
        """A task's prompt and schema where the job gives none; mode "auto" where only ``min_fps`` asks for it."""
        data = auto_when_min_fps(data)
        task = data.get("task") if isinstance(data, dict) else None
        preset = TASKS.get(task) if isinstance(task, str) else None
        if preset is not None:
            if preset.json_schema is not None and "json_schema" not in data:
                data = data | {"json_schema": preset.json_schema}
            if preset.prompt is not None and "prompt" not in data and "messages" not in data and "context" not in data:
                data = data | {"prompt": preset.prompt}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> CaptionRequest:
        given = [name for name in (*SOURCE_FIELDS, *BATCH_FIELDS, "context") if getattr(self, name)]
        if len(given) != 1:
            names = ", ".join((*SOURCE_FIELDS, *BATCH_FIELDS, "context"))
            raise ValueError(f"give exactly one of {names}" + (f" (got {', '.join(given)})" if given else ""))
        if self.prompt is not None and self.messages is not None:
            raise ValueError("give prompt or messages, not both")
        preset = TASKS.get(self.task or "")
        if preset is not None and preset.json_schema is not None and self.json_schema != preset.json_schema:
            raise ValueError(f"task {self.task!r} brings its own json_schema: give one of them, not both")
        problems = self._context_problems() if self.context is not None else self._mode_problems()
        if self.mode == COMMENTARY and self.context is None:
            problems += commentary_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _context_problems(self) -> list[str]:
        """A context job has no media: media options would be silently ignored, so they are errors."""
        problems = [
            f"{name} does not apply to a context job (it has no media)"
            for name in ("chunk_seconds", "combine", "min_fps", "max_seconds")
            if getattr(self, name) is not None
        ]
        if self.mode != "single":
            problems.append(f'mode "{self.mode}" does not apply to a context job (it has no media)')
        if self.messages is not None:
            problems.append("a context job takes its question as prompt, not messages")
        return problems

    def _mode_problems(self) -> list[str]:
        """Chunking options that no video of the job would use would be silently ignored: errors instead."""
        problems = []
        if self.mode != "single" and self.media_type == "image":
            problems.append(f'mode "{self.mode}" is for videos')
        # The modes the job's videos run in: the job's, or in a batch each item's own (the job's by default).
        modes = set() if self.videos else {self.mode}
        for index, entry in enumerate(self.videos or ()):
            mode = entry.mode or self.mode if isinstance(entry, VideoItem) else self.mode
            modes.add(mode)
            if isinstance(entry, VideoItem) and entry.chunk_seconds is not None and mode != "chunked":
                problems.append(f'videos[{index}]: chunk_seconds applies to mode "chunked" only')
            if isinstance(entry, VideoItem) and entry.min_fps is not None and mode != "auto":
                problems.append(f'videos[{index}]: min_fps applies to mode "auto" only')
        if self.chunk_seconds is not None and "chunked" not in modes:
            problems.append('chunk_seconds applies to mode "chunked" only')
        if self.combine is not None and modes == {"single"}:
            problems.append('combine applies to modes "chunked" and "auto" only')
        if self.min_fps is not None and "auto" not in modes:
            problems.append('min_fps applies to mode "auto" only')
        if self.max_seconds is not None and not any(s.kind == "url" and s.media_type == "video" for s in self.sources):
            problems.append("max_seconds applies to HLS streams: a video URL (.m3u8, or a playlist by its content)")
        return problems

    @property
    def is_batch(self) -> bool:
        return any(getattr(self, name) for name in BATCH_FIELDS)

    @property
    def sources(self) -> list[MediaSource]:
        """The job's media in input order: one, the items of ``videos``/``images``, or none (a context job)."""
        for name, media_type in BATCH_FIELDS.items():
            entries: list[Any] | None = getattr(self, name)
            if entries:
                return [entry_source(entry, media_type) for entry in entries]
        if self.context is not None:
            return []
        name = next(name for name in SOURCE_FIELDS if getattr(self, name))  # exactly one, see above
        return [source_from(name, getattr(self, name))]

    @property
    def source(self) -> MediaSource:
        return self.sources[0]

    @property
    def media_type(self) -> MediaType:
        for name, media_type in BATCH_FIELDS.items():
            if getattr(self, name):
                return media_type
        if self.context is not None:
            return "video"  # the captions describe a video
        return SOURCE_FIELDS[next(name for name in SOURCE_FIELDS if getattr(self, name))][0]

    def for_item(self, index: int) -> CaptionRequest:
        """The request batch item ``index`` runs with: the job's options, with those the item sets itself.
        An item's prompt replaces the job's prompt or messages. (Checked together when the job was read.)"""
        entries: list[Any] = self.videos or self.images or []
        entry = entries[index]
        if isinstance(entry, str):
            return self
        options = entry.options()
        if "prompt" in options:
            options["messages"] = None
        return self.model_copy(update=options)

    @property
    def auto_min_fps(self) -> float:
        """Mode "auto": the rate the video must be seen at, at least (``min_fps``, else ``fps``)."""
        return self.min_fps if self.min_fps is not None else self.fps

    @property
    def chunk_length(self) -> float:
        """Seconds of video per chunk in chunked mode: ``chunk_seconds``, else what ``max_frames`` frames
        at ``fps`` span (at ``min_fps`` in mode "auto")."""
        if self.chunk_seconds is not None:
            return self.chunk_seconds
        return self.max_frames / (self.auto_min_fps if self.mode == "auto" else self.fps)

    @property
    def combine_method(self) -> Literal["summary", "concat"]:
        return self.combine or "summary"

    @property
    def context_segments(self) -> list[ContextSegment]:
        """A context job's timestamped captions, in time order (empty for other jobs)."""
        return context_timeline(self.context) if self.context is not None else []

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


def parse_request(
    raw: Any,
    *,
    max_frames_limit: int,
    max_batch_items: int = 32,
    streaming: bool = True,
    max_video_seconds: float = DEFAULT_MAX_VIDEO_SECONDS,
) -> CaptionRequest:
    """Validate ``job["input"]``; every problem is listed in one ``ValidationError``. ``streaming``: whether
    this deployment can stream a job's parts (ENABLE_STREAMING); if not, ``stream: true`` is refused.
    ``max_video_seconds``: MAX_VIDEO_SECONDS, the bound of ``max_seconds``."""
    if not isinstance(raw, dict):
        raise ValidationError(f"input must be a JSON object, got {type(raw).__name__}")
    context = {"max_frames_limit": max_frames_limit, "max_batch_items": max_batch_items}
    context["max_video_seconds"] = max_video_seconds
    try:
        request = CaptionRequest.model_validate(raw, context=context)
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
    if request.stream and not streaming:
        message = (
            f"this endpoint does not stream (set {STREAMING_SETTING}=true on it to use /stream; its output is "
            "then the list of the streamed parts, the result last)"
        )
        raise ValidationError(f"invalid input: stream: {message}", details=[{"field": "stream", "message": message}])
    return request
