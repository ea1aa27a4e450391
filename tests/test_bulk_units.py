"""Bulk captioning's pure parts: manifest lines and keys, sharding, the output file's torn-line repair,
shard merging, and the client's retry and answer handling (against httpx.MockTransport fakes)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.api.wire import parse_error as structured_error
from worker.bulk.client import Fatal, Transient, caption, final_output, send
from worker.bulk.common import record
from worker.bulk.supervisor import device_groups, visible_gpus
from worker.bulk.output import (
    OutputFileError,
    OutputWriter,
    drop_errors,
    encode,
    leftover_shards,
    merge_shards,
    scan,
    shard_path,
)
from worker.bulk.manifest import Duplicates, parse_line, read_manifest, shard_of, unique


def parse(text: str, base: Path = Path("/nonexistent"), **kwargs: Any) -> Any:
    options: dict[str, Any] = {"id_field": "id", "video_field": "video", "defaults": {}, "base_dir": base}
    return parse_line(text, 7, **(options | kwargs))


# --- manifest ---------------------------------------------------------------------------------------


def test_line_is_job_input_plus_id_with_defaults_under_it() -> None:
    entry = parse('{"id": "a", "video": "/v.mp4", "fps": 2}', defaults={"fps": 1.0, "max_tokens": 64})
    assert entry.key == "a" and entry.id_value == "a" and entry.error is None
    assert entry.job_input == {"video": "/v.mp4", "fps": 2, "max_tokens": 64}


def test_video_field_and_id_field_are_renamed(tmp_path: Path) -> None:
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "x.mp4").write_bytes(b"x")
    entry = parse('{"key": 12, "path": "clips/x.mp4"}', tmp_path, id_field="key", video_field="path")
    assert entry.key == "12" and entry.id_value == 12
    assert entry.job_input == {"video": str(tmp_path / "clips" / "x.mp4")}  # relative to the manifest


def test_relative_value_that_is_no_file_keeps_the_worker_rules() -> None:
    # Base64 can look like a relative path; only an existing file is taken as one.
    assert parse('{"id": 1, "video": "AAAAGGZ0eXBtcDQy"}').job_input == {"video": "AAAAGGZ0eXBtcDQy"}
    url = parse('{"id": 1, "video": "https://x/a.mp4"}')
    assert url.job_input == {"video": "https://x/a.mp4"}


def test_key_defaults_to_the_video_path_or_url() -> None:
    entry = parse('{"video": "/data/a.mp4"}')
    assert entry.key == "/data/a.mp4" and entry.id_value == "/data/a.mp4"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"id": 1.5, "video": "/a"}', "string or an integer"),
        ('{"id": true, "video": "/a"}', "string or an integer"),
        ('{"prompt": "hi"}', "no 'id'"),
        ('{"id": "", "video": "/a"}', "empty"),
        ('{"id": 1, "path": "/a", "video": "/b"}', "both"),
    ],
)
def test_bad_lines_become_validation_errors_keyed_by_line(text: str, says: str) -> None:
    entry = parse(text, video_field="path" if "path" in text else "video")
    assert entry.key == "line:7" and entry.id_value is None and entry.job_input == {}
    assert entry.error is not None and entry.error["error"]["type"] == "validation_error"
    assert says in entry.error["error"]["message"]


def test_options_are_left_to_the_worker_validation() -> None:
    # The manifest does not judge job fields: the handler's own validation does (same errors as /run).
    entry = parse('{"id": "x", "video": "/a.mp4", "fps": 99, "typo_field": 1}')
    assert entry.error is None and entry.job_input == {"video": "/a.mp4", "fps": 99, "typo_field": 1}


def test_read_manifest_skips_blank_lines_and_numbers_from_one(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"id": "a", "video": "/a"}\n\n   \n{"id": "b", "video": "/b"}')
    assert [(e.line, e.key) for e in read_manifest(manifest)] == [(1, "a"), (4, "b")]


def test_duplicates_are_reported_and_kept_once(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    rows = [{"id": k, "video": f"/{k}"} for k in ["a", "b", "a", "c", "a", "b"]]
    manifest.write_text("\n".join(map(json.dumps, rows)))
    duplicates = Duplicates()
    kept = list(unique(read_manifest(manifest), duplicates))
    assert [(e.key, e.line) for e in kept] == [("a", 1), ("b", 2), ("c", 4)]
    assert duplicates.lines == {"a": [1, 3, 5], "b": [2, 6]}
    assert "2 duplicate keys" in duplicates.summary()


# --- sharding ---------------------------------------------------------------------------------------


@given(st.lists(st.text(min_size=1), unique=True, max_size=200), st.integers(1, 16))
def test_every_key_is_in_exactly_one_shard(keys: list[str], shards: int) -> None:
    owners = {key: [i for i in range(shards) if shard_of(key, shards) == i] for key in keys}
    assert all(len(owner) == 1 for owner in owners.values())
    assert sum(len([k for k in keys if shard_of(k, shards) == i]) for i in range(shards)) == len(keys)


def test_sharding_is_stable_across_processes_and_spreads_keys() -> None:
    # Fixed values: a different hash (or Python's salted hash()) would reshuffle a resumed run.
    assert [shard_of(k, 4) for k in ["a", "b", "video-0001", "/data/x.mp4"]] == [2, 2, 3, 2]
    assert [shard_of(k, 2) for k in "abcd"] == [0, 0, 0, 1]
    counts = [sum(shard_of(f"key-{i}", 4) == s for i in range(4000)) for s in range(4)]
    assert min(counts) > 900


def test_device_groups() -> None:
    assert device_groups(1, 1, None) == [""] and device_groups(1, 2, "4,5") == ["4,5"]
    assert device_groups(2, 1, None) == ["0", "1"]
    assert device_groups(2, 1, "3,5,7") == ["3", "5"]
    assert device_groups(2, 2, "0,1,2,3") == ["0,1", "2,3"]
    with pytest.raises(SystemExit, match="needs 4 devices"):
        device_groups(2, 2, "0,1")


def test_visible_gpus() -> None:
    assert visible_gpus("0,1") == 2 and visible_gpus("") == 0 and visible_gpus("3") == 1


# --- output file ------------------------------------------------------------------------------------


def lines(*records: dict[str, Any]) -> bytes:
    return b"".join(encode(r) for r in records)


def ok(key: Any) -> dict[str, Any]:
    return {"id": key, "line": 1, "result": {"caption": f"c{key}"}}


def failed(key: Any, kind: str = "decode_error") -> dict[str, Any]:
    return {"id": key, "line": 1, "error": {"type": kind, "message": "m"}}


def test_scan_reads_keys_and_error_types(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(lines(ok("a"), failed(2), {"id": None, "line": 9, "error": {"type": "validation_error"}}))
    found = scan(out, "id")
    assert found.keys == {"a", "2", "line:9"} and found.errors == {"2": "decode_error", "line:9": "validation_error"}
    assert found.torn_bytes == 0


@pytest.mark.parametrize("tail", [b'{"id": "c", "line": 3, "res', b'{"id":"c","line":3,"result":{}}', b"\0\0\0\0"])
def test_a_torn_last_line_is_cut_off(tmp_path: Path, tail: bytes) -> None:
    # A line counts only with its newline: even a complete-looking record without one is redone.
    out = tmp_path / "out.jsonl"
    good = lines(ok("a"), ok("b"))
    out.write_bytes(good + tail)
    found = scan(out, "id")
    assert found.keys == {"a", "b"} and found.torn_bytes == len(tail)
    assert out.read_bytes() == good
    assert scan(out, "id").torn_bytes == 0


def test_scan_without_repair_leaves_the_file(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(lines(ok("a")) + b"{")
    assert scan(out, "id", repair=False).torn_bytes == 1 and out.read_bytes().endswith(b"{")


def test_a_foreign_line_inside_the_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    content = lines(ok("a")) + b"hello\n" + lines(ok("b"))
    out.write_bytes(content)
    with pytest.raises(OutputFileError, match="not a bulk output record"):
        scan(out, "id")
    assert out.read_bytes() == content


def test_writer_appends_whole_lines(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(lines(ok("a")))
    with OutputWriter(out) as writer:
        writer.write(ok("b"))
        writer.write({"id": "ü", "line": 2, "result": {"caption": "naïve"}})
    assert scan(out, "id").keys == {"a", "b", "ü"}
    assert "naïve" in out.read_text(encoding="utf-8")


def test_record_carries_id_line_and_result_or_error() -> None:
    from argparse import Namespace

    from worker.bulk.manifest import Entry

    entry = Entry(line=3, key="k", id_value="k", job_input={"video": "/a"})
    args = Namespace(id_field="id")
    assert record(entry, args, {"caption": "x"}) == {"id": "k", "line": 3, "result": {"caption": "x"}}
    assert record(entry, args, {"error": {"type": "t"}}) == {"id": "k", "line": 3, "error": {"type": "t"}}


def test_merge_appends_missing_keys_once_and_removes_shards(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(lines(ok("a")))
    s0, s1 = shard_path(out, 0, 2), shard_path(out, 1, 2)
    # "a" is in the output and in shard 0: the state a crash between appending and unlinking leaves.
    s0.write_bytes(lines(ok("a"), ok("b")) + b'{"id": "torn')
    s1.write_bytes(lines(failed("c"), ok("d")))
    other = tmp_path / "other.jsonl.shard-0-of-2"
    other.write_bytes(lines(ok("z")))
    assert leftover_shards(out) == [s0, s1]
    assert merge_shards(out, leftover_shards(out), "id") == 3
    assert not s0.exists() and not s1.exists() and other.exists()
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == ["a", "b", "c", "d"]
    assert merge_shards(out, leftover_shards(out), "id") == 0


def test_drop_errors_rewrites_without_error_lines(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(lines(ok("a"), failed("b"), ok("c"), failed("d", "fetch_error")) + b"{torn")
    assert drop_errors(out, "id") == 2
    assert scan(out, "id").keys == {"a", "c"} and list(tmp_path.iterdir()) == [out]


# --- client -----------------------------------------------------------------------------------------


def fake_endpoint(answers: list[Any]) -> tuple[httpx.AsyncClient, list[httpx.Request]]:
    """A fake RunPod endpoint answering the scripted responses in order (an exception is raised)."""
    seen: list[httpx.Request] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        return httpx.Response(status, json=body, headers={"retry-after": "0"} if status == 429 else {})

    return httpx.AsyncClient(transport=httpx.MockTransport(respond)), seen


def test_transient_failures_are_retried_then_the_answer_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.bulk.client.backoff", lambda attempt, retry_after: 0.0)
    done = {"status": "COMPLETED", "output": [{"caption": "hi"}]}
    client, seen = fake_endpoint([httpx.ConnectError("refused"), (429, {}), (503, {}), (200, done)])
    assert asyncio.run(caption(client, "http://x", {"video": "/a"}, retries=5)) == {"caption": "hi"}
    assert len(seen) == 4 and all(r.url.path == "/runsync" for r in seen)
    assert json.loads(seen[0].content) == {"input": {"video": "/a"}}


def test_retries_run_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.bulk.client.backoff", lambda attempt, retry_after: 0.0)
    client, _ = fake_endpoint([(502, {}), (502, {}), (502, {})])
    with pytest.raises(Transient, match="HTTP 502 after 3 tries"):
        asyncio.run(send(client, "POST", "http://x/runsync", 3))


def test_auth_failure_stops_at_once() -> None:
    client, seen = fake_endpoint([(401, {"error": "bad key"})])
    with pytest.raises(Fatal, match="401"):
        asyncio.run(send(client, "POST", "http://x/runsync", 5))
    assert len(seen) == 1


def test_a_job_still_running_is_polled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("worker.bulk.client._POLL_SECONDS", 0.0)
    client, seen = fake_endpoint(
        [
            (200, {"id": "j1", "status": "IN_QUEUE"}),
            (200, {"id": "j1", "status": "IN_PROGRESS"}),
            (200, {"id": "j1", "status": "COMPLETED", "output": [{"segment": {}}, {"caption": "whole"}]}),
        ]
    )
    assert asyncio.run(caption(client, "http://x/v2/e", {"video": "/a"}, retries=2)) == {"caption": "whole"}
    assert [r.url.path for r in seen] == ["/v2/e/runsync", "/v2/e/status/j1", "/v2/e/status/j1"]


def test_worker_errors_come_back_structured() -> None:
    worker_error = {"type": "decode_error", "message": "not a video", "traceback": None}
    failed_job = {"status": "FAILED", "error": json.dumps(worker_error)}
    assert final_output(failed_job) == {"error": worker_error}
    # The local API completes the job with the error as its only part.
    assert final_output({"status": "COMPLETED", "output": [{"error": json.dumps(worker_error)}]}) == {
        "error": worker_error
    }
    assert structured_error("HTTP 413: too large") == {"type": "endpoint_error", "message": "HTTP 413: too large"}
    with pytest.raises(Transient, match="TIMED_OUT"):
        final_output({"status": "TIMED_OUT"})


def test_engine_errors_are_left_for_the_next_run() -> None:
    engine = {"type": "engine_error", "message": "died"}
    client, _ = fake_endpoint([(200, {"status": "FAILED", "error": json.dumps(engine)})])
    with pytest.raises(Transient, match="engine failed"):
        asyncio.run(caption(client, "http://x", {"video": "/a"}, retries=1))


def test_a_second_run_on_the_same_output_is_refused(tmp_path: Path) -> None:
    import fcntl
    import subprocess
    import sys

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "video": "/tmp/a.mp4"}) + "\n")
    output = tmp_path / "out.jsonl"
    with (tmp_path / "out.jsonl.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a run in progress holds it
        command = [sys.executable, "-m", "worker.bulk", "--input", str(manifest), "--output", str(output)]
        run = subprocess.run(
            [*command, "--endpoint", "http://127.0.0.1:9"], check=False, capture_output=True, text=True, timeout=120
        )
    assert run.returncode == 2 and "another bulk run is writing" in run.stderr, run.stderr
    assert not output.exists()


def test_a_local_run_names_unknown_settings_before_it_starts(tmp_path: Path) -> None:
    import fcntl
    import os
    import subprocess
    import sys

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "video": "/tmp/a.mp4"}) + "\n")
    output = tmp_path / "out.jsonl"
    env = os.environ | {"MAX_FRAME_LIMIT": "64"}  # MAX_FRAMES_LIMIT misspelt
    with (tmp_path / "out.jsonl.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # refused right after the settings check: no engine starts
        command = [sys.executable, "-m", "worker.bulk", "--input", str(manifest), "--output", str(output)]
        run = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 2, run.stderr
    assert "MAX_FRAME_LIMIT is not a setting of this worker" in run.stderr, run.stderr
    assert "did you mean MAX_FRAMES_LIMIT?" in run.stderr, run.stderr
