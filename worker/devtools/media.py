"""Test videos made with PyAV, so the suite needs no fixtures on disk.

Frame i of n is a flat gray of level ``frame_level(i, n)`` (a ramp from 16 to 235) with a white
marker square in the coded top-left corner, so a test can tell which frame it got and which way up it is.
``texture=True`` adds a panning, grainy pattern around that level: flat frames cost a decoder almost
nothing, so benchmarks use it to get bitrates and decode costs like camera footage.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

MARKER = 8  # side of the corner marker, pixels
GRAIN = 10  # amplitude of the per-frame grain of textured videos


def frame_level(index: int, count: int) -> int:
    return 16 + round(219 * index / max(1, count - 1))


def make_video(
    path: Path,
    *,
    seconds: float = 2.0,
    fps: int = 10,
    width: int = 64,
    height: int = 48,
    codec: str = "libx264",
    audio: str | None = None,
    audio_rate: int = 44_100,
    audio_channels: int = 2,
    audio_seconds: float | None = None,
    audio_delay: float = 0.0,
    rotation: int = 0,
    vfr: bool = False,
    gop: int | None = None,
    texture: bool = False,
    seed: int = 0,
    encoder_options: dict[str, str] | None = None,
) -> Path:
    """Write a test video. ``vfr`` spaces frames alternately 0.5x and 1.5x the nominal interval.
    ``rotation`` is the counter-clockwise display rotation stored in the container's display matrix.
    The audio is a tone of 440 Hz in its first half and 880 Hz in its second, starting ``audio_delay``
    seconds after the first frame.
    ``seed`` varies the texture, so generated clips differ pixel for pixel (vLLM caches by content).
    ``encoder_options`` go to the encoder as is (e.g. x264's ``{"preset": "veryfast"}``)."""
    count = max(1, round(seconds * fps))
    pattern = _texture(height, width, seed) if texture else None
    # Sensor-like grain that changes every frame (a short cycle: cheap to make, too long to predict).
    grain = (
        np.random.default_rng(1).integers(-GRAIN, GRAIN + 1, size=(7, height, width, 3), dtype=np.int16)
        if texture
        else None
    )
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        # 4:2:0 chroma needs even sides; odd-sized test videos use 4:4:4.
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        # 1 ms ticks let VFR frames land between nominal instants. AVI stores no timestamps, only a frame
        # rate: its ticks are the frames (1 ms ticks would make it a 1000 fps file with most frames missing).
        tick = Fraction(1, fps) if path.suffix.lower() == ".avi" else Fraction(1, 1000)
        stream.time_base = tick
        stream.codec_context.time_base = tick
        if gop:
            stream.codec_context.gop_size = gop
        if encoder_options:
            stream.options = dict(encoder_options)
        if rotation:
            stream.set_display_rotation(rotation)
        astream = None
        if audio:
            astream = container.add_stream(audio, rate=48_000 if audio in ("libopus", "opus") else audio_rate)
            astream.layout = "stereo" if audio_channels == 2 else ("mono" if audio_channels == 1 else "5.1")
        pts = 0.0
        for i in range(count):
            if pattern is None:
                img = np.full((height, width, 3), frame_level(i, count), dtype=np.uint8)
            else:
                # Pan 2 px a frame; the pattern is zero-mean, so the frame's level stays readable.
                moved = np.roll(pattern, 2 * i, axis=1) + grain[i % len(grain)]
                img = np.clip(moved + frame_level(i, count), 0, 255).astype(np.uint8)
            img[: min(MARKER, height), : min(MARKER, width)] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = round(pts / tick)
            frame.time_base = tick
            container.mux(stream.encode(frame))
            step = 1.0 / fps
            pts += step * (0.5 if i % 2 == 0 else 1.5) if vfr else step
        container.mux(stream.encode(None))
        if astream is not None:
            _write_tone(container, astream, audio_seconds if audio_seconds is not None else seconds, audio_delay)
    return path


def _texture(height: int, width: int, seed: int) -> np.ndarray:
    """(height, width, 3) int16, zero-mean: smooth waves of a few sizes plus fine grain, tinted per channel."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    luma = np.zeros((height, width), np.float32)
    for wavelength in (240.0, 97.0, 41.0, 17.0, 7.0):
        angle = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        luma += (wavelength**0.5) * np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / wavelength + phase)
    luma = luma / np.abs(luma).max() * 40
    tint = 12 * np.sin(2 * np.pi * x / max(8, width / 3))
    out = np.stack([luma + tint, luma, luma - tint], axis=-1) + rng.normal(0, 4, (height, width, 3))
    return np.round(out - out.mean(axis=(0, 1))).astype(np.int16)


def _write_tone(
    container: av.container.OutputContainer, stream: av.audio.stream.AudioStream, seconds: float, delay: float = 0.0
) -> None:
    rate = stream.codec_context.sample_rate
    channels = stream.codec_context.layout.nb_channels
    fmt = stream.codec_context.format.name
    frame_size = stream.codec_context.frame_size or 1024
    total = round(seconds * rate)
    t = np.arange(total) / rate
    tone = (0.3 * np.sin(2 * np.pi * np.where(t < seconds / 2, 440, 880) * t)).astype(np.float32)
    offset = round(delay * rate)
    resampler = av.AudioResampler(format=fmt, layout=stream.codec_context.layout, rate=rate)
    for start in range(0, total, frame_size):
        chunk = np.tile(tone[start : start + frame_size], (channels, 1))
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(chunk), format="fltp", layout=stream.codec_context.layout
        )
        frame.sample_rate = rate
        frame.pts = start + offset
        for out in resampler.resample(frame):
            container.mux(stream.encode(out))
    container.mux(stream.encode(None))


def make_corrupt(path: Path, kind: str, source: Path | None = None) -> Path:
    """``truncated`` (first third of ``source``), ``zero`` (empty file) or ``text``."""
    if kind == "truncated":
        assert source is not None
        data = source.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "zero":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n" * 50)
    else:
        raise ValueError(kind)
    return path


def loop_video(source: Path, path: Path, copies: int) -> Path:
    """``copies`` runs of ``source`` back to back, remuxed without re-encoding: a long clip in seconds of
    work where encoding it would take many minutes. Every stream's timestamps continue from the end of
    the previous copy."""
    with av.open(str(source)) as probe:
        span = {s.index: 0 for s in probe.streams}
        for packet in probe.demux():
            if packet.pts is not None and packet.duration:
                span[packet.stream.index] = max(span[packet.stream.index], packet.pts + packet.duration)
    with av.open(str(path), mode="w") as out:
        with av.open(str(source)) as first:
            streams = {s.index: out.add_stream_from_template(s) for s in first.streams}
        for copy in range(copies):
            with av.open(str(source)) as inp:
                for packet in inp.demux():
                    if packet.dts is None or (copy and packet.pts is not None and packet.pts < 0):
                        continue
                    shift = copy * span[packet.stream.index]
                    packet.pts = None if packet.pts is None else packet.pts + shift
                    packet.dts += shift
                    packet.stream = streams[packet.stream.index]
                    out.mux(packet)
    return path
