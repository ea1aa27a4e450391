"""Validation of what users of the documents this worker replaces (../shared/seeds/, docs/seeds.md) send:
Tarsier2's per-item batch configs and min_fps, the video-SALMONN 2 guide's top_p range, a follow-up
question over an earlier job's segments, named tasks, and stream on an endpoint that does not stream."""

from __future__ import annotations

from typing import Any

import pytest

from worker.api.errors import ValidationError
from worker.api.presets import STRUCTURED_CAPTION_SCHEMA
from worker.api.schema import DEFAULT_PROMPT, CaptionRequest, MediaSource, parse_request


def parse(**fields: object) -> CaptionRequest:
    return parse_request(fields, max_frames_limit=128)


def problems(**fields: object) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        parse(**fields)
    return {p["field"]: p["message"] for p in info.value.details}


# Tarsier2's run_batch_video_inference(video_configs=..., max_frames=128, min_fps=2.0), as a job.
TARSIER2_BATCH: dict[str, Any] = {
    "videos": [
        {"video_path": "/data/video1.mp4", "question": "Describe this video in detail."},
        {"video_path": "/data/video2.mp4", "question": "What activities are shown in this video?"},
        {"video_path": "/data/video3.mp4", "question": "Summarize the main events."},
    ],
    "max_frames": 128,
    "min_fps": 2.0,
}


def test_tarsier2_video_configs_are_a_batch_whose_items_keep_their_questions() -> None:
    req = parse(**TARSIER2_BATCH)
    assert req.is_batch and req.mode == "auto" and req.auto_min_fps == 2.0  # min_fps alone asks for mode "auto"
    assert req.sources == [MediaSource("path", f"/data/video{i}.mp4") for i in (1, 2, 3)]
    items = [req.for_item(i) for i in range(3)]
    assert [item.text for item in items] == [entry["question"] for entry in TARSIER2_BATCH["videos"]]
    assert all((item.mode, item.max_frames, item.chunk_length) == ("auto", 128, 64.0) for item in items)


def test_items_may_be_strings_or_objects_with_their_own_options() -> None:
    req = parse(
        videos=[
            "/data/a.mp4",
            {"video": "https://e.com/b.mp4", "prompt": "Count the cars.", "fps": 2.0, "max_frames": 8},
            {"video_base64": "AAAA", "mode": "chunked", "chunk_seconds": 10.0},
            {"video_url": "https://e.com/c.mp4", "mode": "auto", "min_fps": 0.5},
        ],
        prompt="Describe.",
        messages=None,
    )
    assert [s.kind for s in req.sources] == ["path", "url", "base64", "url"]
    plain, own, chunked, auto = (req.for_item(i) for i in range(4))
    assert plain is req and (plain.text, plain.fps, plain.max_frames, plain.mode) == ("Describe.", 1.0, 30, "single")
    assert (own.text, own.fps, own.max_frames, own.mode) == ("Count the cars.", 2.0, 8, "single")
    assert (chunked.mode, chunked.chunk_length, chunked.text) == ("chunked", 10.0, "Describe.")
    assert (auto.mode, auto.auto_min_fps, auto.chunk_length) == ("auto", 0.5, 60.0)
    images = parse(images=[{"image_path": "/data/a.png", "question": "What is in this image?"}, "/data/b.png"])
    assert images.for_item(0).text == "What is in this image?"
    assert images.for_item(1).text == "Describe this image in detail."


def test_an_items_prompt_replaces_the_jobs_messages() -> None:
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is it?"}]
    req = parse(videos=[{"video": "/a.mp4", "prompt": "Own question."}, "/b.mp4"], messages=turns)
    assert req.for_item(0).conversation[0].content == "Own question." and req.for_item(0).messages is None
    assert req.for_item(1).text == "What is it?"


def test_bad_items_are_named_by_index() -> None:
    found = problems(videos=["/a.mp4", {"video": "/b.mp4", "fps": 99, "colour": "red"}, {"prompt": "no video"}])
    assert set(found) == {"videos[1].fps", "videos[1].colour", "videos[2]"}
    assert "exactly one of video, video_url, video_path, video_base64" in found["videos[2]"]
    assert "MAX_FRAMES_LIMIT" in problems(videos=[{"video": "/a.mp4", "max_frames": 129}])["videos[0].max_frames"]
    assert "videos[0]" in problems(videos=[3])
    assert "images[0].fps" in problems(images=[{"image": "/a.png", "fps": 2.0}])  # options are for videos
    assert "videos[0].video_path" in problems(videos=[{"video_path": "relative.mp4"}])


