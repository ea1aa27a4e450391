"""PyAV decoding on generated videos: which frames, at what size, which way up, and the audio."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from worker.devtools.media import MARKER, frame_level, loop_video, make_corrupt
from worker.media.audio import decode_audio
from worker.media.frames import _decode_at, _shown_packets, _wrong_choices, decode_frames
from worker.media.probe import _packet_index, probe
from worker.api.errors import DecodeError
from worker.media.frame_plan import plan_timestamps

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


def test_a_clip_played_three_times_is_decoded_across_its_seams(video: VideoMaker, media_dir: Path) -> None:
    """The long-video benchmark's 30-minute clip is a short one remuxed back to back: both tracks run on,
    and frames sampled on either side of a seam are the source's frames at the same offset."""
    source = video("loop_source.mp4", seconds=4.0, fps=10, audio="aac")
    path = loop_video(source, media_dir / "looped.mp4", 3)
    info = probe(path)
    assert info.duration == pytest.approx(12.0, abs=0.1)
    got = decode_frames(path, info, [3.95, 4.05, 9.5], (48, 64))
    assert list(got.indices) == [39, 40, 95]
    assert [level(f) for f in got.frames] == pytest.approx(
        [frame_level(39, 40), frame_level(0, 40), frame_level(15, 40)], abs=6
    )
    audio = decode_audio(path, start=0.0, end=12.0)
    assert audio is not None and audio.samples.shape[0] == pytest.approx(12 * 16_000, abs=800)


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


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * 16_000 / len(samples))


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("a_aac.mp4", dict(audio="aac")),
        ("a_aac_mono22k.mp4", dict(audio="aac", audio_rate=22_050, audio_channels=1)),
        ("a_aac_51_48k.mp4", dict(audio="aac", audio_rate=48_000, audio_channels=6)),
        ("a_aac_8k.mp4", dict(audio="aac", audio_rate=8_000, audio_channels=1)),
        ("a_opus.mkv", dict(audio="libopus")),
        ("a_opus_51.mkv", dict(audio="libopus", audio_channels=6)),
        ("a_mp3.mkv", dict(audio="libmp3lame")),
        ("a_mp3_mono32k.mkv", dict(audio="libmp3lame", audio_rate=32_000, audio_channels=1)),
        ("a_pcm.mkv", dict(audio="pcm_s16le", audio_rate=8_000)),
        ("a_pcm_51_48k.mkv", dict(audio="pcm_s16le", audio_rate=48_000, audio_channels=6)),
    ],
)
def test_audio_is_16k_mono_float32(video: VideoMaker, name: str, kwargs: dict) -> None:
    path = video(name, seconds=3.0, **kwargs)
    info = probe(path)
    assert info.has_audio and info.audio_seconds == pytest.approx(3.0, abs=0.15)
    clip = decode_audio(path)
    assert clip is not None and clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert clip.seconds == pytest.approx(3.0, abs=0.1) and clip.start == 0.0
    # The tone survives downmixing and resampling: 440 Hz in the first half, 880 Hz in the second.
    assert dominant_hz(clip.samples[4000:20000]) == pytest.approx(440, abs=5)
    assert dominant_hz(clip.samples[28000:44000]) == pytest.approx(880, abs=5)


