"""Request validation: defaults, ranges, unknown fields, media-source rules."""

from __future__ import annotations

import base64

import pytest

from worker.api.errors import ValidationError
from worker.api.schema import PATH_MAX, CaptionRequest, MediaSource, classify_video, parse_request


def parse(**fields: object) -> CaptionRequest:
    return parse_request(fields, max_frames_limit=100)


def problems(**fields: object) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        parse(**fields)
    return {p["field"]: p["message"] for p in info.value.details}


def test_defaults() -> None:
    req = parse(video="https://example.com/v.mp4")
    assert (req.text, req.fps, req.max_frames, req.temperature, req.top_p, req.max_tokens) == (
        "Describe this video in detail.", 1.0, 30, 0.7, 0.9, 512
    )
    assert req.process_audio is False and req.top_k is None and req.stop_list == []
    assert req.media_type == "video" and parse(image="/tmp/a.png").text == "Describe this image in detail."


@pytest.mark.parametrize(
    "field,value",
    [
        ("fps", 0.09), ("fps", 30.5), ("max_frames", 0), ("max_frames", 101), ("temperature", -0.1),
        ("temperature", 2.1), ("top_p", -0.01), ("top_p", 1.01), ("max_tokens", 0), ("max_tokens", 2049),
        ("top_k", 0), ("repetition_penalty", 0.0), ("seed", -1), ("fps", float("nan")), ("fps", "2"),
        ("process_audio", "true"), ("max_frames", 3.0), ("prompt", ""), ("stop", [""]), ("stop", 5),
    ],
)
def test_out_of_range_or_wrong_type_is_rejected_not_clamped(field: str, value: object) -> None:
    assert field in problems(video="https://e.com/v.mp4", **{field: value})


@pytest.mark.parametrize("field,value", [("fps", 0.1), ("fps", 30), ("max_frames", 1), ("max_frames", 100),
                                         ("temperature", 0), ("temperature", 2), ("top_p", 0), ("top_p", 1),
                                         ("max_tokens", 2048)])
def test_boundaries_are_accepted(field: str, value: object) -> None:
    assert getattr(parse(video="https://e.com/v.mp4", **{field: value}), field) == value


def test_every_bad_field_is_named() -> None:
    found = problems(video="https://e.com/v.mp4", fps=99, temperature=5, colour="red")
    assert set(found) == {"fps", "temperature", "colour"}


def test_max_frames_limit_comes_from_the_deployment() -> None:
    assert parse_request({"video": "/tmp/a.mp4", "max_frames": 150}, max_frames_limit=200).max_frames == 150
    with pytest.raises(ValidationError, match="MAX_FRAMES_LIMIT"):
        parse_request({"video": "/tmp/a.mp4", "max_frames": 20}, max_frames_limit=10)


def test_input_must_be_an_object() -> None:
    for raw in (None, "video", [1], 3):
        with pytest.raises(ValidationError, match="JSON object"):
            parse_request(raw, max_frames_limit=100)


def test_exactly_one_source() -> None:
    assert "input" in problems()
    assert "input" in problems(video="/tmp/a.mp4", video_url="https://e.com/a.mp4")


def test_long_bad_input_is_truncated_in_details() -> None:
    with pytest.raises(ValidationError) as info:
        parse(video="https://e.com/v.mp4", stop=["a" * 1000])
    for p in info.value.details:
        assert len(repr(p.get("input", ""))) < 120


B64 = base64.b64encode(b"\x00\x00\x00\x20ftypisom" + bytes(100)).decode()


@pytest.mark.parametrize(
    "value,kind,payload",
    [
        ("https://e.com/v.mp4?sig=1", "url", None),
        ("HTTP://E.COM/v.mp4", "url", None),
        ("/runpod-volume/clips/a b.mp4", "path", None),
        (B64, "base64", B64),
        (f"data:video/mp4;base64,{B64}", "base64", B64),
        (f"data:video/mp4;codecs=avc1;base64,{B64}", "base64", B64),
        ("/" + "A" * PATH_MAX, "base64", None),  # too long for a path: base64 that starts with "/"
    ],
)
def test_video_source_rules(value: str, kind: str, payload: str | None) -> None:
    source = classify_video(value)
    assert source.kind == kind
    if payload is not None:
        assert source.value == payload


@pytest.mark.parametrize("value", ["file:///etc/passwd", "ftp://e.com/a.mp4", "data:video/mp4,notbase64"])
def test_rejected_sources(value: str) -> None:
    assert "video" in problems(video=value)
    assert "image" in problems(image=value)


def test_explicit_source_fields() -> None:
    assert parse(video_base64="/9j/4AAQ").source == MediaSource("base64", "/9j/4AAQ")
    assert parse(video_base64=f"data:video/mp4;base64,{B64}").source == MediaSource("base64", B64)
    assert parse(video_path="/tmp/x.mp4").source == MediaSource("path", "/tmp/x.mp4")
    assert parse(video_url="https://e.com/x").source.kind == "url"
    assert "video_path" in problems(video_path="relative/x.mp4")
    assert "video_url" in problems(video_url="/tmp/x.mp4")


