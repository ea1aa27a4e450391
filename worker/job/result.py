"""A job's answers turned into what it returns: the captioned chunks, their segments and the metadata
that says what the model saw, heard and spent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.api.schema import CaptionRequest
from worker.api.result import CaptionMetadata, Segment, VideoInfo
from worker.engine import Engine, Generation
from worker.job.context import since
from worker.job.generate import parse_structured
from worker.media.audio import AUDIO_SAMPLE_RATE
from worker.media.frame_plan import ChunkPlan
from worker.media.probe import Probe


@dataclass(frozen=True)
class ChunkCaption:
    """A captioned chunk; its pixels and samples are gone (a long job keeps hundreds of these)."""

    plan: ChunkPlan
    timestamps: list[float]  # presentation times of the frames the model saw
    frame_size: tuple[int, int]  # (width, height)
    audio_samples: int | None  # 16 kHz samples the model heard; None: no sound given
    generation: Generation
    inference_seconds: float


def segment(caption: ChunkCaption, request: CaptionRequest, warnings: list[str]) -> Segment:
    """A chunked job's result for one chunk."""
    generation = caption.generation
    label = f"segment {caption.plan.index}"
    return Segment(
        index=caption.plan.index,
        start=caption.plan.start,
        end=caption.plan.end,
        caption=generation.text,
        structured=parse_structured(request, generation, warnings, label),
        num_frames=len(caption.timestamps),
        frame_timestamps=caption.timestamps,
        audio_seconds=round((caption.audio_samples or 0) / AUDIO_SAMPLE_RATE, 6),
        prompt_tokens=generation.prompt_tokens,
        completion_tokens=generation.completion_tokens,
        finish_reason=generation.finish_reason,
        inference_seconds=round(caption.inference_seconds, 4),
    )


def metadata(
    engine: Engine,
    *,
    audio: list[int],
    generations: list[Generation],
    started: float,
    **fields: Any,
) -> CaptionMetadata:
    """``audio``: the samples given with each request that had sound; ``started``: the item's start
    (``time.perf_counter``)."""
    return CaptionMetadata(
        audio_processed=bool(audio),
        audio_seconds=round(sum(audio) / AUDIO_SAMPLE_RATE, 6),
        audio_tokens=sum(engine.adapter.audio_tokens(samples) for samples in audio),
        processing_time=since(started),
        model=engine.model,
        prompt_tokens=sum(g.prompt_tokens for g in generations),
        completion_tokens=sum(g.completion_tokens for g in generations),
        sampling=generations[0].sampling,
        **fields,
    )


def video_info(p: Probe) -> VideoInfo:
    return VideoInfo(
        duration=round(p.duration, 6),
        width=p.width,
        height=p.height,
        fps=round(p.fps, 6) if p.fps else None,
        has_audio=p.has_audio,
        rotation=p.rotation,
        codec=p.codec,
        audio_seconds=round(p.audio_seconds, 6),
    )
