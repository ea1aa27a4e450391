"""What a video is before any frame is decoded for the model: its size, rate, rotation, length (measured
from the packets when the header cannot be trusted) and where its packets and keyframes lie.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error

from worker.api.errors import DecodeError, UnsupportedInputError
from worker.config import DEFAULT_MAX_SOURCE_PIXELS
from worker.media.container import describe, open_media, video_stream
from worker.media.cpu import accounted

log = logging.getLogger(__name__)


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


def _rotation(first_frame: av.VideoFrame) -> int:
    # FFmpeg's display matrix gives the counter-clockwise angle to apply for display; PyAV exposes it on
    # frames. Normalised to the clockwise quarter turn that np.rot90 has to undo.
    return round(-float(first_frame.rotation or 0) / 90.0) % 4 * 90


@accounted("probe")
def probe(path: Path, *, max_pixels: int = DEFAULT_MAX_SOURCE_PIXELS) -> Probe:
    """``max_pixels``: MAX_SOURCE_PIXELS; a larger frame size, declared or decoded, is refused."""
    with open_media(path, max_pixels) as container:
        stream = video_stream(container, max_pixels)
        codec = stream.codec_context.name
        _check_size(stream.codec_context.width, stream.codec_context.height, max_pixels)
        first = _first_frame(container, stream)
        if first is None:
            raise DecodeError(f"the {codec} video stream has no decodable frame")
        _check_size(first.width, first.height, max_pixels)
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


def _check_size(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise UnsupportedInputError(
            f"the video's frames are {width}x{height} ({width * height} pixels), above MAX_SOURCE_PIXELS={max_pixels}"
        )


def _first_frame(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> av.VideoFrame | None:
    try:
        for frame in container.decode(stream):
            return frame
    except av.error.ArgumentError as exc:
        # What FFmpeg's max_pixels check raises when the bitstream, not the container, declares the size.
        raise DecodeError(
            f"the video stream cannot be decoded: {describe(exc)} (FFmpeg refuses frames above MAX_SOURCE_PIXELS with this error)"
        ) from exc
    except av.error.FFmpegError as exc:
        raise DecodeError(f"the video stream cannot be decoded: {describe(exc)}") from exc
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


@accounted("probe")
def measured_end(path: Path, probe_result: Probe, *, max_pixels: int = DEFAULT_MAX_SOURCE_PIXELS) -> float:
    """Seconds from the video's start to the end of its last video packet, read from the file's tail (a
    seek to the last keyframe and a short demux, no decoding): the length when the header's cannot be
    trusted. 0 when no packet has a time."""
    with open_media(path, max_pixels) as container:
        stream = video_stream(container, max_pixels)
        time_base = stream.time_base or Fraction(1, 1_000_000)
        end = 0.0
        try:
            # Past any real end: demuxers land on their last keyframe before it.
            container.seek(2**62, stream=stream, backward=True)
        except av.error.FFmpegError:
            container.seek(0)
        try:
            for packet in container.demux(stream):
                if packet.pts is not None:
                    end = max(end, float((packet.pts + (packet.duration or 0)) * time_base))
        except av.error.FFmpegError as exc:
            log.debug("tail scan stopped early: %s", describe(exc))
    return max(0.0, end - probe_result.start_time)


@dataclass(frozen=True)
class PacketIndex:
    times: list[float]  # presentation time of every video packet, seconds from the start, sorted
    keyframes: list[float]  # those of keyframes, sorted


@accounted("packet_index")
def packet_index(path: Path, probe_result: Probe, *, max_pixels: int = DEFAULT_MAX_SOURCE_PIXELS) -> PacketIndex:
    """Every video packet's time and keyframe flag, for ``decode_frames``."""
    return _packet_index(path, probe_result.start_time, max_pixels)


def _packet_index(path: Path, start: float, max_pixels: int = DEFAULT_MAX_SOURCE_PIXELS) -> PacketIndex:
    """Reads packets without decoding them (a small fraction of the cost of decoding)."""
    times: list[float] = []
    keyframes: list[float] = []
    with open_media(path, max_pixels) as container:
        stream = video_stream(container, max_pixels)
        time_base = stream.time_base or Fraction(1, 1_000_000)
        try:
            for packet in container.demux(stream):
                if packet.pts is None:
                    continue
                t = float(packet.pts * time_base) - start
                times.append(t)
                if packet.is_keyframe:
                    keyframes.append(t)
        except av.error.FFmpegError as exc:
            # A damaged tail: decode what can be decoded, the index covers what was read.
            log.debug("packet scan stopped early: %s", describe(exc))
    return PacketIndex(sorted(times), sorted(keyframes))
