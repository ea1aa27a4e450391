"""PyAV decoding: probe a file, pull the planned frames at model resolution, pull the audio track.

Only the frames the plan asks for are converted, straight from the decoder's YUV to RGB at the model's
size (swscale, inside PyAV), so memory holds one full-resolution frame at a time, never the video.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from worker.errors import DecodeError

log = logging.getLogger(__name__)

AUDIO_SAMPLE_RATE = 16_000
# Seek instead of decoding through when the next wanted instant is this far ahead (seconds) and farther
# than the keyframe spacing seen so far: below that a seek lands on the keyframe we would decode from anyway.
SEEK_MIN_GAP = 2.0


@dataclass(frozen=True)
class Probe:
    duration: float  # seconds
    width: int  # as displayed, i.e. after rotation
    height: int
    fps: float | None  # average frame rate, None when the container does not say
    rotation: int  # clockwise degrees to turn decoded frames upright: 0, 90, 180 or 270
    codec: str
    start_time: float  # presentation time of the first frame, seconds
    has_audio: bool
    audio_seconds: float  # from the container; exact after decode_audio


@dataclass(frozen=True)
class DecodedFrames:
    frames: np.ndarray  # (T, H, W, 3) uint8
    timestamps: list[float]  # presentation time of each frame, seconds from the video's start
    indices: list[int]  # index of each frame in the stream (approximate for VFR: time x average fps)


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"not a readable media file: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    # FFmpeg errors carry the file name; the caller knows which file it sent, and temp names are noise.
    if isinstance(exc, av.error.FFmpegError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise DecodeError(f"the file has no video stream (streams: {', '.join(kinds)})")
    return container.streams.video[0]


def _rotation(first_frame: av.VideoFrame) -> int:
    # FFmpeg's display matrix gives the counter-clockwise angle to apply for display; PyAV exposes it on
    # frames. Normalised to the clockwise quarter turn that np.rot90 has to undo.
    return int(round(-float(first_frame.rotation or 0) / 90.0)) % 4 * 90


def probe(path: Path) -> Probe:
    with _open(path) as container:
        stream = _video_stream(container)
        codec = stream.codec_context.name
        first = _first_frame(container, stream)
        if first is None:
            raise DecodeError(f"the {codec} video stream has no decodable frame")
        rotation = _rotation(first)
        width, height = stream.codec_context.width or first.width, stream.codec_context.height or first.height
        if rotation in (90, 270):
            width, height = height, width
        fps = float(stream.average_rate) if stream.average_rate else None
        start = float(first.time or 0.0)
        duration = _duration(container, stream, start)
        if duration <= 0 and fps:
            duration = 1.0 / fps  # a single frame lasts one frame interval
        if duration <= 0:
            duration = 1.0 / 25  # a single still with no rate: any positive span samples it once
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_seconds = _stream_seconds(audio) if audio is not None else 0.0
        return Probe(
            duration=duration,
            width=width,
            height=height,
            fps=fps if fps and math.isfinite(fps) and fps > 0 else None,
            rotation=rotation,
            codec=codec,
            start_time=start,
            has_audio=audio is not None,
            audio_seconds=audio_seconds if audio_seconds > 0 else (duration if audio is not None else 0.0),
        )


def _first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> av.VideoFrame | None:
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.FFmpegError as exc:
        raise DecodeError(f"the video stream cannot be decoded: {_describe(exc)}") from exc
    return None


def _stream_seconds(stream: av.stream.Stream) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return 0.0


def _duration(container: av.container.InputContainer, stream: av.video.stream.VideoStream, start: float) -> float:
    seconds = _stream_seconds(stream)
    if seconds <= 0 and container.duration:
        seconds = container.duration / av.time_base - max(0.0, start - (container.start_time or 0) / av.time_base)
    if seconds > 0:
        return seconds
    # No header says how long it is (some WebM/TS): read packet times, without decoding.
    container.seek(0)
    end = 0.0
    for packet in container.demux(stream):
        if packet.pts is not None and packet.time_base:
            end = max(end, float((packet.pts + (packet.duration or 0)) * packet.time_base))
    return end - start


def decode_frames(path: Path, probe_result: Probe, timestamps: list[float], size: tuple[int, int]) -> DecodedFrames:
    """Frames shown at ``timestamps`` (seconds from the video's start), as RGB ``size`` = (height, width)
    upright images. The frame chosen for an instant t is the last one whose presentation time is <= t.
    """
    height, width = size
    # Scale in the decoder's orientation, then turn: rot90 of a small RGB array is cheap.
    coded_w, coded_h = (height, width) if probe_result.rotation in (90, 270) else (width, height)
    quarter_turns = probe_result.rotation // 90
    frames: list[np.ndarray] = []
    times: list[float] = []

    def keep(frame: av.VideoFrame) -> None:
        rgb = frame.to_ndarray(width=coded_w, height=coded_h, format="rgb24", interpolation="AREA")
        frames.append(np.ascontiguousarray(np.rot90(rgb, k=-quarter_turns)) if quarter_turns else rgb)
        times.append(max(0.0, float(frame.time or 0.0) - probe_result.start_time))

    with _open(path) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        time_base = stream.time_base or Fraction(1, 1_000_000)
        pending = list(timestamps)
        previous: av.VideoFrame | None = None
        last_key_time: float | None = None
        key_spacing = 0.0
        position = 0.0
        seeked_for: float | None = None

        def far(target: float, now: float) -> bool:
            return target - now > max(SEEK_MIN_GAP, key_spacing * 1.5)

        try:
            while pending:
                target = pending[0]
                if target != seeked_for and far(target, position):
                    container.seek(int((target + probe_result.start_time) / time_base), stream=stream, backward=True)
                    seeked_for, previous = target, None
                for frame in container.decode(stream):
                    t = float(frame.time or 0.0) - probe_result.start_time
                    position = t
                    if frame.key_frame:
                        if last_key_time is not None and t > last_key_time:
                            key_spacing = max(key_spacing, t - last_key_time)
                        last_key_time = t
                    while pending and t > pending[0]:
                        keep(previous if previous is not None else frame)
                        pending.pop(0)
                    previous = frame
                    # A seek for the next instant lands on an earlier keyframe; decode on from there.
                    if not pending or (pending[0] != seeked_for and far(pending[0], t)):
                        break
                else:
                    # End of stream: the last frame is what is shown for every remaining instant.
                    if previous is None:
                        break
                    while pending:
                        keep(previous)
                        pending.pop(0)
        except av.error.FFmpegError as exc:
            if not frames:
                raise DecodeError(f"the video stream cannot be decoded: {_describe(exc)}") from exc
            log.warning(
                "decode stopped early (%s); using %d of %d frames", _describe(exc), len(frames), len(timestamps)
            )
    if not frames:
        raise DecodeError("no frame could be decoded at the sampled instants")
    fps = probe_result.fps or (len(times) / probe_result.duration)
    return DecodedFrames(
        frames=np.stack(frames),
        timestamps=[round(t, 6) for t in times],
        indices=[int(round(t * fps)) for t in times],
    )


def decode_audio(path: Path, *, sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray | None:
    """The first audio stream as mono float32 at ``sample_rate``; None when the file has no audio."""
    with _open(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        stream.thread_type = "AUTO"
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            if not chunks:
                raise DecodeError(f"the audio stream cannot be decoded: {_describe(exc)}") from exc
            log.warning("audio decode stopped early: %s", _describe(exc))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, dtype=np.float32)
