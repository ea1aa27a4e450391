"""Sampling and sizing math, over the whole input range."""

from __future__ import annotations

import functools
import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.api.errors import UnsupportedInputError
from worker.media.frame_plan import (
    audio_window,
    auto_chunk_seconds,
    MAX_ASPECT_RATIO,
    ChunkPlan,
    ModelLimits,
    Sampling,
    VisionGeometry,
    chunk_bounds,
    fit_frame_size,
    fit_image_size,
    plan_chunks,
    plan_timestamps,
    plan_video_frames,
    smart_resize,
    sound_window,
    video_tokens,
    visual_token_budget,
)

QWEN = VisionGeometry()
durations = st.floats(min_value=0.01, max_value=4 * 3600, allow_nan=False)
native = st.one_of(st.none(), st.floats(min_value=1.0, max_value=240.0))


@given(durations, native, st.floats(min_value=0.1, max_value=30.0), st.integers(1, 100), st.sampled_from([1, 2]))
def test_timestamps_properties(duration: float, fps: float | None, req: float, max_frames: int, multiple: int) -> None:
    plan = plan_timestamps(duration, fps, req, max_frames, frame_multiple=multiple)
    ts = plan.timestamps
    assert 1 <= len(ts) <= max_frames
    assert all(0 <= t < duration for t in ts)
    assert all(a < b for a, b in zip(ts, ts[1:]))
    if len(ts) >= multiple:
        assert len(ts) % multiple == 0
    rate = req if fps is None else min(req, fps)
    # Never denser than the rate asked for (and the native rate); one frame minimum.
    assert len(ts) <= max(1, math.floor(duration * rate + 1e-6))
    assert plan.fps_used == pytest.approx(len(ts) / duration)
    # Uniform: equal gaps, up to the rounding of each timestamp to 1e-6 s (two gaps may then differ by 2e-6, and
    # by a float's noise more: 1.5 s at 22 fps with 32 frames gave 2.0000000003e-6).
    gaps = [b - a for a, b in zip(ts, ts[1:])]
    assert all(g == pytest.approx(gaps[0], abs=2.5e-6) for g in gaps)


def test_timestamps_examples() -> None:
    assert plan_timestamps(10.0, 30.0, 1.0, 30).timestamps == [i + 0.5 for i in range(10)]
    assert len(plan_timestamps(600.0, 30.0, 1.0, 30).timestamps) == 30
    # Asking for more than the video has: capped at the native rate.
    assert len(plan_timestamps(2.0, 5.0, 30.0, 100).timestamps) == 10
    # Shorter than one interval: one frame, in the middle.
    assert plan_timestamps(0.5, 30.0, 1.0, 30).timestamps == [0.25]
    assert len(plan_timestamps(7.0, 30.0, 1.0, 30, frame_multiple=2).timestamps) == 6


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan")])
def test_timestamps_reject_bad_duration(bad: float) -> None:
    with pytest.raises(ValueError):
        plan_timestamps(bad, 30.0, 1.0, 10)


sides = st.integers(1, 8000)


