"""Hostile media through everything up to the engine (tests.fakes stands in for vLLM): each file gives a
result or a typed error, never anything else, within a time and a memory bound.

Bounds: MEMORY_BOUND_MIB of peak RSS growth per file (the process's high-water mark, reset before each
file through /proc/self/clear_refs) and HANG_GUARD_S per file, a generous guard against hangs, not a
timing claim; the measured worst cases are printed (`-s`) and quoted in the README."""

from __future__ import annotations

import asyncio
import ctypes
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import hostile_media as hm
from tests.fakes import FakeEngine, FakeEngineSlot, load_tokenizer
from worker.devtools.media import make_video
from worker.config import Settings
from worker.api.errors import ERROR_TYPES
from worker.job.service import CaptionService

MEMORY_BOUND_MIB = 64
M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
HANG_GUARD_S = 30.0
pytestmark = pytest.mark.timeout(600)


def _status_mib(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    assert match, field
    return int(match.group(1)) / 1024


@dataclass(frozen=True)
class Measured:
    outcome: str  # "ok" or an error type
    message: str
    warnings: list[str]
    seconds: float
    peak_growth_mib: float


STATS: dict[str, list[Measured]] = defaultdict(list)


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    print("\nhostile media (kind: files, outcomes, worst time, worst peak RSS growth):")
    for kind, runs in STATS.items():
        outcomes = sorted({m.outcome for m in runs})
        worst_s = max(m.seconds for m in runs)
        worst_mib = max(m.peak_growth_mib for m in runs)
        print(f"  {kind}: {len(runs)} files, {outcomes}, {worst_s * 1000:.0f} ms, {worst_mib:.1f} MiB")
    print(f"  total: {sum(len(r) for r in STATS.values())} files")


@pytest.fixture(scope="module")
def run(tiny_model: Path, media_dir: Path, work_dir: Path) -> Iterator[Callable[[str, Path], Measured]]:
    """``run(kind, path)``: one job on ``path`` through CaptionService with the fake engine, measured.

    glibc gives each new thread its own malloc arena, whose first pages count as growth however little the
    file needs: the 96-stream file measured 27 MiB run first and 67 MiB after a few other files (0 MiB with
    one arena). So new threads share one arena while this module measures; a file that really allocates
    still shows all of it."""
    libc = ctypes.CDLL(None)
    limited = hasattr(libc, "mallopt") and libc.mallopt(M_ARENA_MAX, 1) == 1
    settings = Settings(allowed_media_roots=[media_dir], work_dir=work_dir)
    service = CaptionService(settings, FakeEngineSlot(FakeEngine(load_tokenizer(tiny_model))))
    loop = asyncio.new_event_loop()
    job: dict[str, Any] = {"fps": 2.0, "max_frames": 8, "max_tokens": 8, "process_audio": True}

    def measure(kind: str, path: Path) -> Measured:
        before = _status_mib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        started = time.perf_counter()
        output = loop.run_until_complete(service.handle(job | {"video": str(path)}))
        seconds = time.perf_counter() - started
        growth = _status_mib("VmHWM") - before
        error = output.get("error")
        warnings = [] if error else output["metadata"]["warnings"]
        measured = Measured(
            error["type"] if error else "ok", error["message"] if error else "", warnings, seconds, growth
        )
        STATS[kind].append(measured)
        assert measured.outcome in {"ok", *ERROR_TYPES} - {"internal_error"}, (kind, path.name, output)
        assert seconds < HANG_GUARD_S, (kind, path.name, seconds)
        assert growth < MEMORY_BOUND_MIB, (kind, path.name, growth)
        return measured

    yield measure
    loop.close()
    if limited:
        # glibc's own limit again (8 arenas per core on 64-bit): mallopt ignores 0, so "unset" cannot be restored.
        libc.mallopt(M_ARENA_MAX, 8 * (os.cpu_count() or 1))


@pytest.fixture(scope="module")
def hostile_dir(media_dir: Path) -> Path:
    path = media_dir / "hostile"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def sources(hostile_dir: Path) -> dict[str, Path]:
    """Clips to cut and flip: MP4 (index at the end), Matroska and WebM (streamable), each with audio."""
    return {
        "mp4": make_video(hostile_dir / "src.mp4", seconds=3.0, fps=10, audio="aac", gop=5),
        "mkv": make_video(hostile_dir / "src.mkv", seconds=3.0, fps=10, codec="mpeg4", audio="libopus"),
        "webm": make_video(hostile_dir / "src.webm", seconds=3.0, fps=10, codec="libvpx-vp9", audio="libopus"),
    }


@pytest.mark.parametrize("container", ["mp4", "mkv", "webm"])
def test_truncated_at_many_offsets(
    run: Callable[[str, Path], Measured], sources: dict[str, Path], hostile_dir: Path, container: str
) -> None:
    data = sources[container].read_bytes()
    outcomes = set()
    for cut in hm.truncations(data, 40):
        path = hostile_dir / f"cut.{container}"
        path.write_bytes(data[:cut])
        outcomes.add(run("truncated", path).outcome)
    # A cut file is either still partly decodable (a result from the frames before the cut) or not.
    assert outcomes <= {"ok", "decode_error"} and "decode_error" in outcomes, outcomes


@pytest.mark.parametrize("container", ["mp4", "mkv", "webm"])
def test_random_byte_flips(
    run: Callable[[str, Path], Measured], sources: dict[str, Path], hostile_dir: Path, container: str
) -> None:
    data = sources[container].read_bytes()
    outcomes = set()
    for seed in range(60):
        path = hostile_dir / f"flipped.{container}"
        path.write_bytes(hm.byte_flips(data, seed))
        outcomes.add(run("byte flips", path).outcome)
    assert outcomes <= {"ok", "decode_error", "unsupported_input"}, outcomes


@pytest.mark.parametrize("name", sorted(hm.DISGUISES))
def test_not_a_video_disguised_as_one(run: Callable[[str, Path], Measured], hostile_dir: Path, name: str) -> None:
    path = hostile_dir / f"{name}.mp4"
    path.write_bytes(hm.DISGUISES[name])
    measured = run("not a video (text, HTML, PDF, ...)", path)
    assert measured.outcome == "decode_error", measured


def test_declared_frame_size_above_the_limit_is_refused_before_decoding(
    run: Callable[[str, Path], Measured], hostile_dir: Path
) -> None:
    # 16000x16000 passes FFmpeg's own size check (it refuses above ~268 Mpixels): only MAX_SOURCE_PIXELS
    # stands between this 100 kB file and a 366 MiB frame buffer.
    measured = run("30000x30000 and other size claims", hm.y4m_claiming(hostile_dir / "16k.y4m", 16000, 16000))
    assert measured.outcome == "unsupported_input" and "MAX_SOURCE_PIXELS" in measured.message, measured
    for path in (
        hm.y4m_claiming(hostile_dir / "30k.y4m", 30000, 30000),
        hm.mov_raw_claiming(hostile_dir / "30k.mov", 30000, 30000),
    ):
        assert run("30000x30000 and other size claims", path).outcome in {"decode_error", "unsupported_input"}


def test_bitstream_frame_size_above_the_limit_is_refused_by_the_decoder(
    run: Callable[[str, Path], Measured], hostile_dir: Path
) -> None:
    # The container says 64x48; the VP9 keyframes say 16000x16000. Without FFmpeg's max_pixels set from
    # MAX_SOURCE_PIXELS the decoder allocates (and the probe touches) about 450 MiB for this 1 kB file.
    claim = hm.vp9_claiming(hostile_dir / "vp9_16k.webm", hostile_dir, 16000, 16000)
    measured = run("30000x30000 and other size claims", claim)
    assert measured.outcome == "decode_error" and "MAX_SOURCE_PIXELS" in measured.message, measured
    # From the second keyframe on (0.5 s): the frames before the change are used, the rest refused.
    mid = hm.vp9_claiming(hostile_dir / "vp9_16k_mid.webm", hostile_dir, 16000, 16000, from_keyframe=1)
    assert run("30000x30000 and other size claims", mid).outcome in {"ok", "decode_error"}


@pytest.mark.parametrize("duration_ms", [9e15, 1e12])
def test_an_absurd_declared_duration_is_measured(
    run: Callable[[str, Path], Measured], hostile_dir: Path, duration_ms: float
) -> None:
    """The header of this 2 s clip claims 285,000 years (or 31 years). Above MAX_VIDEO_SECONDS the file's tail is
    read (the last packets, no decoding) and the frames' real end is what counts: the 2 s are captioned,
    with a warning naming both lengths. Refusing by the claim alone would turn a damaged header into a
    lost job; trusting it would plan frames over a span the file does not have."""
    path = hm.mkv_duration(hostile_dir / f"duration_{duration_ms}.mkv", hostile_dir, duration_ms)
    measured = run("absurd duration", path)
    assert measured.outcome == "ok", measured
    assert any("but its frames end at 2.0 s; used that" in w for w in measured.warnings), measured


@pytest.mark.parametrize("duration_ms", [-5.0, float("nan"), 1e300])
def test_a_negative_nan_or_unrepresentable_declared_duration_is_ignored(
    run: Callable[[str, Path], Measured], hostile_dir: Path, duration_ms: float
) -> None:
    # FFmpeg drops these itself (1e300 ms overflows its 64-bit microseconds); the packet times give the length.
    path = hm.mkv_duration(hostile_dir / f"duration_{duration_ms}.mkv", hostile_dir, duration_ms)
    assert run("absurd duration", path).outcome == "ok"


@pytest.mark.parametrize("duration_ms", [None, 9e15])
def test_a_video_really_days_long_is_refused(
    run: Callable[[str, Path], Measured], hostile_dir: Path, duration_ms: float | None
) -> None:
    """10 frames 3 days apart (27 days, a 1 kB file), the header true or claiming more: a typed error
    naming the measured length, before any frame is decoded."""
    path = hm.frames_days_apart(hostile_dir / "days_apart.mkv", 3 * 86400.0, 10)
    if duration_ms is not None:
        path = hm.patch_mkv_duration(path, duration_ms)
    measured = run("absurd duration", path)
    assert measured.outcome == "unsupported_input", measured
    assert "the video is 2332800 s long, above MAX_VIDEO_SECONDS=10800" in measured.message, measured


@pytest.mark.parametrize("ticks", [0, 2**31 - 1], ids=["frame_rate_0", "frames_24_days_apart"])
def test_frame_timing_extremes(run: Callable[[str, Path], Measured], hostile_dir: Path, ticks: int) -> None:
    path = hm.mp4_frame_duration(hostile_dir / f"stts_{ticks}.mp4", hostile_dir, ticks)
    assert run("frame rate 0 / 1000, frames days apart", path).outcome == "ok"


def test_frame_rate_1000(run: Callable[[str, Path], Measured], hostile_dir: Path) -> None:
    path = make_video(hostile_dir / "fps1000.mp4", seconds=2.0, fps=1000, width=32, height=32)
    assert run("frame rate 0 / 1000, frames days apart", path).outcome == "ok"


def test_audio_only_file(run: Callable[[str, Path], Measured], hostile_dir: Path) -> None:
    measured = run("audio only / no decodable video", hm.audio_only(hostile_dir / "audio_only.m4a"))
    assert measured.outcome == "decode_error" and "no video stream" in measured.message, measured


@pytest.mark.parametrize("make", [hm.video_without_frames, hm.video_of_garbage_packets])
def test_video_stream_without_decodable_frames(
    run: Callable[[str, Path], Measured], hostile_dir: Path, make: Callable[[Path], Path]
) -> None:
    measured = run("audio only / no decodable video", make(hostile_dir / f"{make.__name__}.mkv"))
    assert measured.outcome == "decode_error" and "no decodable frame" in measured.message, measured


def test_many_streams(run: Callable[[str, Path], Measured], hostile_dir: Path) -> None:
    path = hm.many_streams(hostile_dir / "many_streams.mkv", video_streams=64, audio_streams=32)
    assert run("96 streams", path).outcome == "ok"


@pytest.mark.parametrize("size", [(2, 2), (1, 1), (3, 1)])
def test_tiny_video(run: Callable[[str, Path], Measured], hostile_dir: Path, size: tuple[int, int]) -> None:
    width, height = size
    path = make_video(hostile_dir / f"tiny_{width}x{height}.mp4", seconds=1.0, fps=10, width=width, height=height)
    assert run("tiny (2x2, 1x1, 3x1)", path).outcome == "ok"
