"""Pure planning math: which instants to sample, which stretch of sound to give with them, and at what
size, within what one request of the model holds. Numbers in, numbers out (no I/O: worker/media/video.py
and image.py execute the plan), so it is tested over the whole input range (tests/test_frame_plan.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from worker.api.errors import UnsupportedInputError


@dataclass(frozen=True)
class SamplePlan:
    timestamps: list[float]  # seconds from the start of the video, strictly increasing
    fps_used: float  # frames actually sampled per second of video


def plan_timestamps(
    duration: float,
    native_fps: float | None,
    requested_fps: float,
    max_frames: int,
    *,
    frame_multiple: int = 1,
) -> SamplePlan:
    """Uniform sample instants over ``[0, duration)``.

    The rate is min(requested fps, native fps): sampling faster than the video only repeats frames.
    The count is capped at ``max_frames`` and rounded down to ``frame_multiple`` (Qwen models fold
    frames in pairs; an odd count would make the processor repeat the last frame and bill a whole
    temporal patch for it). Instants sit in the middle of their interval so the first and last are never
    at an edge where a decoder may have no frame. A video shorter than one interval gives one frame.
    """
    if duration <= 0 or not math.isfinite(duration):
        raise ValueError(f"duration must be positive and finite, got {duration}")
    if requested_fps <= 0 or max_frames < 1 or frame_multiple < 1:
        raise ValueError("requested_fps, max_frames and frame_multiple must be positive")
    rate = requested_fps if not native_fps or native_fps <= 0 else min(requested_fps, native_fps)
    # The small epsilon keeps 10 s at 1 fps at 10 frames despite float error in duration.
    count = max(1, math.floor(duration * rate + 1e-6))
    count = min(count, max_frames)
    if count >= frame_multiple:
        count -= count % frame_multiple
    step = duration / count
    timestamps = [round((i + 0.5) * step, 6) for i in range(count)]
    return SamplePlan(timestamps=timestamps, fps_used=count / duration)


def audio_window(timestamps: list[float], fps_used: float, duration: float) -> tuple[float, float]:
    """The stretch of the video, (start, end) in seconds, that the sampled frames stand for: each frame
    represents its sampling interval, so it runs from half an interval before the first frame to half an
    interval after the last, within [0, duration]. The audio given with the frames is this stretch, so
    sound and pictures cover the same time and start together (audio-visual models align them by time).
    """
    if not timestamps or fps_used <= 0:
        raise ValueError("need at least one timestamp and a positive sampling rate")
    half = 0.5 / fps_used
    start = max(0.0, timestamps[0] - half)
    end = min(duration, timestamps[-1] + half)
    return round(start, 6), round(max(start, end), 6)


@dataclass(frozen=True)
class VisionGeometry:
    """How a model family turns pixels into tokens."""

    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2

    @property
    def factor(self) -> int:
        """Frame sides must be multiples of this (one merged token covers factor x factor pixels)."""
        return self.patch_size * self.merge_size


def video_tokens(num_frames: int, height: int, width: int, geometry: VisionGeometry) -> int:
    """Visual tokens the model spends on ``num_frames`` frames of ``height x width`` (multiples of factor)."""
    groups = math.ceil(num_frames / geometry.temporal_patch_size)
    return groups * (height // geometry.factor) * (width // geometry.factor)


def fit_frame_size(
    height: int,
    width: int,
    num_frames: int,
    *,
    max_visual_tokens: int,
    min_pixels: int,
    max_pixels: int,
    geometry: VisionGeometry,
) -> tuple[int, int]:
    """(height, width) for every sampled frame: aspect ratio kept, sides multiples of the model's
    factor, pixels within [min_pixels, max_pixels] and low enough that all frames fit
    ``max_visual_tokens``. Raises UnsupportedInputError when even ``min_pixels`` frames do not fit.
    """
    factor = geometry.factor
    groups = math.ceil(num_frames / geometry.temporal_patch_size)
    budget_pixels = (max_visual_tokens // groups) * factor * factor
    ceiling = min(max_pixels, budget_pixels)
    if ceiling < max(min_pixels, factor * factor):
        need = groups * max(1, min_pixels // (factor * factor))
        raise UnsupportedInputError(
            f"{num_frames} frames need at least {need} visual tokens but only {max_visual_tokens} fit "
            "MAX_MODEL_LEN next to the prompt and max_tokens; lower max_frames/fps or max_tokens, or "
            "raise MAX_MODEL_LEN"
        )
    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=ceiling)


MAX_ASPECT_RATIO = 200  # Qwen's processors refuse frames more elongated than this


def smart_resize(height: int, width: int, *, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen's resize rule (transformers' ``qwen2_vl.image_processing_qwen2_vl.smart_resize``), restated
    because that one raises on sides shorter than the factor, which real uploads have (a 2x2 clip);
    here such frames are scaled up to one factor instead.
    The result is within [min_pixels, max_pixels] whenever factor**2 <= min_pixels <= max_pixels.
    """
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise UnsupportedInputError(
            f"frames of {width}x{height} are more elongated than {MAX_ASPECT_RATIO}:1, which the model cannot take"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    # Rounding the short side up to one factor (or ceil above) can overshoot; trim the longer side.
    while h_bar * w_bar > max_pixels and max(h_bar, w_bar) > factor:
        if h_bar >= w_bar:
            h_bar -= factor
        else:
            w_bar -= factor
    return h_bar, w_bar


# Chunk ends within this many seconds of the video's end are the end (float noise in durations).
_CHUNK_EPSILON = 1e-6


def chunk_bounds(duration: float, chunk_seconds: float, *, min_last: float = 0.0) -> list[tuple[float, float]]:
    """Consecutive (start, end) spans of ``chunk_seconds`` tiling ``[0, duration]``; the last is shorter
    when the duration is not a multiple. A remainder shorter than ``min_last`` (too short to hold a
    sampled frame) joins the chunk before it instead of standing alone."""
    if duration <= 0 or not math.isfinite(duration):
        raise ValueError(f"duration must be positive and finite, got {duration}")
    if chunk_seconds <= 0 or not math.isfinite(chunk_seconds) or min_last < 0:
        raise ValueError("chunk_seconds must be positive and finite, min_last not negative")
    count = max(1, math.ceil(duration / chunk_seconds - _CHUNK_EPSILON))
    if count > 1 and duration - (count - 1) * chunk_seconds < min_last:
        count -= 1
    starts = [round(i * chunk_seconds, 6) for i in range(count)]
    return [(start, end) for start, end in zip(starts, [*starts[1:], round(duration, 6)], strict=True)]


def auto_chunk_seconds(duration: float, max_frames: int, min_fps: float) -> float | None:
    """Mode "auto" (Tarsier2's rule): None, one pass over the whole video, when ``max_frames`` frames see
    all of it at ``min_fps`` or more (``duration * min_fps <= max_frames``); else the chunk length that
    keeps ``min_fps``: ``max_frames / min_fps`` seconds (180 s at 128 frames and 2 fps: 3 chunks of 64 s)."""
    if duration <= 0 or not math.isfinite(duration):
        raise ValueError(f"duration must be positive and finite, got {duration}")
    if max_frames < 1 or min_fps <= 0 or not math.isfinite(min_fps):
        raise ValueError("max_frames and min_fps must be positive")
    if duration * min_fps <= max_frames + _CHUNK_EPSILON:
        return None
    return max_frames / min_fps


@dataclass(frozen=True)
class ChunkPlan:
    index: int
    start: float  # seconds, the span of the video this chunk stands for
    end: float
    timestamps: list[float]  # sample instants within [start, end), seconds from the video's start
    fps_used: float  # frames sampled per second of the chunk


def plan_chunks(
    duration: float,
    native_fps: float | None,
    requested_fps: float,
    max_frames: int,
    chunk_seconds: float,
    *,
    frame_multiple: int = 1,
) -> list[ChunkPlan]:
    """``plan_timestamps`` applied to each chunk of ``chunk_bounds``: every chunk is sampled at the same
    rate (at most ``max_frames`` each), its instants offset to its own span. A remainder shorter than one
    sampling interval is folded into the previous chunk."""
    rate = requested_fps if not native_fps or native_fps <= 0 else min(requested_fps, native_fps)
    plans = []
    for index, (start, end) in enumerate(chunk_bounds(duration, chunk_seconds, min_last=1.0 / rate)):
        local = plan_timestamps(end - start, native_fps, requested_fps, max_frames, frame_multiple=frame_multiple)
        timestamps = [round(start + t, 6) for t in local.timestamps]
        plans.append(ChunkPlan(index, start, end, timestamps, local.fps_used))
    return plans


# ---- a job's video or image planned within what the model's request holds ----


@dataclass(frozen=True)
class Sampling:
    """What a job asks to sample from each of its videos."""

    fps: float
    max_frames: int  # per request: per chunk in chunked mode
    chunk_seconds: float | None  # None: the whole video in one request ("single" mode)
    process_audio: bool
    min_fps: float | None = None  # mode "auto": chunks only when one request would see less (auto_chunk_seconds)


@dataclass(frozen=True)
class ModelLimits:
    """What one engine request of the model holds, as plain values, so media plans within them without
    knowing the job, the adapter or the engine."""

    model: str  # "name (family)", as warnings name it
    max_model_len: int
    max_tokens: int  # the answer's share of the context
    # Context for the prompt's words in the request for ``chunk`` (None: a whole video, or an image).
    text_reserve: Callable[[ChunkPlan | None], int]
    geometry: VisionGeometry
    frame_multiple: int
    text_tokens_per_group: int  # text tokens per temporal group besides the visual ones
    video_min_pixels: int  # per frame
    video_max_pixels: int
    image_min_pixels: int
    image_max_pixels: int
    audio_tokens: Callable[[float], int]  # prompt tokens for this many seconds of sound (0: none heard)
    supports_audio: bool
    audio_covers_span: bool  # the model hears the chunk's whole span, not only the sampled frames' stretch
    max_audio_seconds: float


@dataclass(frozen=True)
class FramePlan:
    """What to decode for a video: its chunks (one spanning the whole video in single mode), the stretch
    of sound for each (None: no sound), and the one frame size that fits every chunk's request."""

    chunks: list[ChunkPlan]
    windows: list[tuple[float, float] | None]
    size: tuple[int, int]  # (height, width)
    warnings: list[str]
    chunk_seconds: float | None = None  # the chunks' length; None: one pass over the whole video


def visual_token_budget(limits: ModelLimits, reserve: int, *, groups: int = 0, audio_tokens: int = 0) -> int:
    """Tokens the pictures may take in one request: the context less the prompt's words (``reserve``), the
    answer, the sound and the text the model adds to each of the ``groups`` temporal groups of frames."""
    return (
        limits.max_model_len - reserve - limits.max_tokens - audio_tokens - groups * limits.text_tokens_per_group
    )


def sound_window(
    chunk: ChunkPlan, duration: float, has_audio: bool, process_audio: bool, limits: ModelLimits
) -> tuple[tuple[float, float] | None, list[str]]:
    """The stretch of sound to give the model with ``chunk``, or None, and warnings saying why not or what
    was left out."""
    if not process_audio:
        return None, []
    if not limits.supports_audio:
        return None, [f"process_audio: model {limits.model} takes no audio input; only the frames were used"]
    if not has_audio:
        return None, ["process_audio: the video has no audio track; only the frames were used"]
    if limits.audio_covers_span:
        start, end = chunk.start, min(chunk.end, duration)
    else:
        start, end = audio_window(chunk.timestamps, chunk.fps_used, duration)
    if end - start > limits.max_audio_seconds:
        warning = (
            f"process_audio: the model takes at most {limits.max_audio_seconds:g} s of audio; the sound "
            f"after {start + limits.max_audio_seconds:.1f} s was not used"
        )
        return (start, start + limits.max_audio_seconds), [warning]
    return (start, end), []


def fit_video_frames(
    height: int,
    width: int,
    chunks: list[ChunkPlan],
    windows: list[tuple[float, float] | None],
    reserve: int,
    limits: ModelLimits,
) -> tuple[int, int]:
    """One frame size (height, width) for every chunk, planned for the costliest request: the most frames
    and the longest sound. Raises UnsupportedInputError when even the smallest frames do not fit."""
    most_frames = max(len(c.timestamps) for c in chunks)
    longest = max(((w[1] - w[0]) for w in windows if w), default=0.0)
    audio_tokens = limits.audio_tokens(longest)
    groups = -(-most_frames // limits.geometry.temporal_patch_size)
    budget = visual_token_budget(limits, reserve, groups=groups, audio_tokens=audio_tokens)
    try:
        return fit_frame_size(
            height,
            width,
            most_frames,
            max_visual_tokens=budget,
            min_pixels=limits.video_min_pixels,
            max_pixels=limits.video_max_pixels,
            geometry=limits.geometry,
        )
    except UnsupportedInputError as exc:
        if not audio_tokens:
            raise
        raise UnsupportedInputError(
            f"{exc.message} (the {longest:.1f} s of audio take {audio_tokens} tokens; process_audio false frees them)"
        ) from exc


def plan_video_frames(
    duration: float,
    native_fps: float | None,
    height: int,
    width: int,
    has_audio: bool,
    sampling: Sampling,
    limits: ModelLimits,
) -> FramePlan:
    """The chunks of a video of ``duration`` seconds and ``height`` x ``width`` (as displayed), the sound
    for each and the frame size that fits them all."""
    chunk_seconds = sampling.chunk_seconds
    if sampling.min_fps is not None:
        chunk_seconds = auto_chunk_seconds(duration, sampling.max_frames, sampling.min_fps)
    if chunk_seconds is not None:
        chunks = plan_chunks(
            duration,
            native_fps,
            sampling.fps,
            sampling.max_frames,
            chunk_seconds,
            frame_multiple=limits.frame_multiple,
        )
    else:
        whole = plan_timestamps(
            duration, native_fps, sampling.fps, sampling.max_frames, frame_multiple=limits.frame_multiple
        )
        chunks = [ChunkPlan(0, 0.0, duration, whole.timestamps, whole.fps_used)]
    windows: list[tuple[float, float] | None] = []
    warnings: list[str] = []
    for chunk in chunks:
        window, said = sound_window(chunk, duration, has_audio, sampling.process_audio, limits)
        windows.append(window)
        warnings += said
    # The last chunk's prompt states the largest times ("Time 3580.0–3600.0 s"): it has the most words.
    reserve = limits.text_reserve(chunks[-1] if chunk_seconds is not None else None)
    size = fit_video_frames(height, width, chunks, windows, reserve, limits)
    return FramePlan(chunks, windows, size, list(dict.fromkeys(warnings)), chunk_seconds)


def fit_image_size(height: int, width: int, limits: ModelLimits) -> tuple[int, int]:
    """(height, width) for an image of ``height`` x ``width`` (as displayed) in one request."""
    return fit_frame_size(
        height,
        width,
        1,
        max_visual_tokens=visual_token_budget(limits, limits.text_reserve(None)),
        min_pixels=limits.image_min_pixels,
        max_pixels=limits.image_max_pixels,
        geometry=limits.geometry,
    )
