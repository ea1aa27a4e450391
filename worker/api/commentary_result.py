"""What a commentary job answers (mode "commentary", docs/commentary.md): every turn in order, silent ones
marked, with what each cost and how much of its prompt vLLM's prefix cache served."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from worker.api.result import Timings, VideoInfo


class CommentaryTurn(BaseModel):
    """One turn: what the model said after seeing the clip of ``start``..``end`` seconds."""

    index: int
    start: float
    end: float
    text: str = Field(description="the answer as the model wrote it (LiveCC ends a phrase with ' ...')")
    silent: bool = Field(description="the model said nothing new: LiveCC's ' ...' alone (or nothing)")
    window: int = Field(description="the context window the turn ran in: 0, then one more at each MAX_MODEL_LEN reset")
    num_frames: int
    frame_timestamps: list[float] = Field(description="presentation times of the frames shown, seconds")
    prompt_tokens: int = Field(description="the whole conversation re-sent with this turn")
    cached_tokens: int | None = Field(description="of those, served by vLLM's prefix cache (None: not reported)")
    prefix_cache_hit_rate: float | None = Field(description="cached_tokens / prompt_tokens")
    completion_tokens: int
    finish_reason: str | None
    latency: float = Field(description="seconds from the turn's request to its answer")


class CommentaryMetadata(BaseModel):
    media_type: Literal["video"] = "video"
    mode: Literal["commentary"] = "commentary"
    protocol: dict[str, Any] = Field(description="LiveCC's protocol as run: fps, frames per turn, query, decoding")
    num_turns: int
    num_silent: int
    context_windows: int = Field(description="1, plus one per MAX_MODEL_LEN reset")
    complete: bool = Field(description="false when the commentary stopped before the video's end (see warnings)")
    num_frames: int
    frame_size: tuple[int, int] = Field(description="(width, height) of the frames given to the model")
    video: VideoInfo
    model: str
    prompt_tokens: int = Field(description="all turns together (each re-sends its conversation)")
    cached_tokens: int = Field(description="of those, served by the prefix cache")
    prefix_cache_hit_rate: float | None
    completion_tokens: int
    time_to_first_turn: float = Field(description="seconds from the job's start to the first turn's answer")
    real_time_factor: float | None = Field(description="video seconds commented per second of inference")
    sampling: dict[str, Any]
    processing_time: float
    timings: Timings
    warnings: list[str]


class CommentaryResult(BaseModel):
    caption: str = Field(description="the non-silent turns' phrases joined, for a client that reads one text")
    turns: list[CommentaryTurn]
    metadata: CommentaryMetadata

    def to_output(self, *, structured: bool = False) -> dict[str, Any]:
        return self.model_dump(mode="json")
