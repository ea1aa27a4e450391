"""Opening media with PyAV the same way for every reader: FFmpeg's frame-size limit set before anything is
decoded, and errors that never carry the file's (temporary) name.
"""

from __future__ import annotations

from pathlib import Path

import av
import av.error

from worker.api.errors import DecodeError

# Seek to the keyframe before the next wanted instant when it lies this far (seconds) past the last frame
# decoded; nearer, the frames in flight in the decoder (reordering, frame threads) would be decoded twice.
SEEK_MIN_GAP = 1.0


def open_media(path: Path, max_pixels: int) -> av.container.InputContainer:
    """``path`` opened for reading, every decoder of it refusing frames above ``max_pixels``."""
    # FFmpeg's max_pixels makes every decoder refuse larger frames, including those it decodes while
    # probing the file and those of a resolution change mid-stream, before allocating them.
    try:
        return av.open(str(path), mode="r", options={"max_pixels": str(max_pixels)})
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"not a readable media file: {describe(exc)}") from exc


def describe(exc: BaseException) -> str:
    """``exc`` in words fit for a job's error."""
    # FFmpeg errors carry the file name; the caller knows which file it sent, and temp names are noise.
    if isinstance(exc, av.error.FFmpegError):
        return exc.strerror or type(exc).__name__
    return str(exc) or type(exc).__name__


def video_stream(container: av.container.InputContainer, max_pixels: int) -> av.video.stream.VideoStream:
    """The container's first video stream, its decoder refusing frames above ``max_pixels``."""
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise DecodeError(f"the file has no video stream (streams: {', '.join(kinds)})")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise DecodeError("the video stream's codec is unknown or has no decoder here")
    stream.codec_context.options = {"max_pixels": str(max_pixels)}
    return stream
