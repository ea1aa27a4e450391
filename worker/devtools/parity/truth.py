"""What a video file really holds, read with PyAV directly and not through the worker's code: the frame
rate, frame count and duration the reference's ``video_metadata`` needs, the index of the frame shown at
each instant the worker reports, and those frames' pixels. The worker's own metadata and frames are
checked against these, so the reference never inherits a worker mistake."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np


@dataclass(frozen=True)
class SourceVideo:
    fps: float  # the stream's average rate
    times: list[float]  # presentation time of every frame, seconds from the first, sorted
    duration: float
    width: int
    height: int

    def shown_at(self, instant: float) -> int:
        """Index of the frame on screen at ``instant``: the last one presented at or before it."""
        return max(0, bisect.bisect_right(self.times, instant + 1e-6) - 1)


def read_source(path: Path) -> SourceVideo:
    """Every frame's presentation time, from the packets (no decoding)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 0) or None
        stamps = sorted(float(p.pts * p.time_base) for p in container.demux(stream) if p.pts is not None)
        width, height = stream.codec_context.width, stream.codec_context.height
    if not stamps:
        raise ValueError(f"{path}: no video packets")
    start = stamps[0]
    times = [t - start for t in stamps]
    rate = fps or (len(times) - 1) / max(times[-1], 1e-9)
    return SourceVideo(fps=rate, times=times, duration=len(times) / rate, width=width, height=height)


def true_video_metadata(source: SourceVideo, instants: list[float], size: tuple[int, int]) -> dict[str, Any]:
    """transformers' VideoMetadata fields for the frames shown at ``instants`` (seconds), at ``size``
    (height, width): source fps, the frames' indices in the stream, the stream's frame count, duration."""
    height, width = size
    return {
        "fps": source.fps,
        "frames_indices": [source.shown_at(t) for t in instants],
        "total_num_frames": len(source.times),
        "duration": source.duration,
        "width": width,
        "height": height,
        "video_backend": "pyav",
    }


def source_frames(path: Path, indices: list[int]) -> np.ndarray:
    """The frames at ``indices`` (in presentation order) as RGB (T, H, W, 3) at the source size."""
    wanted = set(indices)
    frames: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        decoded = sorted(container.decode(video=0), key=lambda f: f.pts if f.pts is not None else 0)
        for i, frame in enumerate(decoded):
            if i in wanted:
                frames[i] = frame.to_ndarray(format="rgb24")
    return np.stack([frames[i] for i in indices])
