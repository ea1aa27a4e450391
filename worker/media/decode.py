"""Decoding: probe a video, pull the planned frames at model resolution and the audio track (PyAV), or read
a still image (Pillow).

Only the frames the plan asks for are converted, straight from the decoder's YUV to RGB at the model's
size (swscale, inside PyAV), so memory holds one full-resolution frame at a time, never the video.
Images go through Pillow rather than FFmpeg because Pillow applies EXIF orientation (phone photos) and
can decode JPEGs at a reduced scale.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np
import PIL.Image
import PIL.ImageOps
from av.video.reformatter import VideoReformatter

from worker.config import DEFAULT_MAX_SOURCE_PIXELS
from worker.api.errors import DecodeError, UnsupportedInputError

log = logging.getLogger(__name__)

AUDIO_SAMPLE_RATE = 16_000
# Images with more source pixels than this are refused before decoding (a 100-megapixel photo is
# 300 MB as RGB); Pillow's own bomb check would only stop them at ~179 MP.
MAX_IMAGE_PIXELS = 100_000_000
# EXIF orientations 5-8 turn the picture by a quarter: displayed width and height swap.
_EXIF_ORIENTATION = 0x0112
# Seek to the keyframe before the next wanted instant when it lies this far (seconds) past the last frame
# decoded; nearer, the frames in flight in the decoder (reordering, frame threads) would be decoded twice.
SEEK_MIN_GAP = 1.0
# FFmpeg threads per decode; 0 lets FFmpeg choose (one per core). Set per decoder process (decode_pool).
_frame_threads = 0


def set_frame_threads(count: int) -> None:
    """FFmpeg threads for each decode in this process from now on; 0: FFmpeg's choice."""
    global _frame_threads
    _frame_threads = count


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


