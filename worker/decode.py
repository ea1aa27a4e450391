"""Decoding: probe a video, pull the planned frames at model resolution and the audio track (PyAV), or read
a still image (Pillow).

Only the frames the plan asks for are converted, straight from the decoder's YUV to RGB at the model's
size (swscale, inside PyAV), so memory holds one full-resolution frame at a time, never the video.
Images go through Pillow rather than FFmpeg because Pillow applies EXIF orientation (phone photos) and
can decode JPEGs at a reduced scale.
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
import PIL.Image
import PIL.ImageOps

from worker.errors import DecodeError

log = logging.getLogger(__name__)

AUDIO_SAMPLE_RATE = 16_000
# Images with more source pixels than this are refused before decoding (a 100-megapixel photo is
# 300 MB as RGB); Pillow's own bomb check would only stop them at ~179 MP.
MAX_IMAGE_PIXELS = 100_000_000
# EXIF orientations 5-8 turn the picture by a quarter: displayed width and height swap.
_EXIF_ORIENTATION = 0x0112
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
    return round(-float(first_frame.rotation or 0) / 90.0) % 4 * 90


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
        indices=[round(t * fps) for t in times],
    )


@dataclass(frozen=True)
class AudioClip:
    samples: np.ndarray  # (n,) float32 mono at AUDIO_SAMPLE_RATE
    start: float  # seconds from the video's start where samples[0] plays

    @property
    def seconds(self) -> float:
        return len(self.samples) / AUDIO_SAMPLE_RATE


def decode_audio(
    path: Path, *, start: float = 0.0, end: float | None = None, video_start: float = 0.0
) -> AudioClip | None:
    """The first audio stream over [start, end) seconds of the video, as 16 kHz mono float32; None when
    the file has no audio. Times are on the video's clock (``video_start`` is the video's first
    presentation time), so the clip lines up with frames decoded by ``decode_frames``. Sound that starts
    after ``start`` (a late audio stream) is preceded by silence to keep that alignment; a track that ends
    early gives a shorter clip."""
    with _open(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        stream.thread_type = "AUTO"
        time_base = stream.time_base or Fraction(1, AUDIO_SAMPLE_RATE)
        if start > SEEK_MIN_GAP:
            container.seek(int((start + video_start) / time_base), stream=stream, backward=True)
        # PyAV's resampler downmixes any layout (5.1 included) and converts any rate and sample format.
        resampler = av.AudioResampler(format="flt", layout="mono", rate=AUDIO_SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        origin: float | None = None  # video-clock time of the first resampled sample
        try:
            for frame in container.decode(stream):
                if origin is None:
                    origin = float(frame.time or 0.0) - video_start
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                if end is not None and float(frame.time or 0.0) - video_start >= end:
                    break
        except av.error.FFmpegError as exc:
            if not chunks:
                raise DecodeError(f"the audio stream cannot be decoded: {_describe(exc)}") from exc
            log.warning("audio decode stopped early: %s", _describe(exc))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    samples = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, dtype=np.float32)
    return AudioClip(_cut(samples, origin or 0.0, start, end), start)


def _cut(samples: np.ndarray, origin: float, start: float, end: float | None) -> np.ndarray:
    """``samples`` (beginning at ``origin`` seconds) restricted to [start, end), silence-padded in front
    when they begin after ``start``."""
    lead = round((origin - start) * AUDIO_SAMPLE_RATE)
    if lead > 0:
        samples = np.concatenate([np.zeros(lead, dtype=np.float32), samples])
    first = max(0, -lead)  # samples[first] now plays at ``start``
    last = len(samples) if end is None else min(len(samples), first + round((end - start) * AUDIO_SAMPLE_RATE))
    return np.ascontiguousarray(samples[first : max(first, last)])


@dataclass(frozen=True)
class ImageInfo:
    width: int  # as displayed, after EXIF orientation
    height: int
    format: str  # Pillow's format name: JPEG, PNG, WEBP, ...


def probe_image(path: Path) -> ImageInfo:
    """Size and format from the header, without decoding the pixels."""
    with _open_image(path) as image:
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
            width, height = height, width
        return ImageInfo(width=width, height=height, format=image.format or "unknown")


def decode_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    """The image upright as RGB (height, width, 3) uint8 of ``size`` = (height, width)."""
    height, width = size
    with _open_image(path) as image:
        try:
            # JPEG only: let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers the target.
            image.draft("RGB", (width, height))
            upright = PIL.ImageOps.exif_transpose(image).convert("RGB")
            resized = upright.resize((width, height), PIL.Image.Resampling.BICUBIC, reducing_gap=3.0)
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as exc:
            raise DecodeError(f"the image cannot be decoded: {exc}") from exc
        return np.asarray(resized, dtype=np.uint8)


def _open_image(path: Path) -> PIL.Image.Image:
    try:
        image = PIL.Image.open(path)
    except PIL.UnidentifiedImageError as exc:
        raise DecodeError("not a readable image file (formats: JPEG, PNG, WebP, BMP, GIF, TIFF, ...)") from exc
    except PIL.Image.DecompressionBombError as exc:
        raise DecodeError(f"the image has more than {MAX_IMAGE_PIXELS // 1_000_000} megapixels") from exc
    except (OSError, ValueError) as exc:
        raise DecodeError(f"not a readable image file: {exc}") from exc
    if image.width * image.height > MAX_IMAGE_PIXELS:
        image.close()
        raise DecodeError(
            f"the image is {image.width}x{image.height}, more than {MAX_IMAGE_PIXELS // 1_000_000} megapixels"
        )
    return image
