"""A video's sound as the models hear it: 16 kHz mono float32, cut on the video's clock so it lines up
with the frames.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
import numpy as np

from worker.api.errors import DecodeError
from worker.config import DEFAULT_MAX_SOURCE_PIXELS
from worker.media.container import SEEK_MIN_GAP, describe, open_media

log = logging.getLogger(__name__)

AUDIO_SAMPLE_RATE = 16_000


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
    with open_media(path, max_pixels) as container:
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
                raise DecodeError(f"the audio stream cannot be decoded: {describe(exc)}") from exc
            log.warning("audio decode stopped early: %s", describe(exc))
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
