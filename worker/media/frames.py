"""Pulling the planned frames of a video at the model's size: only the frames the plan asks for are
converted, straight from the decoder's YUV to RGB at that size (swscale, inside PyAV), so memory holds one
full-resolution frame at a time, never the video.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np
from av.video.reformatter import VideoReformatter

from worker.api.errors import DecodeError
from worker.config import DEFAULT_MAX_SOURCE_PIXELS
from worker.media import cpu
from worker.media.container import SEEK_MIN_GAP, describe, open_media, video_stream
from worker.media.probe import PacketIndex, Probe, packet_index

log = logging.getLogger(__name__)

# FFmpeg threads per decode; 0 lets FFmpeg choose (one per core). Set per decoder process (decode_pool).
_frame_threads = 0


def set_frame_threads(count: int) -> None:
    """FFmpeg threads for each decode in this process from now on; 0: FFmpeg's choice."""
    global _frame_threads
    _frame_threads = count


@dataclass(frozen=True)
class DecodedFrames:
    frames: np.ndarray  # (T, H, W, 3) uint8
    timestamps: list[float]  # presentation time of each frame, seconds from the video's start
    indices: list[int]  # index of each frame in the stream (approximate for VFR: time x average fps)


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
    with cpu.measured("decode"):  # less the conversions, which _decode_at charges as "resize"
        frames, times = _decode_at(path, probe_result, timestamps, size, index, max_pixels)
        missed = _wrong_choices(timestamps, times, index.times)
        if missed:
            log.debug("decoding %d of %d instants again without skipping", len(missed), len(timestamps))
            instants = [timestamps[i] for i in missed]
            again, again_times = _decode_at(path, probe_result, instants, size, None, max_pixels)
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
        # This thread's clock: swscale converts in the calling thread while FFmpeg's decode threads run on.
        with cpu.measured("resize", time.thread_time):
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

    with open_media(path, max_pixels) as container:
        stream = video_stream(container, max_pixels)
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
                raise DecodeError(f"the video stream cannot be decoded: {describe(exc)}") from exc
            log.warning(
                "decode stopped early (%s); using %d of %d frames", describe(exc), len(frames), len(timestamps)
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