def _open(path: Path, max_pixels: int) -> av.container.InputContainer:
    # FFmpeg's max_pixels makes every decoder refuse larger frames, including those it decodes while
    # probing the file and those of a resolution change mid-stream, before allocating them.
    try:
        return av.open(str(path), mode="r", options={"max_pixels": str(max_pixels)})
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"not a readable media file: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    # FFmpeg errors carry the file name; the caller knows which file it sent, and temp names are noise.
    if isinstance(exc, av.error.FFmpegError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


def _video_stream(container: av.container.InputContainer, max_pixels: int) -> av.video.stream.VideoStream:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise DecodeError(f"the file has no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise DecodeError("the video stream's codec is unknown or has no decoder here")
    stream.codec_context.options = {"max_pixels": str(max_pixels)}
    return stream


def _rotation(first_frame: av.VideoFrame) -> int:
    # FFmpeg's display matrix gives the counter-clockwise angle to apply for display; PyAV exposes it on
    # frames. Normalised to the clockwise quarter turn that np.rot90 has to undo.
    return round(-float(first_frame.rotation or 0) / 90.0) % 4 * 90


def probe(path: Path, *, max_pixels: int = DEFAULT_MAX_SOURCE_PIXELS) -> Probe:
    """``max_pixels``: MAX_SOURCE_PIXELS; a larger frame size, declared or decoded, is refused."""
    with _open(path, max_pixels) as container:
        stream = _video_stream(container, max_pixels)
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
            f"the video stream cannot be decoded: {_describe(exc)} (FFmpeg refuses frames above MAX_SOURCE_PIXELS with this error)"
        ) from exc
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


def measured_end(path: Path, probe_result: Probe, *, max_pixels: int = DEFAULT_MAX_SOURCE_PIXELS) -> float:
    """Seconds from the video's start to the end of its last video packet, read from the file's tail (a
    seek to the last keyframe and a short demux, no decoding): the length when the header's cannot be
    trusted. 0 when no packet has a time."""
    with _open(path, max_pixels) as container:
        stream = _video_stream(container, max_pixels)
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
            log.debug("tail scan stopped early: %s", _describe(exc))
    return max(0.0, end - probe_result.start_time)


def decode_frames(
    path: Path,
    probe_result: Probe,
    timestamps: list[float],
    size: tuple[int, int],
    *,
    max_pixels: int = DEFAULT_MAX_SOURCE_PIXELS,
    index: PacketIndex | None = None,
) -> DecodedFrames:
    """Frames shown at ``timestamps`` (seconds from the video's start), as RGB ``size`` = (height, width)
    upright images. The frame chosen for an instant t is the last one whose presentation time is <= t.

    Only what the choice needs is decoded: a demux-only pass reads every packet's time and keyframe flag,
    so the frame shown at each instant is known before decoding; the decoder jumps to the keyframe before
    an instant when one lies well ahead of where it is, and skips the non-reference frames (nothing is
    predicted from them) that are not shown, about half of a typical H.264/HEVC stream. The frames
    decoded are then checked against the index; any instant that did not get its frame (a decoder that
    drops frames, a seek that lands late) is decoded again the plain way, which is always exact.

    ``index`` is ``packet_index`` of the video, for callers that decode several sets of instants from one
    video (chunks): the demux pass then runs once, not once per call.
    """
    if index is None:
        index = packet_index(path, probe_result, max_pixels=max_pixels)
    frames, times = _decode_at(path, probe_result, timestamps, size, index, max_pixels)
    missed = _wrong_choices(timestamps, times, index.times)
    if missed:
        log.debug("decoding %d of %d instants again without skipping", len(missed), len(timestamps))
        again, again_times = _decode_at(path, probe_result, [timestamps[i] for i in missed], size, None, max_pixels)
        for i, frame, t in zip(missed, again, again_times):
            frames[i], times[i] = frame, t
    if not frames:
        raise DecodeError("no frame could be decoded at the sampled instants")
    fps = probe_result.fps or (len(times) / probe_result.duration)
    times = [max(0.0, t) for t in times]
    return DecodedFrames(
        frames=np.stack(frames),
        timestamps=[round(t, 6) for t in times],
        indices=[int(round(t * fps)) for t in times],
    )


@dataclass(frozen=True)
class PacketIndex:
    times: list[float]  # presentation time of every video packet, seconds from the start, sorted
    keyframes: list[float]  # those of keyframes, sorted


def packet_index(path: Path, probe_result: Probe, *, max_pixels: int = DEFAULT_MAX_SOURCE_PIXELS) -> PacketIndex:
    """Every video packet's time and keyframe flag, for ``decode_frames``."""
    return _packet_index(path, probe_result.start_time, max_pixels)


def _packet_index(path: Path, start: float, max_pixels: int = DEFAULT_MAX_SOURCE_PIXELS) -> PacketIndex:
    """Reads packets without decoding them (a small fraction of the cost of decoding)."""
    times: list[float] = []
    keyframes: list[float] = []
    with _open(path, max_pixels) as container:
        stream = _video_stream(container, max_pixels)
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
            log.debug("packet scan stopped early: %s", _describe(exc))
    return PacketIndex(sorted(times), sorted(keyframes))


def _decode_at(
    path: Path,
    probe_result: Probe,
    timestamps: list[float],
    size: tuple[int, int],
    index: PacketIndex | None,
    max_pixels: int = DEFAULT_MAX_SOURCE_PIXELS,
) -> tuple[list[np.ndarray], list[float]]:
    """(frames, their times) for ``timestamps``. With ``index`` it seeks and skips as decode_frames says;
    without, it decodes every frame from the start, the plain way that is always exact."""
    height, width = size
    # Scale in the decoder's orientation, then turn: rot90 of a small RGB array is cheap.
    coded_w, coded_h = (height, width) if probe_result.rotation in (90, 270) else (width, height)
    quarter_turns = probe_result.rotation // 90
    start = probe_result.start_time
    frames: list[np.ndarray] = []
    times: list[float] = []
    # One scaler for the whole call: a new one per frame would set up swscale's filters every time, which
    # costs as much as the conversion itself.
    scaler = VideoReformatter()

    def keep(frame: av.VideoFrame) -> None:
        small = scaler.reformat(frame, width=coded_w, height=coded_h, format="rgb24", interpolation="AREA")
        rgb = small.to_ndarray()
        frames.append(np.ascontiguousarray(np.rot90(rgb, k=-quarter_turns)) if quarter_turns else rgb)
        times.append(float(frame.time or 0.0) - start)

    keyframes = index.keyframes if index is not None else []
    shown = _shown_packets(timestamps, index.times) if index is not None else set()

    sought: list[float] = []  # keyframes already sought to

    def keyframe_to_seek(target: float, position: float) -> float | None:
        """The keyframe before ``target`` when it lies far enough past ``position`` to be worth a seek.
        Never one sought before: a seek can land on an earlier keyframe (the demuxer's index, timestamp
        rounding), and seeking to it again would land there again, forever; decoding on is then the way."""
        i = bisect.bisect_right(keyframes, target + 1e-9)
        if i and keyframes[i - 1] > position + SEEK_MIN_GAP and (not sought or keyframes[i - 1] > sought[-1]):
            return keyframes[i - 1]
        return None

    with _open(path, max_pixels) as container:
        stream = _video_stream(container, max_pixels)
        stream.thread_type = "AUTO"
        if _frame_threads:
            stream.thread_count = _frame_threads
        context = stream.codec_context
        time_base = stream.time_base or Fraction(1, 1_000_000)
        pending = list(timestamps)
        previous: av.VideoFrame | None = None
        position = 0.0  # presentation time of the last frame decoded

        def decoded() -> Iterator[av.VideoFrame]:
            skipping = False
            for packet in container.demux(stream):
                skip = (
                    index is not None and packet.pts is not None and float(packet.pts * time_base) - start not in shown
                )
                if skip != skipping:
                    context.skip_frame = "NONREF" if skip else "DEFAULT"
                    skipping = skip
                yield from packet.decode()

        try:
            while pending:
                keyframe = keyframe_to_seek(pending[0], position)
                if keyframe is not None:
                    container.seek(round((keyframe + start) / time_base), stream=stream, backward=True)
                    sought.append(keyframe)
                    previous, position = None, keyframe
                for frame in decoded():
                    t = float(frame.time or 0.0) - start
                    position = t
                    while pending and t > pending[0]:
                        keep(previous if previous is not None else frame)
                        pending.pop(0)
                    previous = frame
                    if not pending or keyframe_to_seek(pending[0], t) is not None:
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
    return frames, times


def _shown_packets(timestamps: list[float], packet_times: list[float]) -> set[float]:
    """Times of the packets whose frames are shown at ``timestamps``: the last at or before each."""
    shown = set()
    for wanted in timestamps:
        before = bisect.bisect_right(packet_times, wanted + 1e-9)
        shown.add(packet_times[max(0, before - 1)] if packet_times else 0.0)
    return shown


def _wrong_choices(timestamps: list[float], chosen: list[float], packet_times: list[float]) -> list[int]:
    """Positions whose chosen frame is not the last packet at or before the instant: the shown frame was
    skipped, or a seek landed past the instant."""
    wrong = []
    for i, (wanted, got) in enumerate(zip(timestamps, chosen)):
        before = bisect.bisect_right(packet_times, wanted + 1e-9)
        if before and abs(packet_times[before - 1] - got) > 1e-6:
            wrong.append(i)
    return wrong


@dataclass(frozen=True)
class AudioClip:
    samples: np.ndarray  # (n,) float32 mono at AUDIO_SAMPLE_RATE
    start: float  # seconds from the video's start where samples[0] plays

    @property
    def seconds(self) -> float:
        return len(self.samples) / AUDIO_SAMPLE_RATE


def decode_audio(
    path: Path,
    *,
    start: float = 0.0,
    end: float | None = None,
    video_start: float = 0.0,
    max_pixels: int = DEFAULT_MAX_SOURCE_PIXELS,
) -> AudioClip | None:
    """The first audio stream over [start, end) seconds of the video, as 16 kHz mono float32; None when
    the file has no audio. Times are on the video's clock (``video_start`` is the video's first
    presentation time), so the clip lines up with frames decoded by ``decode_frames``. Sound that starts
    after ``start`` (a late audio stream) is preceded by silence to keep that alignment; a track that ends
    early gives a shorter clip."""
    with _open(path, max_pixels) as container:
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
    request needs, in one call (one round trip to a decoder process)."""
    frames = decode_frames(path, probe_result, timestamps, size, max_pixels=max_pixels, index=index)
    if audio_window is None:
        return frames, None
    start, end = audio_window
    audio = decode_audio(path, start=start, end=end, video_start=probe_result.start_time, max_pixels=max_pixels)
    return frames, audio


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
