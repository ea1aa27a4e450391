"""PyAV decoding on generated videos: which frames, at what size, which way up, and the audio."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.media_factory import MARKER, frame_level, make_corrupt
from worker.decode import (
    _decode_at,
    _packet_index,
    _shown_packets,
    _wrong_choices,
    decode_audio,
    decode_frames,
    probe,
)
from worker.errors import DecodeError
from worker.frame_plan import plan_timestamps

VideoMaker = Callable[..., Path]


def level(frame: np.ndarray) -> float:
    """Gray level away from the marker corner."""
    h, w = frame.shape[:2]
    return float(frame[h // 2 :, w // 2 :].mean())


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("h264.mp4", dict(codec="libx264")),
        ("mpeg4.mp4", dict(codec="mpeg4")),
        ("vp9.webm", dict(codec="libvpx-vp9")),
        ("h264_aac.mp4", dict(codec="libx264", audio="aac")),
        ("mpeg4_opus.mkv", dict(codec="mpeg4", audio="libopus")),
    ],
)
def test_frames_are_the_ones_shown_at_the_planned_instants(video: VideoMaker, name: str, kwargs: dict) -> None:
    path = video(name, seconds=4.0, fps=10, **kwargs)
    info = probe(path)
    assert info.duration == pytest.approx(4.0, abs=0.05)
    assert (info.width, info.height, info.fps) == (64, 48, 10.0)
    plan = plan_timestamps(info.duration, info.fps, 2.0, 30, frame_multiple=2)
    got = decode_frames(path, info, plan.timestamps, (56, 84))
    assert got.frames.shape == (8, 56, 84, 3) and got.frames.dtype == np.uint8
    for wanted, t, index, frame in zip(plan.timestamps, got.timestamps, got.indices, got.frames):
        assert t <= wanted < t + 0.1 + 1e-6  # the frame on screen at that instant
        assert index == round(t * 10)
        assert level(frame) == pytest.approx(frame_level(index, 40), abs=6)


def test_long_gop_seeking_gives_the_same_frames_as_decoding_through(video: VideoMaker) -> None:
    path = video("long_gop.mp4", seconds=30.0, fps=10, gop=300)
    info = probe(path)
    sparse = plan_timestamps(info.duration, info.fps, 0.2, 30).timestamps  # 5 s apart: seeks
    got = decode_frames(path, info, sparse, (56, 84))
    assert got.indices == [int(t * 10) for t in sparse]
    for index, frame in zip(got.indices, got.frames):
        assert level(frame) == pytest.approx(frame_level(index, 300), abs=6)


def test_short_gop_seeks(video: VideoMaker) -> None:
    path = video("short_gop.mp4", seconds=60.0, fps=10, gop=10)
    info = probe(path)
    ts = plan_timestamps(info.duration, info.fps, 0.1, 30).timestamps
    got = decode_frames(path, info, ts, (56, 84))
    assert got.indices == [int(t * 10) for t in ts]


def test_rotation_metadata_is_applied(video: VideoMaker) -> None:
    # Coded 64x32 landscape, displayed rotated 90 degrees counter-clockwise: 32x64 portrait.
    path = video("rot90.mp4", seconds=1.0, width=64, height=32, rotation=90)
    info = probe(path)
    assert (info.width, info.height) == (32, 64) and info.rotation == 270
    frame = decode_frames(path, info, [0.5], (64, 32)).frames[0]
    assert frame.shape == (64, 32, 3)
    # The coded top-left marker ends up bottom-left after a counter-clockwise quarter turn.
    assert frame[-MARKER // 2 :, : MARKER // 2].mean() > 200
    assert frame[: MARKER // 2, : MARKER // 2].mean() < 200


def test_variable_frame_rate(video: VideoMaker) -> None:
    path = video("vfr.mp4", seconds=4.0, fps=10, vfr=True)
    info = probe(path)
    plan = plan_timestamps(info.duration, info.fps, 4.0, 100)
    got = decode_frames(path, info, plan.timestamps, (56, 84))
    # True presentation times, not index / fps: the 0.05 s / 0.15 s alternation shows through.
    assert all(t <= w for t, w in zip(got.timestamps, plan.timestamps))
    assert {round(t * 100) % 20 for t in got.timestamps} <= {0, 5}
    assert got.timestamps == sorted(got.timestamps)


def test_video_shorter_than_one_interval(video: VideoMaker) -> None:
    path = video("one_frame.mp4", seconds=0.1, fps=10)
    info = probe(path)
    plan = plan_timestamps(info.duration, info.fps, 1.0, 30, frame_multiple=2)
    got = decode_frames(path, info, plan.timestamps, (56, 56))
    assert got.frames.shape[0] == 1 and got.timestamps == [0.0]


def test_odd_sizes(video: VideoMaker) -> None:
    path = video("odd.mp4", seconds=1.0, width=97, height=33)
    info = probe(path)
    assert (info.width, info.height) == (97, 33)
    assert decode_frames(path, info, [0.5], (28, 84)).frames.shape == (1, 28, 84, 3)


@pytest.mark.parametrize(
    "name,kwargs,rate_in,channels",
    [
        ("a_aac.mp4", dict(audio="aac"), 44_100, 2),
        ("a_aac_mono22k.mp4", dict(audio="aac", audio_rate=22_050, audio_channels=1), 22_050, 1),
        ("a_opus.mkv", dict(audio="libopus"), 48_000, 2),
        ("a_mp3.mkv", dict(audio="libmp3lame"), 44_100, 2),
        ("a_pcm.mkv", dict(audio="pcm_s16le", audio_rate=8_000), 8_000, 2),
    ],
)
def test_audio_is_16k_mono_float32(video: VideoMaker, name: str, kwargs: dict, rate_in: int, channels: int) -> None:
    path = video(name, seconds=3.0, **kwargs)
    info = probe(path)
    assert info.has_audio and info.audio_seconds == pytest.approx(3.0, abs=0.15)
    audio = decode_audio(path)
    assert audio is not None and audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == pytest.approx(3 * 16_000, abs=0.1 * 16_000)
    # The 440 Hz tone survives resampling.
    spectrum = np.abs(np.fft.rfft(audio[4000:20000]))
    assert abs(np.argmax(spectrum) * 16_000 / 16_000 - 440) < 5


def test_no_audio_stream(video: VideoMaker) -> None:
    path = video("silent.mp4", seconds=1.0)
    assert probe(path).has_audio is False and decode_audio(path) is None


@pytest.mark.parametrize("kind", ["truncated", "zero", "text"])
def test_corrupt_files_raise_decode_error(video: VideoMaker, tmp_path: Path, kind: str) -> None:
    bad = make_corrupt(tmp_path / f"{kind}.mp4", kind, source=video("h264.mp4", seconds=4.0, fps=10))
    with pytest.raises(DecodeError):
        info = probe(bad)
        decode_frames(bad, info, [0.5], (56, 56))


def test_audio_only_file_is_a_decode_error(tmp_path: Path) -> None:
    import av

    path = tmp_path / "audio.m4a"
    with av.open(str(path), "w") as container:
        from tests.media_factory import _write_tone

        _write_tone(container, container.add_stream("aac", rate=16_000), 1.0)
    with pytest.raises(DecodeError, match="no video stream"):
        probe(path)


@pytest.mark.parametrize("gop", [300, 10])
@pytest.mark.parametrize("fps", [0.3, 0.5, 2.0, 5.0])
def test_seeking_and_skipping_change_no_pixel(video: VideoMaker, gop: int, fps: float) -> None:
    # Textured, so B-frames carry real residuals and a wrongly skipped or broken frame would show.
    path = video(f"skip_gop{gop}.mp4", seconds=10.0, fps=10, gop=gop, texture=True)
    info = probe(path)
    plan = plan_timestamps(info.duration, info.fps, fps, 100)
    got = decode_frames(path, info, plan.timestamps, (56, 84))
    exact, exact_times = _decode_at(path, info, plan.timestamps, (56, 84), None)  # every frame, no seek
    assert got.timestamps == [round(max(0.0, t), 6) for t in exact_times]
    assert np.array_equal(got.frames, np.stack(exact))


def test_instants_whose_frame_was_skipped_are_decoded_again(video: VideoMaker, monkeypatch: pytest.MonkeyPatch) -> None:
    path = video("skip_gop300.mp4", seconds=10.0, fps=10, gop=300, texture=True)
    info = probe(path)
    plan = plan_timestamps(info.duration, info.fps, 2.0, 100)
    exact, exact_times = _decode_at(path, info, plan.timestamps, (56, 84), None)
    # As if the index named no frame as shown: every non-reference frame is skipped, shown ones included.
    monkeypatch.setattr("worker.decode._shown_packets", lambda timestamps, packet_times: set())
    index = _packet_index(path, info.start_time)
    _, skipped_times = _decode_at(path, info, plan.timestamps, (56, 84), index)
    assert _wrong_choices(plan.timestamps, skipped_times, index.times), "the test needs a wrong choice"
    got = decode_frames(path, info, plan.timestamps, (56, 84))
    assert got.timestamps == [round(t, 6) for t in exact_times]
    assert np.array_equal(got.frames, np.stack(exact))


def test_shown_packets_are_the_last_at_or_before_each_instant() -> None:
    assert _shown_packets([0.05, 0.1, 0.25, 9.0], [0.0, 0.1, 0.2, 0.3]) == {0.0, 0.1, 0.2, 0.3}
    assert _shown_packets([0.0], [0.5]) == {0.5}  # before the first packet: the first frame is shown


def test_wrong_choices_are_found() -> None:
    packets = [0.0, 0.1, 0.2, 0.3, 0.4]
    # 0.25 got 0.1 although 0.2 was there (skipped); 0.35 got 0.4 (a seek landed past it); the rest are right.
    assert _wrong_choices([0.05, 0.25, 0.35, 0.45], [0.0, 0.1, 0.4, 0.4], packets) == [1, 2]
    assert _wrong_choices([0.0], [0.0], []) == []