def test_image_sources_follow_the_video_rules() -> None:
    assert parse(image="/tmp/a.png").source == MediaSource("path", "/tmp/a.png", "image")
    assert parse(image=f"data:image/png;base64,{B64}").source == MediaSource("base64", B64, "image")
    assert parse(image_url="https://e.com/a.jpg").source == MediaSource("url", "https://e.com/a.jpg", "image")
    assert parse(image_base64=B64).source == MediaSource("base64", B64, "image")
    assert parse(image_path="/tmp/a.png").media_type == "image"
    assert "image_path" in problems(image_path="a.png")
    assert "image_url" in problems(image_url="ftp://e.com/a.png")


def test_one_medium_per_job() -> None:
    assert "video, video_url" in problems(video="/tmp/a.mp4", image="/tmp/a.png")["input"]


def test_source_description_never_contains_the_payload() -> None:
    assert B64 not in classify_video(B64).describe()


def test_chunked_mode_fields() -> None:
    req = parse(video="/tmp/a.mp4", mode="chunked", fps=0.5, max_frames=32)
    assert (req.chunk_length, req.combine_method, req.stream) == (64.0, "summary", False)
    req = parse(video="/tmp/a.mp4", mode="chunked", chunk_seconds=10, combine="concat", stream=True)
    assert (req.chunk_length, req.combine_method, req.stream) == (10.0, "concat", True)
    assert parse(video="/tmp/a.mp4").mode == "single"
    for bad in ({"mode": "chunks"}, {"mode": "chunked", "chunk_seconds": 0.5}, {"mode": "chunked", "combine": "x"},
                {"mode": "chunked", "chunk_seconds": 3601}, {"stream": "yes"}):
        assert set(problems(video="/tmp/a.mp4", **bad)) & {"mode", "chunk_seconds", "combine", "stream"}
    # Chunk settings without chunked mode would be silently ignored: an error instead.
    assert "chunked" in problems(video="/tmp/a.mp4", chunk_seconds=10)["input"]
    assert "chunked" in problems(video="/tmp/a.mp4", combine="concat")["input"]
    assert "for videos" in problems(image="/tmp/a.png", mode="chunked")["input"]


def test_batch_sources_in_order() -> None:
    req = parse(videos=["https://e.com/a.mp4", "/tmp/b.mp4", f"data:video/mp4;base64,{B64}"])
    assert req.is_batch and req.media_type == "video"
    assert req.sources == [
        MediaSource("url", "https://e.com/a.mp4"), MediaSource("path", "/tmp/b.mp4"), MediaSource("base64", B64)
    ]
    assert parse(images=["/tmp/a.png"]).sources == [MediaSource("path", "/tmp/a.png", "image")]
    assert not parse(video="/tmp/a.mp4").is_batch
    # A malformed item is named by its index; a batch is one source among the others.
    assert "videos[1]" in problems(videos=["/tmp/a.mp4", "ftp://e.com/b.mp4"])
    assert "videos" in problems(videos=[])
    assert "input" in problems(videos=["/tmp/a.mp4"], video="/tmp/b.mp4")
    assert "input" in problems(videos=["/tmp/a.mp4"], images=["/tmp/b.png"])
    with pytest.raises(ValidationError, match="MAX_BATCH_ITEMS"):
        parse_request({"videos": ["/tmp/a.mp4"] * 3}, max_frames_limit=100, max_batch_items=2)


def test_messages() -> None:
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is it?"},
             {"role": "assistant", "content": "A dog."}, {"role": "user", "content": "What colour?"}]
    req = parse(video="/tmp/a.mp4", messages=turns)
    assert req.text == "What colour?" and [m.role for m in req.conversation] == ["system", "user", "assistant", "user"]
    assert [m.content for m in parse(video="/tmp/a.mp4", prompt="Hi").conversation] == ["Hi"]
    assert "last message" in problems(video="/tmp/a.mp4", messages=turns[:3])["messages"]
    assert "only come first" in problems(video="/tmp/a.mp4", messages=[turns[1], turns[0], turns[1]])["messages"]
    assert "prompt or messages" in problems(video="/tmp/a.mp4", messages=turns, prompt="x")["input"]
    found = problems(video="/tmp/a.mp4", messages=[{"role": "tool", "content": "x"}, {"role": "user", "content": ""}])
    assert {"messages[0].role", "messages[1].content"} <= set(found)
    assert "messages[0].name" in problems(video="/tmp/a.mp4", messages=[{"role": "user", "content": "x", "name": "a"}])
    assert "messages" in problems(video="/tmp/a.mp4", messages=[])


def test_json_schema_is_checked_against_its_metaschema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}, "required": ["n"]}
    assert parse(video="/tmp/a.mp4", json_schema=schema).json_schema == schema
    draft7 = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "array", "items": [{"type": "string"}]}
    assert parse(video="/tmp/a.mp4", json_schema=draft7).json_schema == draft7
    for bad, where in (({"type": "colour"}, "type"), ({"properties": 5}, "properties"),
                       ({"type": "string", "pattern": "(("}, "pattern"), ({"minimum": "0"}, "minimum")):
        message = problems(video="/tmp/a.mp4", json_schema=bad)["json_schema"]
        assert message.startswith("not a valid JSON Schema") and where in message
    assert "json_schema" in problems(video="/tmp/a.mp4", json_schema="{}")
