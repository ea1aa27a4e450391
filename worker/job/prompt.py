"""What the job asks the model in words, and what it asks of media as plain values: the conversation (a
chunk's turn says which span it shows), the context its words take, and the sampling and model limits
that frame planning works within (worker/media/frame_plan.py knows neither the job nor the engine).
"""

from __future__ import annotations

from functools import partial

from worker.api.schema import CaptionRequest, ChatMessage
from worker.config import Settings
from worker.engine import Engine
from worker.job.combine import chunk_prompt
from worker.job.generate import count_tokens
from worker.media.audio import AUDIO_SAMPLE_RATE
from worker.media.frame_plan import ChunkPlan, ModelLimits, Sampling
from worker.models.adapters.base import ModelAdapter

# Text tokens a prompt may take beyond its count (the media placeholders the count leaves out).
PROMPT_MARGIN = 16


def conversation(
    request: CaptionRequest, chunk: ChunkPlan | None, chunked: bool, adapter: ModelAdapter
) -> list[ChatMessage]:
    """The job's turns; in chunked mode the turn that carries the media says which span it shows. A job
    without prompt or messages asks in the words of the family's default video prompt, if it has one."""
    turns = request.conversation
    if request.prompt is None and request.messages is None and adapter.default_video_prompt:
        turns = [ChatMessage(role="user", content=adapter.default_video_prompt)]
    if not chunked or chunk is None:
        return turns
    first_user = next(i for i, turn in enumerate(turns) if turn.role == "user")
    # Built, not validated: the caller's limits are on the caller's text, and the span prefix may take
    # a prompt at the length limit past it.
    stamped = ChatMessage.model_construct(
        role="user", content=chunk_prompt(turns[first_user].content, chunk.start, chunk.end)
    )
    return [*turns[:first_user], stamped, *turns[first_user + 1 :]]


def text_reserve(request: CaptionRequest, engine: Engine, minimum: int, chunk: ChunkPlan | None) -> int:
    """Context for the prompt's words: ``minimum`` (TEXT_TOKEN_RESERVE), or more for a long conversation.
    Blocking: it tokenizes the prompt."""
    turns = conversation(request, chunk, chunk is not None, engine.adapter)
    words = count_tokens(engine, engine.adapter.build_prompt(engine.tokenizer, turns, None))
    return max(minimum, words + PROMPT_MARGIN)


def video_sampling(request: CaptionRequest) -> Sampling:
    """What the request asks to sample from each video. Mode "auto" samples at ``fps`` but never below
    ``min_fps``, and leaves chunking to the planner, which knows the video's length."""
    if request.mode == "auto":
        floor = request.auto_min_fps
        return Sampling(max(request.fps, floor), request.max_frames, None, request.process_audio, min_fps=floor)
    chunk_seconds = request.chunk_length if request.mode == "chunked" else None
    return Sampling(request.fps, request.max_frames, chunk_seconds, request.process_audio)


def model_limits(request: CaptionRequest, engine: Engine, settings: Settings) -> ModelLimits:
    """What one request of this job holds on ``engine``, for frame planning."""
    adapter = engine.adapter
    return ModelLimits(
        model=f"{engine.model} ({adapter.family})",
        max_model_len=engine.max_model_len,
        max_tokens=request.max_tokens,
        text_reserve=partial(text_reserve, request, engine, settings.text_token_reserve),
        geometry=adapter.geometry,
        frame_multiple=adapter.frame_multiple,
        text_tokens_per_group=adapter.text_tokens_per_group,
        video_min_pixels=engine.pixels.video.min_pixels,
        video_max_pixels=engine.pixels.video.max_pixels,
        image_min_pixels=engine.pixels.image.min_pixels,
        image_max_pixels=engine.pixels.image.max_pixels,
        audio_tokens=partial(_audio_tokens, adapter),
        supports_audio=adapter.supports_audio,
        audio_covers_span=adapter.audio_covers_span,
        max_audio_seconds=adapter.max_audio_seconds,
    )


def _audio_tokens(adapter: ModelAdapter, seconds: float) -> int:
    return adapter.audio_tokens(round(seconds * AUDIO_SAMPLE_RATE))