def test_mode_auto_and_min_fps() -> None:
    assert parse(video="/a.mp4", mode="auto").auto_min_fps == 1.0  # min_fps defaults to fps
    assert parse(video="/a.mp4", min_fps=2.0, mode="auto").chunk_length == 15.0  # 30 frames / 2 fps
    assert "min_fps" in problems(video="/a.mp4", min_fps=0.05)
    assert 'min_fps applies to mode "auto" only' in problems(video="/a.mp4", mode="chunked", min_fps=2.0)["input"]
    found = problems(video="/a.mp4", mode="auto", chunk_seconds=9)["input"]
    assert 'chunk_seconds applies to mode "chunked" only' in found
    assert parse(video="/a.mp4", mode="auto", combine="concat").combine_method == "concat"
    assert 'mode "auto" is for videos' in problems(image="/a.png", mode="auto")["input"]
    # In a batch the job's chunk settings are the items' defaults: fine while one item uses them.
    mixed = parse(videos=["/a.mp4", {"video": "/b.mp4", "mode": "chunked"}], chunk_seconds=20.0)
    assert mixed.for_item(1).chunk_length == 20.0
    assert "input" in problems(videos=["/a.mp4", {"video": "/b.mp4"}], chunk_seconds=20.0)
    assert "videos[0]" in problems(videos=[{"video": "/a.mp4", "mode": "single", "min_fps": 2.0}])["input"]


def test_top_p_zero_is_accepted_and_means_greedy() -> None:
    from worker.job.generate import sampling_params

    assert parse(video="/a.mp4", top_p=0.0).top_p == 0.0
    greedy = sampling_params(parse(video="/a.mp4", top_p=0.0, temperature=0.7))
    assert (greedy["temperature"], greedy["top_p"]) == (0.0, 1.0)
    assert sampling_params(parse(video="/a.mp4", top_p=0.5))["top_p"] == 0.5
    assert "top_p" in problems(video="/a.mp4", top_p=-0.1)


def test_context_is_an_earlier_jobs_segments_or_whole_result() -> None:
    segments = [
        {"index": 1, "start": 64.0, "end": 128.0, "caption": "Then a dog runs.", "num_frames": 128},
        {"index": 0, "start": 0.0, "end": 64.0, "caption": "A man walks.", "num_frames": 128},
    ]
    req = parse(context=segments, prompt="What animal appears?")
    assert req.sources == [] and not req.is_batch and req.text == "What animal appears?"
    assert [(s.start, s.end, s.caption) for s in req.context_segments] == [
        (0.0, 64.0, "A man walks."), (64.0, 128.0, "Then a dog runs.")
    ]
    result = {"caption": "A walk.", "segments": segments, "num_chunks": 2, "metadata": {"mode": "chunked"}}
    assert len(parse(context=result, prompt="?").context_segments) == 2
    single = {"caption": "A man walks a dog.", "metadata": {"video": {"duration": 12.5, "width": 64}}}
    assert [(s.start, s.end) for s in parse(context=single).context_segments] == [(0.0, 12.5)]
    assert parse(context=single).text == DEFAULT_PROMPT


def test_bad_context() -> None:
    assert "input" in problems(context=[{"start": 0, "end": 1, "caption": "x"}], video="/a.mp4")
    assert "context" in problems(context=[])
    assert "context[0]" in problems(context=[{"start": 2.0, "end": 1.0, "caption": "x"}])
    assert "context[0].caption" in problems(context=[{"start": 0.0, "end": 1.0}])
    assert "context.caption" in problems(context={"segments": []})
    for media_option in ({"mode": "chunked"}, {"min_fps": 2.0}, {"combine": "concat"}):
        assert "context job" in problems(context=[{"start": 0, "end": 1, "caption": "x"}], **media_option)["input"]
    turns = [{"role": "user", "content": "Q?"}]
    assert "prompt, not messages" in problems(context=[{"start": 0, "end": 1, "caption": "x"}], messages=turns)["input"]


def test_structured_caption_task_is_a_schema_preset() -> None:
    req = parse(video="/a.mp4", task="structured_caption")
    assert req.json_schema == STRUCTURED_CAPTION_SCHEMA and "JSON object" in req.text
    assert parse(video="/a.mp4", task="structured_caption", prompt="Mine.").text == "Mine."
    assert parse(video="/a.mp4", task="describe").json_schema is None
    assert "task" in problems(video="/a.mp4", task="captions")
    assert "not both" in problems(video="/a.mp4", task="structured_caption", json_schema={"type": "object"})["input"]


def test_stream_is_refused_where_the_endpoint_does_not_stream() -> None:
    assert parse_request({"video": "/a.mp4", "stream": True}, max_frames_limit=100).stream
    with pytest.raises(ValidationError) as info:
        parse_request({"video": "/a.mp4", "stream": True}, max_frames_limit=100, streaming=False)
    assert info.value.details[0]["field"] == "stream" and "ENABLE_STREAMING=true" in info.value.message
    assert not parse_request({"video": "/a.mp4"}, max_frames_limit=100, streaming=False).stream


def test_control_tokens_in_item_prompts_and_context_are_refused(tiny_model: Any) -> None:
    from transformers import AutoTokenizer

    from worker.api.control_tokens import refuse_control_tokens

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    req = parse(videos=["/a.mp4", {"video": "/b.mp4", "prompt": "Hi <|im_end|>"}])
    with pytest.raises(ValidationError) as info:
        refuse_control_tokens(req, tokenizer)
    assert info.value.details[0]["field"] == "videos[1].prompt"
    req = parse(context=[{"start": 0, "end": 1, "caption": "x <|video_pad|>"}], prompt="?")
    with pytest.raises(ValidationError) as info:
        refuse_control_tokens(req, tokenizer)
    assert info.value.details[0]["field"] == "context[0].caption"
