"""Mode "commentary" and multi-turn questions end to end on the CPU engine (issue 19), against seed 004's own
loops: a tiny Qwen2-VL folder with seeded float32 weights; the worker's jobs through CaptionService in a
process of its own (worker/devtools/parity/commentary.py records every engine request); seed 004's
``live_cc`` and ``video_qa`` ported to transformers (tests/commentary_reference.py) on the frames the
worker sent. The commentary ids of the first 5 turns must be equal; streaming, progress, batches, context
windows and the prefix cache are checked on the same run, and a live HLS stream (tests/hls_server.py) is
commented as it plays. One engine for the module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.commentary_reference import LiveCCReference, Turn
from tests.conftest import KV_CACHE_GIB
from tests.hls_server import HlsServer, base_url, make_segments, serving
from worker.devtools.dummy_model import build_dummy_model
from worker.devtools.parity.weights import write_seeded_weights

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parent.parent
PARITY_TURNS = 5
MAX_MODEL_LEN = 2048  # a 16 s commentary of 280x280 frames fills it after about 11 turns: a second window
QUERY = "Comment on the match."
Q1, Q2 = "What is the video?", "How do you know that?"
QA_TOKENS = 12


@pytest.fixture(scope="module")
def hls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HlsServer]:
    """A live HLS playlist of 10 one-second segments that grows by one every 0.5 s from the first request."""
    with serving(make_segments(tmp_path_factory.mktemp("hls"), 10), interval=0.5) as server:
        yield server


@pytest.fixture(scope="module")
def run(
    tmp_path_factory: pytest.TempPathFactory, video: Callable[..., Path], media_dir: Path, hls: HlsServer
) -> dict[str, Any]:
    """The worker's run of every job: {job name: {parts, progress, requests}}, plus the folder and out dir."""
    work = tmp_path_factory.mktemp("commentary")
    folder = build_dummy_model(work / "model", "qwen2_vl", "tiny")
    write_seeded_weights(folder, seed=0)
    # MPEG-4 Part 2 (the same pixels every run, see tests/test_parity.py); 112x112 becomes LiveCC's
    # smallest frame, 280x280: 100 tokens per 2 frames.
    clip = {"fps": 10, "texture": True, "codec": "mpeg4", "width": 112, "height": 112}
    long = video("commentary_16s.mp4", seconds=16.0, seed=4, **clip)
    short = video("commentary_5s.mp4", seconds=5.0, seed=5, **clip)
    # 224x224 at 2 fps, 8 frames: 256 video tokens, so the first question's prompt spans whole KV blocks.
    qa = video("commentary_qa.mp4", seconds=4.0, seed=6, **(clip | {"width": 224, "height": 224}))
    qa_job = {"video": str(qa), "fps": 2.0, "max_frames": 8, "top_p": 0.0, "max_tokens": QA_TOKENS}
    qa_job |= {"repetition_penalty": 1.05}
    jobs = {
        "stream": {"video": str(long), "mode": "commentary", "stream": True},
        "progress": {"video": str(short), "mode": "commentary", "prompt": QUERY},
        "batch": {"videos": [str(short), str(short)], "mode": "commentary", "stream": True},
        "qa1": qa_job | {"messages": [{"role": "user", "content": Q1}]},
        "qa2": qa_job
        | {
            "messages": [
                {"role": "user", "content": Q1},
                {"role": "assistant", "content": "@answer:qa1@"},
                {"role": "user", "content": Q2},
            ]
        },
        "hls": {"video": f"{base_url(hls)}/live-stall.m3u8", "mode": "commentary", "stream": True, "max_seconds": 6},
    }
    spec = {
        "settings": {
            "model_name": str(folder),
            "load_format": "auto",
            "dtype": "float32",
            "max_model_len": MAX_MODEL_LEN,
            "enforce_eager": True,
            "max_num_seqs": 4,
            "allowed_media_roots": [str(media_dir)],
            "work_dir": str(work / "jobs"),
            "compile_cache_dir": None,
            "decode_workers": 0,
            "allow_private_urls": True,  # the HLS server is on 127.0.0.1
        },
        "jobs": jobs,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    out = work / "out"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=KV_CACHE_GIB, PYTHONUNBUFFERED="1")
    with (work / "worker.log").open("w") as log:
        done = subprocess.run(
            [sys.executable, "-m", "worker.devtools.parity.commentary", str(work / "spec.json"), str(out)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=1100,
        )  # fmt: skip
    assert done.returncode == 0, (work / "worker.log").read_text()[-6000:]
    results: dict[str, Any] = json.loads((out / "out.json").read_text())
    return {"folder": folder, "out": out, "jobs": results, "hls_segments": hls.segment_requests()}


def final(run: dict[str, Any], name: str) -> dict[str, Any]:
    body: dict[str, Any] = run["jobs"][name]["parts"][-1]
    assert "error" not in body, body
    return body


def clip_frames(run: dict[str, Any], record: dict[str, Any]) -> np.ndarray:
    return np.load(run["out"] / record["frames_file"])["frames"]


@pytest.fixture(scope="module")
def reference_turns(run: dict[str, Any]) -> dict[str, list[Turn]]:
    """Seed 004's ``live_cc`` on the worker's first turns' frames: Qwen-rule positions and the seed's own."""
    requests = run["jobs"]["stream"]["requests"][:PARITY_TURNS]
    turns = final(run, "stream")["turns"][:PARITY_TURNS]
    clips = [
        (clip_frames(run, r), [t["start"] + i / 2 for i in range(t["num_frames"])]) for r, t in zip(requests, turns)
    ]
    runs = {}
    for positions in ("qwen", "seed"):
        reference = LiveCCReference(run["folder"], positions=positions)
        runs[positions] = list(reference.live_cc(clips, None, {}, max_new_tokens=20))
    return runs


def describe(worker: dict[str, Any], reference: Turn) -> str:
    margins = [round(s[1] - s[3], 3) for s in reference.steps]
    return json.dumps(
        {"worker": worker["token_ids"], "reference": reference.token_ids, "reference_margins": margins}, indent=None
    )


@pytest.mark.parametrize("turn", range(PARITY_TURNS))
def test_commentary_ids_equal_the_seed_loop(
    run: dict[str, Any], reference_turns: dict[str, list[Turn]], turn: int
) -> None:
    """Issue 19 item 5: turn by turn, the conversation the worker sent (vLLM's expanded prompt ids) is the
    seed's ``past_ids`` plus the turn's ids, and the generated ids are equal."""
    worker = run["jobs"]["stream"]["requests"][turn]
    reference = reference_turns["qwen"][turn]
    assert worker["prompt_token_ids"] == reference.prompt_ids, f"turn {turn}: prompt ids differ"
    assert worker["token_ids"] == reference.token_ids, describe(worker, reference)
    assert len(worker["token_ids"]) >= 1


def test_seed_positions_differ_only_after_the_first_clip(
    run: dict[str, Any], reference_turns: dict[str, list[Turn]]
) -> None:
    """The seed's code as it is (later clips at text positions) agrees on the first turn, whose positions
    are the same; docs/commentary.md says why the worker keeps the trained positions after it."""
    worker = run["jobs"]["stream"]["requests"]
    seed = reference_turns["seed"]
    assert worker[0]["token_ids"] == seed[0].token_ids
    equal = [w["token_ids"] == s.token_ids for w, s in zip(worker, seed)]
    print(f"\nseed-positions reference equal per turn: {equal}")


def test_turns_follow_the_livecc_protocol(run: dict[str, Any]) -> None:
    """fps 2, a first turn of 6 frames (3 s), then 2 frames a turn; each turn opens with Time=...; the
    query goes with the first turn only; every turn streams as it is answered, in order, then the result."""
    parts = run["jobs"]["stream"]["parts"]
    body = final(run, "stream")
    turns = body["turns"]
    assert len(turns) == 14  # 0-3 s, then one a second up to 16 s
    assert [p["turn"] for p in parts[:-1]] == turns
    assert all(p["num_turns"] == len(turns) for p in parts[:-1])
    assert [(t["start"], t["end"]) for t in turns] == [(0.0, 3.0)] + [(float(s), float(s + 1)) for s in range(3, 16)]
    assert [t["num_frames"] for t in turns] == [6] + [2] * 13
    assert turns[0]["frame_timestamps"] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert turns[5]["frame_timestamps"] == [7.0, 7.5]
    meta = body["metadata"]
    assert meta["mode"] == "commentary" and meta["complete"] is True and meta["num_turns"] == 14
    assert meta["protocol"] | {} == {
        "fps": 2.0, "initial_frames": 6, "frames_per_turn": 2, "query": "Please describe the video.",
        "max_tokens_per_turn": 20, "repetition_penalty": 1.05,
    }  # fmt: skip
    assert meta["sampling"]["temperature"] == 0.0 and meta["sampling"]["repetition_penalty"] == 1.05
    assert meta["frame_size"] == [280, 280] and meta["num_frames"] == 6 + 2 * 13
    assert meta["time_to_first_turn"] > 0 and meta["real_time_factor"] > 0
    assert all(t["silent"] == (t["text"].strip() in ("", "...")) for t in turns)


def test_prompt_extends_the_generated_ids(run: dict[str, Any]) -> None:
    """Within a window each turn's prompt is the previous prompt, the previous answer's ids but the last
    (as the seed's past_ids = sequences[:, :-1]), then the new turn: nothing is tokenized twice."""
    requests = run["jobs"]["stream"]["requests"]
    turns = final(run, "stream")["turns"]
    for k in range(1, len(requests)):
        if turns[k]["window"] != turns[k - 1]["window"]:
            continue
        before = requests[k - 1]
        assert requests[k]["sent_ids"][: len(before["sent_ids"]) + len(before["token_ids"]) - 1] == (
            before["sent_ids"] + before["token_ids"][:-1]
        ), f"turn {k}"
        assert requests[k]["num_videos"] == requests[k - 1]["num_videos"] + 1


def test_prefix_cache_serves_all_but_the_new_turn(run: dict[str, Any]) -> None:
    """Each turn re-sends the conversation; vLLM's prefix cache serves it (whole blocks of it), so a turn
    prefills little more than its clip and words. The hit rate is reported per turn and overall."""
    requests = run["jobs"]["stream"]["requests"]
    turns = final(run, "stream")["turns"]
    block = 128  # the CPU backend's KV block; the cache serves whole blocks
    for k in range(1, len(turns)):
        assert turns[k]["cached_tokens"] == requests[k]["cached_tokens"]
        assert turns[k]["prefix_cache_hit_rate"] == round(turns[k]["cached_tokens"] / turns[k]["prompt_tokens"], 4)
        if turns[k]["window"] == turns[k - 1]["window"]:
            known = len(requests[k - 1]["prompt_token_ids"]) + len(requests[k - 1]["token_ids"]) - 1
            assert turns[k]["cached_tokens"] >= known - block, f"turn {k}"
    meta = final(run, "stream")["metadata"]
    assert meta["cached_tokens"] == sum(t["cached_tokens"] for t in turns)
    assert meta["prefix_cache_hit_rate"] > 0.5


def test_a_full_context_starts_a_seeded_window(run: dict[str, Any]) -> None:
    """MAX_MODEL_LEN bounds the conversation: when the next turn would not fit, a new window starts with
    the last turns' words (their answer ids, no frames), the query again, and a warning; the video goes on."""
    body = final(run, "stream")
    turns, requests = body["turns"], run["jobs"]["stream"]["requests"]
    first_new = next(k for k, t in enumerate(turns) if t["window"] == 1)
    assert body["metadata"]["context_windows"] == 2 and body["metadata"]["complete"] is True
    assert any("MAX_MODEL_LEN=2048" in w and "context window 1" in w for w in body["metadata"]["warnings"])
    assert all(len(r["prompt_token_ids"]) + 20 <= MAX_MODEL_LEN for r in requests)
    opening = requests[first_new]
    assert opening["num_videos"] == 1 and opening["sent_ids"][:3] == requests[0]["sent_ids"][:3]
    last_answer = requests[first_new - 1]["token_ids"][:-1]
    sent = opening["sent_ids"]
    assert any(sent[i : i + len(last_answer)] == last_answer for i in range(len(sent))), "the last answer is seeded"
    assert turns[-1]["end"] == 16.0


def test_progress_reports_each_turn(run: dict[str, Any]) -> None:
    """Without stream, each turn is a progress update (RunPod's progress_update); the query given is the
    first turn's."""
    body = final(run, "progress")
    progress = run["jobs"]["progress"]["progress"]
    assert len(run["jobs"]["progress"]["parts"]) == 1
    assert [p["turns_done"] for p in progress] == list(range(1, len(body["turns"]) + 1))
    assert [p["turn"]["text"] for p in progress] == [t["text"] for t in body["turns"]]
    assert body["metadata"]["protocol"]["query"] == QUERY
    assert [(t["start"], t["end"]) for t in body["turns"]] == [(0.0, 3.0), (3.0, 4.0), (4.0, 5.0)]


def test_batch_items_stream_their_turns(run: dict[str, Any]) -> None:
    parts = run["jobs"]["batch"]["parts"]
    body = final(run, "batch")
    assert body["metadata"]["num_failed"] == 0
    turn_parts = [p for p in parts if "turn" in p]
    assert sorted({p["item"] for p in turn_parts}) == [0, 1]
    for index, result in enumerate(body["results"]):
        assert [p["turn"] for p in turn_parts if p["item"] == index] == result["turns"]
        assert len(result["turns"]) == 3 and result["metadata"]["complete"] is True
    # The same frames and the same conversation, side by side in one batch: the same commentary.
    first, second = ([t["text"] for t in r["turns"]] for r in body["results"])
    assert first == second


def test_follow_up_question_reuses_the_prefix_cache(run: dict[str, Any]) -> None:
    """Issue 19 item 4: a second question over the same video, with the first answer, as messages: the video
    is in the first turn only, and the prefix cache serves the video and the first exchange."""
    first, second = run["jobs"]["qa1"]["requests"][0], run["jobs"]["qa2"]["requests"][0]
    assert first["num_videos"] == second["num_videos"] == 1
    shared = first["prompt_token_ids"]
    assert second["prompt_token_ids"][: len(shared)] == shared
    block = 128  # the CPU backend's KV block: the cache serves every whole block of the shared prefix
    assert len(shared) >= 2 * block and second["cached_tokens"] >= len(shared) // block * block
    assert final(run, "qa2")["caption"] == second["text"]


def test_video_qa_follows_the_seed(run: dict[str, Any]) -> None:
    """Seed 004's ``video_qa`` on the worker's frames: the first answer's prompt and ids are equal. The seed
    continues from its own ids; a client sends the answer back as text, so the second prompt is the seed's
    layout with that text: the first prompt, the answer as the tokenizer reads it, then the seed's next turn
    (``'<|im_end|>\\n'`` and the user's turn without the system prompt)."""
    first, second = run["jobs"]["qa1"]["requests"][0], run["jobs"]["qa2"]["requests"][0]
    reference = LiveCCReference(run["folder"])
    one = reference.video_qa(Q1, {}, clip_frames(run, first), max_new_tokens=QA_TOKENS)
    assert first["prompt_token_ids"] == one.prompt_ids
    assert first["token_ids"] == one.token_ids, describe(first, one)
    tokenizer = reference.processor.tokenizer
    answer = tokenizer.encode(final(run, "qa1")["caption"], add_special_tokens=False)
    follow_up = tokenizer.encode(reference.follow_up_text(Q2), add_special_tokens=False)
    assert second["prompt_token_ids"] == one.prompt_ids + answer + follow_up


def test_a_live_hls_stream_is_commented_as_it_plays(run: dict[str, Any]) -> None:
    """Issue 19 item 3 end to end: a live HLS playlist that grows while the job runs, read up to
    max_seconds; its turns are LiveCC's, stream as they are answered and cover the stream up to
    max_seconds, each segment fetched once."""
    parts = run["jobs"]["hls"]["parts"]
    body = final(run, "hls")
    turns = body["turns"]
    assert [(t["start"], t["end"]) for t in turns] == [(0.0, 3.0), (3.0, 4.0), (4.0, 5.0), (5.0, 6.0)]
    assert [p["turn"] for p in parts[:-1]] == turns
    assert [t["num_frames"] for t in turns] == [6, 2, 2, 2] and turns[3]["frame_timestamps"] == [5.0, 5.5]
    meta = body["metadata"]
    assert meta["complete"] is True and meta["video"]["duration"] == 6.0 and meta["frame_size"] == [280, 280]
    requests = run["jobs"]["hls"]["requests"]
    assert [r["num_videos"] for r in requests] == [1, 2, 3, 4]  # one conversation, extended turn by turn
    assert run["hls_segments"] == [f"/seg/{i}.ts" for i in range(6)]
