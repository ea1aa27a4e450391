"""One video from file to model-ready chunks behind two calls, ``plan_video`` and ``decode``, so the job never
drives the decoder's steps itself; their blocking parts run in the decoder pool (worker/media/pool.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from worker.api.errors import DecodeError, UnsupportedInputError
from worker.config import DEFAULT_MAX_SOURCE_PIXELS
from worker.media import cpu, frames
from worker.media.audio import AudioClip, decode_audio
from worker.media.frame_plan import ChunkPlan, ModelLimits, Sampling, plan_video_frames
from worker.media.frames import DecodedFrames
from worker.media.pool import DecodePool
from worker.media.probe import PacketIndex, Probe, measured_end, packet_index, probe


@dataclass(frozen=True)
class VideoPlan:
    """What to decode for a video: its chunks (one spanning the whole video in single mode), the stretch
    of sound for each (None: no sound), and the one frame size that fits every chunk's request."""

    path: Path
    probe: Probe  # its duration measured from the packets when the header's could not be trusted
    chunks: list[ChunkPlan]
    windows: list[tuple[float, float] | None]
    size: tuple[int, int]  # (height, width)
    warnings: list[str]
    index: PacketIndex  # the video's packets, read once for all chunks
    max_pixels: int  # MAX_SOURCE_PIXELS
    chunk_seconds: float | None = None  # the chunks' length; None: one pass over the whole video


@dataclass(frozen=True)
class ChunkMedia:
    frames: DecodedFrames
    audio: AudioClip | None
    decode_seconds: float


async def plan_video(
    pool: DecodePool,
    path: Path,
    sampling: Sampling,
    limits: ModelLimits,
    *,
    max_source_pixels: int,
    max_video_seconds: float,
) -> VideoPlan:
    """Probe the video, check its duration against ``max_video_seconds`` (MAX_VIDEO_SECONDS), plan its
    chunks, their sound and the frame size, and read its packet index."""
    info, warnings = await probe_video(
        pool, path, max_source_pixels=max_source_pixels, max_video_seconds=max_video_seconds
    )
    # A thread: the limits' text reserve tokenizes the prompt.
    plan = await asyncio.to_thread(
        plan_video_frames, info.duration, info.fps, info.height, info.width, info.has_audio, sampling, limits
    )
    index = await pool.run(packet_index, path, info, max_pixels=max_source_pixels)
    return VideoPlan(
        path,
        info,
        plan.chunks,
        plan.windows,
        plan.size,
        list(dict.fromkeys(warnings + plan.warnings)),
        index,
        max_source_pixels,
        plan.chunk_seconds,
    )


async def probe_video(
    pool: DecodePool, path: Path, *, max_source_pixels: int, max_video_seconds: float
) -> tuple[Probe, list[str]]:
    """The video's probe, its duration checked against ``max_video_seconds`` (MAX_VIDEO_SECONDS), and
    warnings about what was found."""
    info = await pool.run(probe, path, max_pixels=max_source_pixels)
    warnings: list[str] = []
    if info.duration > max_video_seconds:
        # Headers can claim anything (a damaged or hostile file says 285,000 years): the packets decide.
        end = await pool.run(measured_end, path, info, max_pixels=max_source_pixels)
        if end > max_video_seconds:
            raise UnsupportedInputError(
                f"the video is {end:.0f} s long, above MAX_VIDEO_SECONDS={max_video_seconds:g} of this deployment"
            )
        if end <= 0:
            raise DecodeError("the video stream has no timed packets")
        warnings.append(f"the file declares {info.duration:.0f} s but its frames end at {end:.1f} s; used that")
        info = dataclasses.replace(info, duration=end)
    return info, warnings


async def read_index(pool: DecodePool, path: Path, info: Probe, *, max_source_pixels: int) -> PacketIndex:
    """The video's packet index (every frame's time), read once for all the decodes of one video."""
    return await pool.run(packet_index, path, info, max_pixels=max_source_pixels)


async def decode(pool: DecodePool, plan: VideoPlan, chunk: ChunkPlan) -> ChunkMedia:
    """One chunk's frames (seeking to it) and its sound."""
    started = time.perf_counter()
    decoded, audio = await pool.run(
        decode_span,
        plan.path,
        plan.probe,
        chunk.timestamps,
        plan.size,
        plan.windows[chunk.index],
        max_pixels=plan.max_pixels,
        index=plan.index,
    )
    return ChunkMedia(decoded, audio, time.perf_counter() - started)


def decode_span(
    path: Path,
    probe_result: Probe,
    timestamps: list[float],
    size: tuple[int, int],
    audio_window: tuple[float, float] | None,
    *,
    max_pixels: int = DEFAULT_MAX_SOURCE_PIXELS,
    index: PacketIndex | None = None,
) -> tuple[DecodedFrames, AudioClip | None]:
    """``decode_frames`` and, with ``audio_window`` = (start, end), ``decode_audio`` over it: all one
    request needs, in one call (one round trip to a decoder process, which runs it by reference)."""
    # Looked up on the module at each call, so a test can wrap it.
    decoded = frames.decode_frames(path, probe_result, timestamps, size, max_pixels=max_pixels, index=index)
    if audio_window is None:
        return decoded, None
    start, end = audio_window
    with cpu.measured("audio"):
        audio = decode_audio(path, start=start, end=end, video_start=probe_result.start_time, max_pixels=max_pixels)
    return decoded, audio
