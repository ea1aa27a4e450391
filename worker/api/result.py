"""What a job answers: the result models, so the wire format of a caption is declared in one place."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from worker.api.schema import MediaType


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
    cpu: dict[str, float] | None = Field(
        None,
        description="CPU seconds this video cost per stage (probe, packet_index, decode, resize, audio, handover, "
        "frontend: those that ran), wherever they ran (worker/media/cpu.py); null where not accounted",
    )


class CombineInfo(BaseModel):
    """How a chunked job's caption was made from its segments."""

    method: Literal["summary", "concat"]
    requests: int = Field(description="engine requests of the summary pass (more than one for many segments)")
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    seconds: float


class CaptionMetadata(BaseModel):
    media_type: MediaType
    mode: Literal["single", "chunked"] = "single"
    chunk_seconds: float | None = Field(None, description="chunked mode: the length of each chunk")
    combine: CombineInfo | None = None
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


class Segment(BaseModel):
    """One chunk of a chunked job, captioned on its own."""

    index: int
    start: float
    end: float
    caption: str
    structured: Any = None
    num_frames: int
    frame_timestamps: list[float]
    audio_seconds: float
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    inference_seconds: float


class CaptionResult(BaseModel):
    caption: str
    structured: Any = Field(None, description="the caption parsed as JSON, with json_schema only")
    segments: list[Segment] | None = None
    num_chunks: int | None = None
    metadata: CaptionMetadata

    def to_output(self, *, structured: bool) -> dict[str, Any]:
        """The job output: ``structured`` only when the job gave a json_schema, segments and the chunk
        settings only in chunked mode, so a plain job's output is what it always was."""
        exclude: dict[str, Any] = {}
        if not structured:
            exclude["structured"] = True
        if self.segments is None:
            exclude.update(segments=True, num_chunks=True, metadata={"chunk_seconds", "combine"})
        elif not structured:
            exclude["segments"] = {"__all__": {"structured"}}
        return self.model_dump(mode="json", exclude=exclude)


class BatchMetadata(BaseModel):
    num_items: int
    num_failed: int
    model: str
    prompt_tokens: int = Field(description="all items together")
    completion_tokens: int
    processing_time: float


class BatchResult(BaseModel):
    """A ``videos``/``images`` job: one entry per item in input order, a result or ``{"error": {...}}``."""

    results: list[dict[str, Any]]
    metadata: BatchMetadata


class AnswerMetadata(BaseModel):
    """A context job's answer: what it was answered from and what it cost. No media was fetched or decoded."""

    mode: Literal["context"] = "context"
    context_segments: int = Field(description="timestamped captions the answer was drawn from")
    context_span: tuple[float, float] = Field(description="(start, end) seconds of the video they cover")
    requests: int = Field(description="text-only engine requests (more than one when the captions do not fit one)")
    model: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    sampling: dict[str, Any]
    processing_time: float
    warnings: list[str]


class AnswerResult(BaseModel):
    """A context job's answer, under ``caption`` like every job's text."""

    caption: str
    structured: Any = Field(None, description="the answer parsed as JSON, with json_schema only")
    metadata: AnswerMetadata

    def to_output(self, *, structured: bool) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude=None if structured else {"structured"})
