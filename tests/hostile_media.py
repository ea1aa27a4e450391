"""Hostile media files, made from generated clips by cutting, flipping and patching bytes.

Each builder writes one file and returns its path. The patches follow the formats' layouts (MP4 boxes,
Matroska elements, VP9's uncompressed header, YUV4MPEG2's text header), so each file says exactly the
lie it is meant to tell and nothing else is broken.
"""

from __future__ import annotations

import random
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from worker.devtools.media import _write_tone, make_video

PDF = b"""%PDF-1.4
1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj
2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj
3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >> endobj
trailer << /Root 1 0 R >>
%%EOF
"""
HTML = b"<!DOCTYPE html><html><head><title>video.mp4</title></head><body><video src=x></video></body></html>\n"
DISGUISES: dict[str, bytes] = {
    "zero_bytes": b"",
    "one_byte": b"\0",
    "text": b"this is not a video\n" * 50,
    "html": HTML * 20,
    "pdf": PDF,
    "json": b'{"video": "not really", "frames": [1, 2, 3]}\n' * 20,
    "shell_script": b"#!/bin/sh\necho pwned > /tmp/pwned\n",
    "random_bytes": random.Random(7).randbytes(50_000),
    "mp4_magic_then_junk": b"\0\0\0\x20ftypisom\0\0\x02\0isomiso2avc1mp41" + b"\xff" * 5000,
    "webm_magic_then_junk": b"\x1a\x45\xdf\xa3" + b"\x00" * 5000,
}


def truncations(data: bytes, count: int) -> list[int]:
    """``count`` cut points spread over the file, plus the first bytes where headers are parsed."""
    spread = {len(data) * i // count for i in range(1, count)}
    return sorted(spread | {1, 4, 8, 12, 16, 32, 64, 100, 500, len(data) - 1})


def byte_flips(data: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(rng.choice([1, 2, 4, 16, 64])):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def y4m_claiming(path: Path, width: int, height: int) -> Path:
    """A YUV4MPEG2 header declaring ``width``x``height`` followed by a sliver of one frame."""
    path.write_bytes(f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\n".encode() + b"FRAME\n" + b"\x80" * 100_000)
    return path


def _vp9_keyframe_sizes(data: bytes) -> list[int]:
    """Offsets of VP9 keyframe sync codes (profile 0: the 16-bit width-1 and height-1 follow 4 bits later)."""
    found, at = [], data.find(b"\x49\x83\x42")
    while at != -1:
        found.append(at)
        at = data.find(b"\x49\x83\x42", at + 3)
    return found


def _patch_vp9_size(data: bytearray, sync_at: int, width: int, height: int) -> None:
    start = sync_at + 3
    bits = int.from_bytes(data[start : start + 6], "big")  # 48 bits: color(4) w-1(16) h-1(16) rest(12)
    bits = (bits & ~(0xFFFFFFFF << 12)) | ((width - 1) << 28) | ((height - 1) << 12)
    data[start : start + 6] = bits.to_bytes(6, "big")


def vp9_claiming(path: Path, work: Path, width: int, height: int, *, from_keyframe: int = 0) -> Path:
    """A small VP9 WebM whose keyframes from the ``from_keyframe``-th on declare ``width``x``height`` in the
    bitstream, while the container still says 64x48. ``from_keyframe=1``: the size changes mid-stream."""
    source = make_video(work / f"vp9_source_{from_keyframe}.webm", seconds=2.0, fps=10, codec="libvpx-vp9", gop=5)
    data = bytearray(source.read_bytes())
    keyframes = _vp9_keyframe_sizes(bytes(data))
    assert len(keyframes) > from_keyframe, keyframes
    for at in keyframes[from_keyframe:]:
        _patch_vp9_size(data, at, width, height)
    path.write_bytes(bytes(data))
    return path


def mov_raw_claiming(path: Path, width: int, height: int) -> Path:
    """Uncompressed video in QuickTime whose sample description declares ``width``x``height``."""
    with av.open(str(path), "w", format="mov") as container:
        stream = container.add_stream("rawvideo", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "rgb24"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((16, 16, 3), 60 * i, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    data = bytearray(path.read_bytes())
    entry = data.find(b"raw ", data.find(b"stsd"))
    # Sample entry after the format code: reserved(6) data-ref(2) version(2) revision(2) vendor(4)
    # temporal quality(4) spatial quality(4), then width(2) height(2).
    at = entry + 4 + 6 + 2 + 2 + 2 + 4 + 4 + 4
    data[at : at + 4] = struct.pack(">HH", width, height)
    path.write_bytes(bytes(data))
    return path


def mkv_duration(path: Path, work: Path, duration_ms: float) -> Path:
    """A 2 s Matroska clip whose Segment Info Duration element says ``duration_ms``."""
    source = make_video(work / "mkv_duration_source.mkv", seconds=2.0, fps=10, codec="mpeg4")
    path.write_bytes(source.read_bytes())
    return patch_mkv_duration(path, duration_ms)


def patch_mkv_duration(path: Path, duration_ms: float) -> Path:
    """Rewrites the Segment Info Duration element of a Matroska file (PyAV's muxer writes it as a double)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89")
    assert data[at + 2] == 0x88, "expected an 8-byte float Duration"
    data[at + 3 : at + 11] = struct.pack(">d", duration_ms)
    path.write_bytes(bytes(data))
    return path


def mp4_frame_duration(path: Path, work: Path, ticks: int) -> Path:
    """A 2 s MP4 whose sample table gives every frame ``ticks`` of the 1/1000 s timescale: 0 makes every frame
    start at 0 (no frame rate), 2**31-1 spaces frames 24 days apart."""
    data = bytearray(make_video(work / "mp4_stts_source.mp4", seconds=2.0, fps=10).read_bytes())
    at = data.find(b"stts")
    assert struct.unpack(">I", data[at + 8 : at + 12])[0] == 1, "expected one stts entry"
    data[at + 16 : at + 20] = struct.pack(">I", ticks)
    path.write_bytes(bytes(data))
    return path


def frames_days_apart(path: Path, gap_seconds: float, count: int) -> Path:
    """A Matroska video whose ``count`` frames really are ``gap_seconds`` apart: its header and its packets
    agree on a length of days (a 1 kB file)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = round(i * gap_seconds * 1000), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        _write_tone(container, container.add_stream("aac", rate=16_000), 1.0)
    return path


def video_without_frames(path: Path) -> Path:
    """A video stream is declared, no packet is ever written for it (the audio track is real)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height = 32, 32
        _write_tone(container, container.add_stream("aac", rate=16_000), 1.0)
    return path


def video_of_garbage_packets(path: Path) -> Path:
    """An H.264 stream whose packets are random bytes: nothing in it decodes."""
    rng = random.Random(3)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height = 32, 32
        for i in range(20):
            packet = av.Packet(rng.randbytes(500))
            packet.stream = stream
            packet.pts = packet.dts = i * 100
            packet.time_base = Fraction(1, 1000)
            container.mux(packet)
    return path


def many_streams(path: Path, video_streams: int, audio_streams: int) -> Path:
    with av.open(str(path), "w") as container:
        videos = [container.add_stream("mpeg4", rate=10) for _ in range(video_streams)]
        audios = [container.add_stream("aac", rate=16_000) for _ in range(audio_streams)]
        for stream in videos:
            stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 20 * i, np.uint8), format="rgb24")
            frame.pts = i
            for stream in videos:
                container.mux(stream.encode(frame))
        for stream in videos:
            container.mux(stream.encode(None))
        for stream in audios:
            _write_tone(container, stream, 1.0)
    return path