@pytest.mark.parametrize("start,end", [(0.0, 1.0), (1.8, 2.8), (3.5, 5.5), (4.5, 6.0), (3.2, None)])
def test_audio_window_is_cut_on_the_video_clock(video: VideoMaker, start: float, end: float | None) -> None:
    path = video("a_window.mp4", seconds=6.0, fps=5, audio="aac", gop=5)
    clip = decode_audio(path, start=start, end=end, video_start=probe(path).start_time)
    assert clip is not None and clip.start == start
    assert clip.seconds == pytest.approx((end or 6.0) - start, abs=0.03)
    middle = clip.samples[len(clip.samples) // 4 : 3 * len(clip.samples) // 4]
    assert dominant_hz(middle) == pytest.approx(440 if (start + (end or 6.0)) / 2 < 3.0 else 880, abs=8)


def test_audio_shorter_longer_or_later_than_the_video(video: VideoMaker) -> None:
    short = video("a_short.mp4", seconds=4.0, audio="aac", audio_seconds=1.5)
    assert decode_audio(short).seconds == pytest.approx(1.5, abs=0.05)  # type: ignore[union-attr]
    assert decode_audio(short, start=2.0, end=4.0).seconds == 0.0  # type: ignore[union-attr]
    long = video("a_long.mp4", seconds=2.0, audio="aac", audio_seconds=5.0)
    info = probe(long)
    assert decode_audio(long, end=info.duration, video_start=info.start_time).seconds == pytest.approx(2.0, abs=0.05)  # type: ignore[union-attr]
    late = video("a_late.mkv", seconds=3.0, audio="pcm_s16le", audio_rate=16_000, audio_seconds=2.0, audio_delay=1.0)
    clip = decode_audio(late, end=3.0, video_start=probe(late).start_time)
    assert clip is not None and clip.seconds == pytest.approx(3.0, abs=0.05)
    # Silence until the sound starts, so it stays in step with the frames.
    assert np.abs(clip.samples[:15_000]).max() < 1e-3 < np.abs(clip.samples[17_000:]).max()


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
        from worker.devtools.media import _write_tone

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
    monkeypatch.setattr("worker.media.frames._shown_packets", lambda timestamps, packet_times: set())
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


def _photo(path: Path, size: tuple[int, int], fmt: str, orientation: int = 1) -> Path:
    """A ``size`` = (width, height) picture: black, with a white top-left quarter as it is meant to be seen."""
    import PIL.Image

    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[: height // 2, : width // 2] = 255
    image = PIL.Image.fromarray(pixels)
    if orientation == 6:  # stored turned 90 degrees counter-clockwise; EXIF says turn it back clockwise
        image = image.transpose(PIL.Image.Transpose.ROTATE_90)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, format=fmt, exif=exif.tobytes()) if fmt == "JPEG" else image.save(path, format=fmt)
    return path


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_image_decodes_upright_at_the_planned_size(tmp_path: Path, fmt: str) -> None:
    from worker.media.image import decode_image, probe_image

    path = _photo(tmp_path / f"p.{fmt.lower()}", (640, 480), fmt)
    info = probe_image(path)
    assert (info.width, info.height, info.format) == (640, 480, fmt)
    pixels = decode_image(path, (224, 308))
    assert pixels.shape == (224, 308, 3) and pixels.dtype == np.uint8
    assert pixels[20, 20].min() > 200 and pixels[200, 280].max() < 50


def test_image_exif_orientation_is_applied(tmp_path: Path) -> None:
    from worker.media.image import decode_image, probe_image

    path = _photo(tmp_path / "phone.jpg", (640, 480), "JPEG", orientation=6)
    info = probe_image(path)
    assert (info.width, info.height) == (640, 480)  # stored 480x640, shown 640x480
    pixels = decode_image(path, (112, 140))
    assert pixels[10, 10].min() > 200 and pixels[100, 130].max() < 50


def test_image_too_large_is_refused_from_its_header(tmp_path: Path) -> None:
    import struct
    import zlib

    from worker.media.image import probe_image

    png = _photo(tmp_path / "small.png", (8, 8), "PNG").read_bytes()
    # Rewrite IHDR to claim 30000x30000: refused before a single pixel is decoded.
    ihdr = struct.pack(">II", 30000, 30000) + png[24:29]
    forged = png[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + png[33:]
    (tmp_path / "huge.png").write_bytes(forged)
    with pytest.raises(DecodeError, match="megapixels"):
        probe_image(tmp_path / "huge.png")


@pytest.mark.parametrize("kind", ["zero", "text"])
def test_not_an_image_is_a_decode_error(tmp_path: Path, kind: str) -> None:
    from worker.media.image import probe_image

    with pytest.raises(DecodeError, match="not a readable image"):
        probe_image(make_corrupt(tmp_path / "x.png", kind))


@pytest.mark.timeout(120)
def test_seek_that_lands_early_does_not_loop(video: VideoMaker) -> None:
    # x264's default keyframe interval at 30 fps puts keyframes at 8.333... s; the seek target rounded to the
    # container's ticks can land on the keyframe before, and seeking there again used to loop forever.
    path = video("gop_default_30fps.mp4", seconds=60.0, fps=30, width=128, height=72)
    info = probe(path)
    plan = plan_timestamps(info.duration, info.fps, 1.0, 30)
    got = decode_frames(path, info, plan.timestamps, (28, 56))
    exact, exact_times = _decode_at(path, info, plan.timestamps, (28, 56), None)
    assert got.timestamps == [round(max(0.0, t), 6) for t in exact_times]
    assert np.array_equal(got.frames, np.stack(exact))