@given(sides, sides, st.integers(56 * 56, 1024 * 1024), st.integers(1, 16))
def test_smart_resize_properties(h: int, w: int, min_pixels: int, span: int) -> None:
    max_pixels = min_pixels * span
    if max(h, w) / min(h, w) > MAX_ASPECT_RATIO:
        with pytest.raises(UnsupportedInputError):
            smart_resize(h, w, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
        return
    rh, rw = smart_resize(h, w, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
    assert rh % 28 == 0 and rw % 28 == 0 and rh >= 28 and rw >= 28
    assert rh * rw <= max_pixels
    if max_pixels >= 2 * min_pixels:
        assert rh * rw >= min_pixels
    # Orientation is kept.
    if h >= 2 * w:
        assert rh >= rw
    if w >= 2 * h:
        assert rw >= rh


def test_smart_resize_matches_transformers_in_its_domain() -> None:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize as reference

    for h, w in [(720, 1280), (1080, 1920), (480, 640), (100, 3000), (2160, 3840), (60, 60)]:
        for lo, hi in [(56 * 56, 448 * 448), (3136, 12845056), (128 * 28 * 28, 768 * 28 * 28)]:
            assert smart_resize(h, w, factor=28, min_pixels=lo, max_pixels=hi) == reference(
                h, w, factor=28, min_pixels=lo, max_pixels=hi
            )


@given(sides, sides, st.integers(1, 100), st.integers(500, 120_000))
def test_fit_frame_size_fits_the_budget(h: int, w: int, frames: int, budget: int) -> None:
    if max(h, w) / min(h, w) > MAX_ASPECT_RATIO:
        return
    try:
        rh, rw = fit_frame_size(h, w, frames, max_visual_tokens=budget, min_pixels=56 * 56, max_pixels=448 * 448, geometry=QWEN)
    except UnsupportedInputError:
        # Only when even the smallest allowed frames would not fit.
        assert math.ceil(frames / 2) * 4 > budget
        return
    assert video_tokens(frames, rh, rw, QWEN) <= budget
    assert rh * rw <= 448 * 448


def test_fit_frame_size_example_720p() -> None:
    # 30 frames of 720p with a 32k context: capped by VIDEO_MAX_PIXELS, not by the budget.
    assert fit_frame_size(720, 1280, 30, max_visual_tokens=31_000, min_pixels=3136, max_pixels=448 * 448, geometry=QWEN) == (336, 588)
    # A 4k context forces smaller frames.
    rh, rw = fit_frame_size(720, 1280, 30, max_visual_tokens=3000, min_pixels=3136, max_pixels=448 * 448, geometry=QWEN)
    assert video_tokens(30, rh, rw, QWEN) <= 3000 and rw > rh


def test_video_tokens() -> None:
    assert video_tokens(30, 336, 588, QWEN) == 15 * 12 * 21
    assert video_tokens(1, 56, 56, QWEN) == 4


@given(
    st.floats(0.05, 20000.0),
    st.one_of(st.none(), st.floats(1.0, 240.0)),
    st.floats(0.1, 30.0),
    st.integers(1, 200),
)
def test_audio_window_covers_the_frames_and_stays_in_the_video(
    duration: float, fps: float | None, req: float, max_frames: int
) -> None:
    plan = plan_timestamps(duration, fps, req, max_frames)
    start, end = audio_window(plan.timestamps, plan.fps_used, duration)
    assert 0.0 <= start <= plan.timestamps[0] <= end <= duration + 1e-6
    assert end >= plan.timestamps[-1] - 1e-6
    # Uniform plans stand for the whole video: the window is all of it.
    assert start == pytest.approx(0.0, abs=1e-5) and end == pytest.approx(duration, abs=1e-5)


def test_audio_window_of_a_stretch() -> None:
    # Four frames at 2 fps sampled from 10..12 s (a chunk, say) stand for 10..12 s.
    assert audio_window([10.25, 10.75, 11.25, 11.75], 2.0, 60.0) == (10.0, 12.0)
    assert audio_window([59.9], 2.0, 60.0) == (59.65, 60.0)
    with pytest.raises(ValueError):
        audio_window([], 1.0, 5.0)


@settings(deadline=None)  # up to ~30k chunks per example
@given(durations, st.floats(min_value=0.5, max_value=3600.0), st.floats(min_value=0.0, max_value=5.0))
def test_chunk_bounds_tile_the_video(duration: float, chunk: float, min_last: float) -> None:
    bounds = chunk_bounds(duration, chunk, min_last=min_last)
    assert bounds[0][0] == 0.0 and bounds[-1][1] == round(duration, 6)
    # Contiguous and monotonic: each chunk starts where the previous ended.
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert all(start < end for start, end in bounds)
    # Every chunk but the last is exactly chunk_seconds long; the last is shorter, or longer by less than
    # min_last when a sliver was folded into it.
    assert all(abs(end - start - chunk) <= 2e-6 for start, end in bounds[:-1])
    last = bounds[-1][1] - bounds[-1][0]
    assert last <= chunk + min_last + 2e-6
    if len(bounds) > 1:
        assert last >= min(min_last, chunk) - 2e-6
    assert len(bounds) <= max(1, math.ceil(duration / chunk))


def test_chunk_bounds_examples() -> None:
    assert chunk_bounds(600.0, 64.0) == [(i * 64.0, min(600.0, (i + 1) * 64.0)) for i in range(10)]
    assert chunk_bounds(60.0, 30.0) == [(0.0, 30.0), (30.0, 60.0)]
    assert chunk_bounds(60.000001, 30.0) == [(0.0, 30.0), (30.0, 60.000001)]  # float noise is no chunk
    assert chunk_bounds(10.0, 30.0) == [(0.0, 10.0)]
    assert chunk_bounds(61.0, 30.0) == [(0.0, 30.0), (30.0, 60.0), (60.0, 61.0)]
    assert chunk_bounds(61.0, 30.0, min_last=2.0) == [(0.0, 30.0), (30.0, 61.0)]


@pytest.mark.parametrize("duration,chunk", [(0.0, 1.0), (10.0, 0.0), (10.0, -1.0), (float("inf"), 1.0)])
def test_chunk_bounds_reject_bad_arguments(duration: float, chunk: float) -> None:
    with pytest.raises(ValueError):
        chunk_bounds(duration, chunk)


@settings(deadline=None)
@given(
    durations,
    native,
    st.floats(min_value=0.1, max_value=30.0),
    st.integers(1, 100),
    st.floats(min_value=1.0, max_value=600.0),
    st.sampled_from([1, 2]),
)
def test_chunk_plans_sample_each_chunk_within_its_span(
    duration: float, fps: float | None, req: float, max_frames: int, chunk: float, multiple: int
) -> None:
    plans = plan_chunks(duration, fps, req, max_frames, chunk, frame_multiple=multiple)
    assert [p.index for p in plans] == list(range(len(plans)))
    assert plans[0].start == 0.0 and plans[-1].end == round(duration, 6)
    assert all(a.end == b.start for a, b in itertools.pairwise(plans))
    everything = [t for p in plans for t in p.timestamps]
    assert all(a < b for a, b in itertools.pairwise(everything))  # strictly increasing over the video
    rate = req if fps is None else min(req, fps)
    for p in plans:
        assert 1 <= len(p.timestamps) <= max_frames
        assert all(p.start <= t < p.end for t in p.timestamps)
        # Each chunk is one plan_timestamps of its own length, shifted to its start.
        local = plan_timestamps(p.end - p.start, fps, req, max_frames, frame_multiple=multiple)
        assert p.timestamps == [round(p.start + t, 6) for t in local.timestamps]
        assert p.fps_used == pytest.approx(local.fps_used)
    if len(plans) > 1:
        # A remainder shorter than one sampling interval is folded into the chunk before it.
        assert plans[-1].end - plans[-1].start >= min(1.0 / rate, chunk) - 2e-6


def test_chunk_plan_of_a_ten_minute_video() -> None:
    plans = plan_chunks(600.0, 25.0, 1.0, 30, 64.0, frame_multiple=2)
    assert len(plans) == 10 and plans[-1].start == 576.0 and plans[-1].end == 600.0
    assert [len(p.timestamps) for p in plans] == [30] * 9 + [24]
    assert plans[1].timestamps[0] == pytest.approx(64.0 + 64.0 / 30 / 2)


# ---- planning within one request of the model (ModelLimits) ----


def _reserve(base: int, chunk: ChunkPlan | None) -> int:
    """Like the job's text reserve: a chunk's prompt states its span, more digits for later chunks."""
    return base + (0 if chunk is None else len(f"{chunk.start:.1f}{chunk.end:.1f}"))


def _audio_tokens(rate: float, seconds: float) -> int:
    return math.ceil(seconds * rate)


def limits(
    *,
    max_model_len: int = 32_768,
    max_tokens: int = 512,
    reserve: int = 128,
    geometry: VisionGeometry = QWEN,
    text_tokens_per_group: int = 0,
    min_pixels: int = 56 * 56,
    max_pixels: int = 448 * 448,
    audio_rate: float = 25.0,
    supports_audio: bool = True,
    audio_covers_span: bool = False,
    max_audio_seconds: float = 300.0,
) -> ModelLimits:
    return ModelLimits(
        model="m (family)",
        max_model_len=max_model_len,
        max_tokens=max_tokens,
        text_reserve=functools.partial(_reserve, reserve),
        geometry=geometry,
        frame_multiple=geometry.temporal_patch_size,
        text_tokens_per_group=text_tokens_per_group,
        video_min_pixels=min_pixels,
        video_max_pixels=max_pixels,
        image_min_pixels=min_pixels,
        image_max_pixels=max_pixels * 4,
        audio_tokens=functools.partial(_audio_tokens, audio_rate),
        supports_audio=supports_audio,
        audio_covers_span=audio_covers_span,
        max_audio_seconds=max_audio_seconds,
    )


@given(
    st.integers(1, 1_000_000),
    st.integers(0, 5000),
    st.integers(1, 8192),
    st.integers(0, 5000),
    st.integers(0, 400),
    st.integers(0, 8),
)
def test_visual_token_budget_is_what_the_rest_leaves(
    context: int, reserve: int, max_tokens: int, audio: int, groups: int, per_group: int
) -> None:
    model = limits(max_model_len=context, max_tokens=max_tokens, text_tokens_per_group=per_group)
    budget = visual_token_budget(model, reserve, groups=groups, audio_tokens=audio)
    assert budget + reserve + max_tokens + audio + groups * per_group == context
    assert visual_token_budget(model, reserve) == context - reserve - max_tokens  # an image: no groups, no sound


geometries = st.sampled_from([QWEN, VisionGeometry(patch_size=16)])


def _chunks(duration: float, native_fps: float | None, sampling: Sampling, multiple: int) -> list[ChunkPlan]:
    if sampling.chunk_seconds is not None:
        return plan_chunks(
            duration, native_fps, sampling.fps, sampling.max_frames, sampling.chunk_seconds, frame_multiple=multiple
        )
    whole = plan_timestamps(duration, native_fps, sampling.fps, sampling.max_frames, frame_multiple=multiple)
    return [ChunkPlan(0, 0.0, duration, whole.timestamps, whole.fps_used)]


@settings(deadline=None, max_examples=300)
@given(
    duration=st.floats(min_value=0.05, max_value=3600.0),
    native_fps=native,
    height=st.integers(2, 4000),
    width=st.integers(2, 4000),
    has_audio=st.booleans(),
    fps=st.floats(min_value=0.1, max_value=10.0),
    max_frames=st.integers(1, 256),
    chunk_seconds=st.one_of(st.none(), st.floats(min_value=5.0, max_value=600.0)),
    process_audio=st.booleans(),
    context=st.integers(1024, 131_072),
    max_tokens=st.integers(1, 4096),
    per_group=st.integers(0, 12),
    geometry=geometries,
    audio_rate=st.sampled_from([0.0, 12.5, 25.0, 50.0]),
    supports_audio=st.booleans(),
    covers_span=st.booleans(),
    max_audio_seconds=st.sampled_from([30.0, 300.0]),
)
def test_every_planned_request_fits_the_context(
    duration: float,
    native_fps: float | None,
    height: int,
    width: int,
    has_audio: bool,
    fps: float,
    max_frames: int,
    chunk_seconds: float | None,
    process_audio: bool,
    context: int,
    max_tokens: int,
    per_group: int,
    geometry: VisionGeometry,
    audio_rate: float,
    supports_audio: bool,
    covers_span: bool,
    max_audio_seconds: float,
) -> None:
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        return
    model = limits(
        max_model_len=context,
        max_tokens=max_tokens,
        geometry=geometry,
        text_tokens_per_group=per_group,
        audio_rate=audio_rate,
        supports_audio=supports_audio,
        audio_covers_span=covers_span,
        max_audio_seconds=max_audio_seconds,
    )
    sampling = Sampling(fps, max_frames, chunk_seconds, process_audio)
    try:
        plan = plan_video_frames(duration, native_fps, height, width, has_audio, sampling, model)
    except UnsupportedInputError as exc:
        # Only when even frames of min_pixels do not fit next to the words and the answer, or the sound.
        chunks = _chunks(duration, native_fps, sampling, geometry.temporal_patch_size)
        groups = math.ceil(max(len(c.timestamps) for c in chunks) / geometry.temporal_patch_size)
        last = chunks[-1] if chunk_seconds is not None else None
        silent = visual_token_budget(model, model.text_reserve(last), groups=groups)
        if silent // groups * geometry.factor**2 >= 56 * 56:
            assert "process_audio false frees them" in exc.message
        return
    assert plan.chunks == _chunks(duration, native_fps, sampling, geometry.temporal_patch_size)
    assert len(plan.windows) == len(plan.chunks)
    rh, rw = plan.size
    assert rh % geometry.factor == 0 and rw % geometry.factor == 0 and rh * rw <= 448 * 448
    heard = process_audio and supports_audio and has_audio
    reserve = model.text_reserve(plan.chunks[-1] if chunk_seconds is not None else None)
    for chunk, window in zip(plan.chunks, plan.windows, strict=True):
        assert (window is not None) == heard
        audio = 0
        if window is not None:
            start, end = window
            assert 0.0 <= start <= end <= max(duration, chunk.end) + 1e-6
            assert end - start <= max_audio_seconds + 1e-9
            if covers_span:
                assert start == chunk.start
            audio = model.audio_tokens(end - start)
        groups = math.ceil(len(chunk.timestamps) / geometry.temporal_patch_size)
        # Every request holds its words (the last chunk's are the most), its frames, sound and answer.
        assert model.text_reserve(chunk if chunk_seconds is not None else None) <= reserve
        used = reserve + video_tokens(len(chunk.timestamps), rh, rw, geometry) + groups * per_group + audio + max_tokens
        assert used <= context
    if process_audio and not heard:
        assert len(plan.warnings) == 1 and "only the frames were used" in plan.warnings[0]


def test_sound_window_says_why_there_is_none_or_where_it_was_cut() -> None:
    chunk = ChunkPlan(0, 0.0, 600.0, [150.0, 450.0], 2 / 600)
    assert sound_window(chunk, 600.0, True, False, limits()) == (None, [])
    window, said = sound_window(chunk, 600.0, True, True, limits(supports_audio=False))
    assert window is None
    assert said == ["process_audio: model m (family) takes no audio input; only the frames were used"]
    window, said = sound_window(chunk, 600.0, False, True, limits())
    assert window is None and said == ["process_audio: the video has no audio track; only the frames were used"]
    assert sound_window(chunk, 600.0, True, True, limits(max_audio_seconds=900.0)) == ((0.0, 600.0), [])
    window, said = sound_window(chunk, 600.0, True, True, limits(max_audio_seconds=300.0))
    assert window == (0.0, 300.0)
    assert said == ["process_audio: the model takes at most 300 s of audio; the sound after 300.0 s was not used"]
    # A model that hears the chunk's whole span gets exactly that, within the video.
    late = ChunkPlan(1, 60.0, 120.0, [75.0, 105.0], 2 / 60)
    assert sound_window(late, 100.0, True, True, limits(audio_covers_span=True)) == ((60.0, 100.0), [])


def test_sound_that_cannot_fit_says_process_audio_frees_it() -> None:
    model = limits(max_model_len=4096, max_tokens=512, audio_rate=25.0)
    sampling = Sampling(1.0, 16, None, True)
    with pytest.raises(UnsupportedInputError, match="process_audio false frees them"):
        plan_video_frames(140.0, 25.0, 720, 1280, True, sampling, model)
    plan = plan_video_frames(140.0, 25.0, 720, 1280, True, Sampling(1.0, 16, None, False), model)
    assert plan.windows == [None] and plan.warnings == []


@given(sides, sides, st.integers(2048, 131_072), st.integers(1, 4096), st.integers(0, 8))
def test_an_image_fits_its_request(h: int, w: int, context: int, max_tokens: int, per_group: int) -> None:
    if max(h, w) / min(h, w) > MAX_ASPECT_RATIO:
        return
    model = limits(max_model_len=context, max_tokens=max_tokens, text_tokens_per_group=per_group)
    try:
        rh, rw = fit_image_size(h, w, model)
    except UnsupportedInputError:
        assert context - _reserve(128, None) - max_tokens < 4  # not even one 56x56 frame
        return
    assert video_tokens(1, rh, rw, QWEN) + _reserve(128, None) + max_tokens <= context
    assert rh % QWEN.factor == 0 and rw % QWEN.factor == 0 and rh * rw <= 448 * 448 * 4


# --- mode "auto" (Tarsier2's length-chosen chunking) ---------------------------------------------------


def test_auto_chunking_of_tarsier2s_example_gives_three_chunks() -> None:
    """180 s at max_frames 128 and min_fps 2: chunks of 128 / 2 = 64 s, ceil(180 / 64) = 3 of them."""
    assert auto_chunk_seconds(180.0, 128, 2.0) == 64.0
    assert auto_chunk_seconds(64.0, 128, 2.0) is None  # 64 s x 2 fps = 128 frames: one pass
    sampling = Sampling(2.0, 128, None, False, min_fps=2.0)
    plan = plan_video_frames(180.0, 30.0, 360, 640, False, sampling, limits())
    assert plan.chunk_seconds == 64.0
    assert [(c.start, c.end) for c in plan.chunks] == [(0.0, 64.0), (64.0, 128.0), (128.0, 180.0)]
    assert [len(c.timestamps) for c in plan.chunks] == [128, 128, 104]  # 2 fps in every chunk
    single = plan_video_frames(60.0, 30.0, 360, 640, False, sampling, limits())
    assert single.chunk_seconds is None and len(single.chunks) == 1 and len(single.chunks[0].timestamps) == 120


@given(
    st.floats(min_value=0.01, max_value=4 * 3600, allow_nan=False),
    st.integers(1, 256),
    st.floats(min_value=0.1, max_value=30.0),
)
def test_auto_chunking_properties(duration: float, max_frames: int, min_fps: float) -> None:
    chunk = auto_chunk_seconds(duration, max_frames, min_fps)
    if chunk is None:
        # One pass when max_frames frames are enough to see the whole video at min_fps.
        assert duration * min_fps <= max_frames + 1e-6
        return
    assert duration * min_fps > max_frames
    assert chunk == pytest.approx(max_frames / min_fps)  # each chunk's max_frames frames are min_fps apart
    bounds = chunk_bounds(duration, chunk)
    assert len(bounds) == math.ceil(duration / chunk - 1e-6) >= 2
    assert all(end - start <= chunk + 1e-6 for start, end in bounds)


@pytest.mark.parametrize("bad", [(0.0, 10, 1.0), (10.0, 0, 1.0), (10.0, 10, 0.0), (math.inf, 10, 1.0)])
def test_auto_chunking_rejects_impossible_inputs(bad: tuple[float, int, float]) -> None:
    with pytest.raises(ValueError):
        auto_chunk_seconds(*bad)
