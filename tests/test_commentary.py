"""Mode "commentary" without the engine (issue 19): LiveCC's turn schedule over the whole input range, the
frame size, the request rules, the conversation kept as ids (its texts equal seed 004's, windows and their
seeds), and the job flow on a fake engine (streamed turns, progress, silent turns, failures mid-video).
tests/test_commentary_engine.py runs the same on vLLM against the seed's own loop."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes import FakeEngineSlot, load_tokenizer
from worker.api.errors import EngineError, UnsupportedInputError, ValidationError
from worker.api.schema import parse_request
from worker.config import Settings
from worker.devtools.dummy_model import build_dummy_model
from worker.engine import Engine, Generation, MediaPixels, PixelLimits
from worker.job.commentary import commentary_sampling, is_silent, phrase
from worker.job.commentary_context import SEED_TURNS, Conversation
from worker.job.service import CaptionService
from worker.media.frame_plan import VisionGeometry
from worker.media.turn_plan import (
    LIVECC_MAX_PIXELS,
    LIVECC_MIN_PIXELS,
    TurnPlan,
    commentary_frame_size,
    plan_turns,
    real_time_factor,
    turn_fits,
    turn_label,
)
from worker.models.adapters.qwen2_vl import Qwen2VLAdapter

QWEN = VisionGeometry()
VIDEO_PAD = 151656
IM_END = 151645


# ---- the turn schedule ------------------------------------------------------------------------------


def frames_at(fps: float, seconds: float) -> list[float]:
    return [round(i / fps, 6) for i in range(math.floor(seconds * fps + 1e-9))]


def test_turns_of_a_16_second_video() -> None:
    turns = plan_turns(frames_at(10, 16))
    assert [(t.start, t.end) for t in turns] == [(0.0, 3.0)] + [(float(s), s + 1.0) for s in range(3, 16)]
    assert turns[0].timestamps == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5] and turns[1].timestamps == [3.0, 3.5]
    assert [t.label for t in turns[:2]] == ["Time=0.0-3.0s", "Time=3.0-4.0s"]


def test_the_commentary_ends_with_the_last_whole_turn() -> None:
    # The last frame at 5.5 s completes 5-6 s; at 5.4 s that turn lacks its second frame and is not made.
    assert plan_turns(frames_at(10, 5.6))[-1].end == 6.0
    assert plan_turns(frames_at(10, 5.5))[-1].end == 5.0


def test_a_short_video_gets_a_short_first_turn() -> None:
    """Under 3 s the first turn keeps what it got (an even count), as the seed's clip does; under 2 frames
    there is no turn."""
    assert [(t.start, t.end, len(t.timestamps)) for t in plan_turns(frames_at(10, 2.0))] == [(0.0, 3.0, 4)]
    assert plan_turns(frames_at(10, 0.5)) == plan_turns([0.0]) == []


def test_a_slow_source_never_shows_a_frame_in_two_turns() -> None:
    """The seed searches each turn's frames from the frame after the previous turn's last: a 1 fps source
    shows each frame at most once across turns (twice within one), and runs ahead of the nominal time."""
    turns = plan_turns([float(i) for i in range(10)])
    assert turns[0].timestamps == [0.0, 1.0, 1.0, 2.0, 2.0, 3.0]
    assert turns[1].timestamps == [4.0, 4.0] and turns[2].timestamps == [5.0, 5.0]


def test_frames_are_the_first_at_or_after_each_instant() -> None:
    times = [0.0, 0.04, 0.52, 0.98, 1.51, 2.03, 2.49, 3.01, 3.5]
    turns = plan_turns(times)
    assert turns[0].timestamps == [0.0, 0.52, 1.51, 1.51, 2.03, 3.01]  # 0.98 is before 1.0; 2.49 before 2.5
    assert turns[1].timestamps == [3.5, 3.5]  # searched from the frame after 3.01


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=120.0, allow_nan=False), min_size=0, max_size=400))
def test_turn_properties(raw: list[float]) -> None:
    times = sorted(set(round(t, 4) for t in raw))
    turns = plan_turns(times)
    used: list[float] = []
    for k, turn in enumerate(turns):
        assert turn.index == k
        assert turn.start == (0.0 if k == 0 else turns[k - 1].end)
        assert turn.end - turn.start == pytest.approx(3.0 if k == 0 else 1.0)
        count = len(turn.timestamps)
        assert count % 2 == 0 and (2 <= count <= 6 if k == 0 else count == 2)
        instants = [turn.start + i * 0.5 for i in range(count)]
        assert all(t >= i - 1e-6 for t, i in zip(turn.timestamps, instants))  # at or after its instant
        assert all(t in times for t in turn.timestamps)
        assert turn.timestamps == sorted(turn.timestamps)
        if used:
            assert turn.timestamps[0] > used[-1]  # never a frame of an earlier turn
        used += turn.timestamps
    if turns:  # never past the video: a turn's span ends half an interval after its last instant
        assert turns[-1].end <= max(3.0, times[-1] + 0.5 + 1e-6)
    if times and times[0] <= 1e-6 and times[-1] >= 0.5 and all(b - a <= 0.5 for a, b in zip(times, times[1:])):
        assert turns  # a source as dense as 2 fps from 0 s with a frame for 0.5 s has its first turn


def test_frame_size_within_livecc_and_the_engine() -> None:
    assert commentary_frame_size(112, 112, min_pixels=3136, max_pixels=448 * 448, geometry=QWEN) == (280, 280)
    h, w = commentary_frame_size(1080, 1920, min_pixels=3136, max_pixels=10**8, geometry=QWEN)
    assert LIVECC_MIN_PIXELS <= h * w <= LIVECC_MAX_PIXELS and h % 28 == w % 28 == 0
    h, w = commentary_frame_size(1080, 1920, min_pixels=3136, max_pixels=112 * 112, geometry=QWEN)
    assert h * w <= 112 * 112  # the engine's bound wins where the two do not overlap


def test_small_math() -> None:
    assert turn_label(14.0, 15.0) == "Time=14.0-15.0s"
    assert turn_fits(1000, 100, 20, 1120) and not turn_fits(1000, 100, 21, 1120)
    assert real_time_factor(30.0, 3.0) == 10.0 and real_time_factor(1.0, 0.0) is None


# ---- the request ------------------------------------------------------------------------------------


def parse(raw: dict[str, Any]) -> Any:
    return parse_request(raw, max_frames_limit=100)


def test_commentary_requests() -> None:
    request = parse({"video": "/v.mp4", "mode": "commentary", "stream": True, "prompt": "Commentate."})
    assert request.mode == "commentary"
    assert parse({"videos": ["/a.mp4", "/b.mp4"], "mode": "commentary", "fps": 2}).is_batch


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"fps": 1.0}, "samples at 2 fps"),
        ({"max_frames": 8}, "max_frames does not apply"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "query as prompt"),
        ({"json_schema": {"type": "object"}}, "json_schema does not apply"),
        ({"process_audio": True}, "process_audio does not apply"),
        ({"combine": "concat"}, "combine does not apply"),
        ({"chunk_seconds": 10.0}, "chunk_seconds applies"),
    ],
)
def test_options_commentary_cannot_honour_are_errors(extra: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        parse({"video": "/v.mp4", "mode": "commentary"} | extra)


def test_batch_items_keep_the_protocol() -> None:
    with pytest.raises(ValidationError, match=r"videos\[1\]: fps and max_frames"):
        parse({"videos": ["/a.mp4", {"video": "/b.mp4", "fps": 1.0}], "mode": "commentary"})
    request = parse({"videos": ["/a.mp4", {"video": "/b.mp4", "mode": "chunked"}], "mode": "commentary"})
    assert request.for_item(1).mode == "chunked" and request.for_item(0).mode == "commentary"


def test_commentary_needs_a_video() -> None:
    with pytest.raises(ValidationError, match="is for videos"):
        parse({"image": "/i.png", "mode": "commentary"})
    with pytest.raises(ValidationError, match="does not apply to a context job"):
        parse({"context": [{"start": 0, "end": 1, "caption": "x"}], "mode": "commentary", "prompt": "q"})


def test_sampling_is_the_seeds_unless_asked() -> None:
    plain = commentary_sampling(parse({"video": "/v.mp4", "mode": "commentary"}))
    assert plain == {"temperature": 0.0, "stop": [], "max_tokens": 20, "repetition_penalty": 1.05}
    asked = commentary_sampling(
        parse({"video": "/v.mp4", "mode": "commentary", "temperature": 0.5, "max_tokens": 40, "seed": 3})
    )
    assert asked["temperature"] == 0.5 and asked["max_tokens"] == 40 and asked["seed"] == 3


def test_silence_and_phrases() -> None:
    assert is_silent(" ...") and is_silent("") and not is_silent(" the ball ...")
    assert phrase(" the ball goes in ...") == "the ball goes in" and phrase("done") == "done"


# ---- the conversation as ids ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dummy_model(tmp_path_factory.mktemp("models") / "tiny-qwen2_vl", "qwen2_vl", "tiny")


@pytest.fixture(scope="module")
def tokenizer(qwen2_vl: Path) -> Any:
    return load_tokenizer(qwen2_vl)


def conversation(tokenizer: Any, **overrides: Any) -> Conversation:
    fields: dict[str, Any] = {"max_model_len": 4096, "max_tokens": 20, "max_clips": 256, "salt": "s"}
    return Conversation(Qwen2VLAdapter(), tokenizer, **(fields | overrides))


def turn(index: int) -> TurnPlan:
    start = 0.0 if index == 0 else float(index + 2)
    return TurnPlan(index, start, 3.0 if index == 0 else start + 1, [start, start + 0.5])


def test_turn_texts_are_the_seeds(tokenizer: Any) -> None:
    """The first turn: the template's whole opening (system turn included), ``Time=``, the clip, the
    query; later turns: '<|im_end|>\\n' then the user's turn alone (the seed's system_prompt_offset)."""
    adapter = Qwen2VLAdapter()
    first = adapter.commentary_turn(tokenizer, "Time=0.0-3.0s", True, "Please describe the video.", True)
    seed_first = tokenizer.apply_chat_template(
        [{"role": "user", "content": [
            {"type": "text", "text": "Time=0.0-3.0s"}, {"type": "video", "video": "x"},
            {"type": "text", "text": "Please describe the video."},
        ]}], tokenize=False, add_generation_prompt=True,
    )  # fmt: skip
    assert first == seed_first and first.startswith("<|im_start|>system")
    later = adapter.commentary_turn(tokenizer, "Time=3.0-4.0s", True, None, False)
    assert later == (
        "<|im_end|>\n<|im_start|>user\nTime=3.0-4.0s<|vision_start|><|video_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_each_turn_extends_the_ids_the_model_generated(tokenizer: Any) -> None:
    talk = conversation(tokenizer)
    first = talk.prompt(turn(0), "clip0", 300, "Q", {"do_resize": False})
    assert first.query_sent == "Q" and first.expanded == len(first.ids) - 1 + 300
    assert first.ids.count(VIDEO_PAD) == 1 and first.inputs["multi_modal_uuids"] == {"video": ["s-0"]}
    talk.commit(first, [11, 12, IM_END])
    second = talk.prompt(turn(1), "clip1", 100, "Q", {"do_resize": False})
    assert second.ids[: len(first.ids) + 2] == first.ids + [11, 12]  # the end-of-turn id dropped
    assert second.ids[len(first.ids) + 2] == IM_END  # and closed again by the next turn's text
    assert second.query_sent is None and second.inputs["multi_modal_data"] == {"video": ["clip0", "clip1"]}
    assert second.expanded == first.expanded + 2 + len(second.ids) - len(first.ids) - 2 - 1 + 100
    talk.commit(second, [13, IM_END])
    changed = talk.prompt(turn(2), "clip2", 100, "Another question", {})
    assert changed.query_sent == "Another question"


def test_a_full_context_opens_a_window_seeded_with_the_last_answers(tokenizer: Any) -> None:
    talk = conversation(tokenizer, max_model_len=1200)
    answers = []
    for k in range(40):
        prompt = talk.prompt(turn(k), f"clip{k}", 100, "Q", {})
        if prompt.reset:
            break
        answer = [1000 + k, 2000 + k, IM_END]
        answers.append(answer[:-1])
        talk.commit(prompt, answer)
    assert prompt.reset and f"turn {k}" in prompt.reset and "MAX_MODEL_LEN=1200" in prompt.reset
    assert prompt.window == 1 and prompt.query_sent == "Q"
    assert prompt.inputs["multi_modal_data"] == {"video": [f"clip{k}"]}
    seeded = min(SEED_TURNS, len(answers))
    assert f"the last {seeded} turns" in prompt.reset
    ids = prompt.ids
    for answer in answers[-seeded:]:
        assert any(ids[i : i + 2] == answer for i in range(len(ids)))
    assert ids.count(VIDEO_PAD) == 1 and prompt.expanded + 20 <= 1200


def test_the_clip_limit_opens_a_window(tokenizer: Any) -> None:
    talk = conversation(tokenizer, max_clips=3)
    for k in range(3):
        prompt = talk.prompt(turn(k), f"clip{k}", 10, "Q", {})
        talk.commit(prompt, [5, IM_END])
    prompt = talk.prompt(turn(3), "clip3", 10, "Q", {})
    assert prompt.reset and "3 clips at most" in prompt.reset
    assert prompt.inputs["multi_modal_data"]["video"] == ["clip3"]


def test_a_first_turn_that_cannot_fit_is_refused(tokenizer: Any) -> None:
    with pytest.raises(UnsupportedInputError, match="MAX_MODEL_LEN=300"):
        conversation(tokenizer, max_model_len=300).prompt(turn(0), "clip", 300, "Q", {})


# ---- the job on a fake engine -----------------------------------------------------------------------


class CommentaryFakeEngine(Engine):
    """The real Engine class with Qwen2-VL's adapter and the tiny folder's tokenizer; ``generate`` answers
    ``answers[k]`` to turn k (``fail``: the turns whose request raises) with the ids vLLM would return."""

    def __init__(self, folder: Path, answers: Callable[[int], str], fail: set[int] | None = None) -> None:
        llm = SimpleNamespace(
            vllm_config=SimpleNamespace(model_config=SimpleNamespace(max_model_len=4096, get_diff_sampling_param=dict)),
            errored=False,
        )
        pixels = MediaPixels(video=PixelLimits(3136, 448 * 448), image=PixelLimits(3136, 1280 * 28 * 28))
        super().__init__(llm, Qwen2VLAdapter(), load_tokenizer(folder), "fake/livecc", pixels)
        self.answers, self.fail = answers, fail or set()
        self.requests: list[dict[str, Any]] = []

    async def generate(
        self, inputs: dict[str, Any], sampling: dict[str, Any], request_id: str, json_schema: Any = None
    ) -> Generation:
        index = len(self.requests)
        self.requests.append(inputs)
        await asyncio.sleep(0)
        if index in self.fail:
            raise EngineError("the engine is having a bad day")
        clips = inputs["multi_modal_data"]["video"]
        expanded = len(inputs["prompt_token_ids"]) + sum(
            (len(frames) // 2) * (frames.shape[1] // 28) * (frames.shape[2] // 28) - 1 for frames, _ in clips
        )
        text = self.answers(index)
        ids = tuple(self.tokenizer.encode(text, add_special_tokens=False)) + (IM_END,)
        return Generation(text, expanded, len(ids), "stop", dict(sampling), ids, expanded // 2)


def commentary_run(
    engine: CommentaryFakeEngine, video: Path, media_dir: Path, work_dir: Path, **job: Any
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    service = CaptionService(Settings(allowed_media_roots=[media_dir], work_dir=work_dir), FakeEngineSlot(engine))
    progress: list[dict[str, Any]] = []

    async def collect() -> list[dict[str, Any]]:
        request = {"video": str(video), "mode": "commentary"} | job
        return [p.body async for p in service.run(request, None, progress.append)]

    return asyncio.run(collect()), progress


@pytest.fixture(scope="module")
def clip(video: Callable[..., Path]) -> Path:
    return video("commentary_unit.mp4", seconds=6.0, fps=10, width=112, height=112)


def test_turns_stream_in_order_and_silent_ones_are_kept(
    qwen2_vl: Path, clip: Path, media_dir: Path, work_dir: Path
) -> None:
    said = [" a man walks in ...", " ...", " he sits down ...", " ..."]
    engine = CommentaryFakeEngine(qwen2_vl, lambda k: said[k])
    parts, progress = commentary_run(engine, clip, media_dir, work_dir, stream=True)
    body = parts[-1]
    assert [p["turn"]["text"] for p in parts[:-1]] == said and all(p["num_turns"] == 4 for p in parts[:-1])
    assert progress == []  # a streamed job's turns are its parts
    assert [t["silent"] for t in body["turns"]] == [False, True, False, True]
    assert body["caption"] == "a man walks in he sits down"
    meta = body["metadata"]
    assert meta["num_turns"] == 4 and meta["num_silent"] == 2 and meta["complete"] is True
    assert meta["frame_size"] == [280, 280] and meta["context_windows"] == 1
    assert meta["prompt_tokens"] == sum(t["prompt_tokens"] for t in body["turns"])
    assert meta["prefix_cache_hit_rate"] == round(meta["cached_tokens"] / meta["prompt_tokens"], 4)
    assert [len(r["multi_modal_data"]["video"]) for r in engine.requests] == [1, 2, 3, 4]
    assert engine.requests[0]["multi_modal_uuids"]["video"][0] != engine.requests[1]["multi_modal_uuids"]["video"][1]


def test_progress_carries_the_turns_of_a_job_that_does_not_stream(
    qwen2_vl: Path, clip: Path, media_dir: Path, work_dir: Path
) -> None:
    engine = CommentaryFakeEngine(qwen2_vl, lambda k: f" turn {k} ...")
    parts, progress = commentary_run(engine, clip, media_dir, work_dir)
    assert len(parts) == 1 and [p["turns_done"] for p in progress] == [1, 2, 3, 4]
    assert progress[1]["turn"] == {"start": 3.0, "end": 4.0, "text": " turn 1 ...", "silent": False}


def test_a_failure_mid_video_keeps_what_was_said(qwen2_vl: Path, clip: Path, media_dir: Path, work_dir: Path) -> None:
    """A turn whose request fails is tried again in a new window; when that fails too, the commentary
    stops there with the turns so far and a warning: the job does not fail mid-video."""
    engine = CommentaryFakeEngine(qwen2_vl, lambda k: f" turn {k} ...", fail={2, 3})
    body = commentary_run(engine, clip, media_dir, work_dir)[0][-1]
    assert len(body["turns"]) == 2 and body["metadata"]["complete"] is False
    warnings = " ".join(body["metadata"]["warnings"])
    assert "its request failed" in warnings and "the commentary stops at 4.0 s" in warnings
    once = CommentaryFakeEngine(qwen2_vl, lambda k: f" turn {k} ...", fail={2})
    body = commentary_run(once, clip, media_dir, work_dir)[0][-1]
    assert len(body["turns"]) == 4 and body["metadata"]["complete"] is True
    assert body["turns"][2]["window"] == 1 and body["metadata"]["context_windows"] == 2


def test_a_failing_first_turn_fails_the_job(qwen2_vl: Path, clip: Path, media_dir: Path, work_dir: Path) -> None:
    engine = CommentaryFakeEngine(qwen2_vl, lambda k: "x", fail={0})
    body = commentary_run(engine, clip, media_dir, work_dir)[0][-1]
    assert body["error"]["type"] == "engine_error"


def test_a_family_without_commentary_says_so(tiny_model: Path, clip: Path, media_dir: Path, work_dir: Path) -> None:
    from tests.fakes import RecordingFakeEngine

    engine = RecordingFakeEngine(tiny_model)  # Qwen2.5-VL
    service = CaptionService(Settings(allowed_media_roots=[media_dir], work_dir=work_dir), FakeEngineSlot(engine))
    body = asyncio.run(service.handle({"video": str(clip), "mode": "commentary"}))
    assert body["error"]["type"] == "unsupported_input" and "LiveCC" in body["error"]["message"]


def test_too_short_for_a_turn(qwen2_vl: Path, video: Callable[..., Path], media_dir: Path, work_dir: Path) -> None:
    engine = CommentaryFakeEngine(qwen2_vl, lambda k: "x")
    short = video("commentary_blink.mp4", seconds=0.3, fps=10, width=112, height=112)
    body = commentary_run(engine, short, media_dir, work_dir)[0][-1]
    assert body["error"]["type"] == "unsupported_input" and "too short" in body["error"]["message"]


def test_frames_reach_the_engine_at_livecc_size(qwen2_vl: Path, clip: Path, media_dir: Path, work_dir: Path) -> None:
    engine = CommentaryFakeEngine(qwen2_vl, lambda k: " ...")
    commentary_run(engine, clip, media_dir, work_dir)
    last = engine.requests[-1]
    frames = [np.asarray(f) for f, _ in last["multi_modal_data"]["video"]]
    assert [f.shape for f in frames] == [(6, 280, 280, 3)] + [(2, 280, 280, 3)] * 3
    assert last["mm_processor_kwargs"] == {"do_resize": False}
