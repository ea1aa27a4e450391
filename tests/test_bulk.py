"""`python -m worker.bulk` on the real CPU engine: a 50-line manifest of good and bad lines run with two
engine processes, the supervisor SIGKILLed mid-run and a torn line added, then resumed with one engine:
every key exactly once. And client mode against the runpod SDK's local API (`handler.py --rp_serve_api`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.local_api import free_port, serve_api, stop_session
from worker.devtools.media import make_corrupt, make_video
from worker.bulk.output import leftover_shards, shard_path
from worker.bulk.manifest import shard_of

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(1200)

GOOD = 36
DEFAULTS = {"max_tokens": 6, "fps": 4.0, "max_frames": 4, "seed": 1}


def bulk(*args: str) -> list[str]:
    return [sys.executable, "-m", "worker.bulk", "--no-progress", *args]


def run_bulk(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m worker.bulk --no-progress ARGS`` to its end, its output captured."""
    return subprocess.run(bulk(*args), check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def build_manifest(folder: Path) -> tuple[Path, dict[str, str | None]]:
    """50 lines: captions, per-line overrides, bad media, bad options, bad lines and repeated keys. Returns
    the manifest and each key's expected outcome (None: a caption, else the error type)."""
    folder.mkdir()
    rows: list[str] = []
    expected: dict[str, str | None] = {}
    for i in range(GOOD):
        # Distinct pixels per clip: vLLM caches multimodal inputs by content.
        make_video(folder / f"clip{i:02d}.mp4", seconds=1.0, fps=8, width=64, height=48, texture=True, seed=i)
        row: dict[str, Any] = {"id": f"clip{i:02d}", "path": f"clip{i:02d}.mp4"}  # relative to the manifest
        if i == 3:
            row |= {"max_tokens": 2, "max_frames": 2}  # a line's options override --defaults
        rows.append(json.dumps(row))
        expected[row["id"]] = None
    bad_media = {
        "text": make_corrupt(folder / "text.mp4", "text"),
        "empty": make_corrupt(folder / "empty.mp4", "zero"),
        "truncated": make_corrupt(folder / "truncated.mp4", "truncated", source=folder / "clip00.mp4"),
    }
    for name, path in bad_media.items():
        rows.append(json.dumps({"id": name, "path": str(path)}))
    expected |= {"text": "decode_error", "empty": "decode_error", "truncated": "decode_error"}
    rows.append(json.dumps({"id": "missing", "path": str(folder / "nope.mp4")}))
    rows.append(json.dumps({"id": "outside", "path": "/etc/hostname"}))
    rows.append(json.dumps({"id": 7, "path": "clip01.mp4", "fps": 99}))  # integer keys are fine
    rows.append(json.dumps({"id": "typo", "path": "clip01.mp4", "colour": "red"}))
    rows.append(json.dumps({"id": "no-video", "prompt": "hi"}))
    rows.append(json.dumps({"id": "no-tokens", "path": "clip02.mp4", "max_tokens": 0}))
    expected |= {"missing": "fetch_error", "outside": "fetch_error", "7": "validation_error"}
    expected |= {"typo": "validation_error", "no-video": "validation_error", "no-tokens": "validation_error"}
    rows.append("{not json")  # manifest line 47 (a blank line follows line 25)
    rows.append(json.dumps(["a", "list"]))
    assert len(rows) == 47
    expected |= {"line:47": "validation_error", "line:48": "validation_error"}
    rows.append(json.dumps({"path": str(folder / "clip05.mp4")}))  # keyed by its path
    expected[str(folder / "clip05.mp4")] = None
    rows.append(json.dumps({"id": "clip00", "path": "clip09.mp4"}))  # repeated keys: captioned once
    rows.append(json.dumps({"id": "text", "path": "clip09.mp4"}))
    assert len(rows) == 50
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(rows[:25]) + "\n\n" + "\n".join(rows[25:]) + "\n")
    return manifest, expected


def outcomes(output: Path) -> tuple[list[str], dict[str, dict[str, Any]]]:
    keys, records = [], {}
    for text in output.read_text().splitlines():
        row = json.loads(text)
        key = f"line:{row['line']}" if row["id"] is None else str(row["id"])
        keys.append(key)
        records[key] = row
    return keys, records


def written_lines(paths: list[Path]) -> int:
    return sum(p.read_bytes().count(b"\n") for p in paths if p.exists())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str | None]]:
    return build_manifest(tmp_path_factory.mktemp("bulk") / "data")


@pytest.mark.engine
def test_killed_run_resumes_with_every_key_once(
    dataset: tuple[Path, dict[str, str | None]], worker_env: dict[str, str], tmp_path: Path
) -> None:
    manifest, expected = dataset
    output = tmp_path / "captions.jsonl"
    env = worker_env  # two CPU engines at once: each has worker_env's absolute KV cache budget
    args = [
        "--input",
        str(manifest),
        "--output",
        str(output),
        "--defaults",
        json.dumps(DEFAULTS),
        "--video-field",
        "path",
    ]
    shards = [shard_path(output, i, 2) for i in range(2)]
    # Both shards own work, so killing mid-run leaves both half done.
    assert {shard_of(key, 2) for key in expected} == {0, 1}

    # 1. Two engine processes (the multi-GPU path; CUDA_VISIBLE_DEVICES means nothing on the CPU), the
    #    supervisor SIGKILLed once a few lines are written: its engine processes must go too.
    log1 = (tmp_path / "run1.log").open("w")
    proc = subprocess.Popen(
        bulk(*args, "--gpus", "2", "--concurrency", "2"),
        cwd=ROOT,
        env=env,
        stdout=log1,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 900
    while written_lines(shards) < 6:
        assert proc.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "no lines written"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    leftovers = stop_session(proc)
    assert not leftovers, f"processes outlived the killed supervisor: {leftovers}"
    first = written_lines(shards)
    assert 6 <= first < len(expected), "the kill must land mid-run"
    # An engine that was still starting has no shard file yet.
    written = leftover_shards(output)
    assert not output.exists() and written and set(written) <= set(shards)
    # A crash in the middle of a write leaves a torn last line.
    with written[0].open("ab") as f:
        f.write(b'{"id":"clip30","line":31,"result":{"capt')

    # 2. Resumed with one engine: the shards of the killed run are merged, the torn line cut off, the
    #    rest captioned.
    run2 = run_bulk(*args, env=worker_env, timeout=900)
    log2 = run2.stdout + run2.stderr
    assert run2.returncode == 0, log2[-5000:]
    assert "manifest: 2 duplicate keys, each captioned once for its first line" in log2
    assert f"{len(expected) - first} to do" in log2
    keys, records = outcomes(output)
    assert sorted(keys) == sorted(expected), "every key exactly once"
    assert leftover_shards(output) == []
    for key, error_type in expected.items():
        row = records[key]
        if error_type is None:
            assert "result" in row and isinstance(row["result"]["caption"], str), row
        else:
            assert row.get("error", {}).get("type") == error_type, row
    meta = records["clip01"]["result"]["metadata"]
    assert meta["num_frames"] == 4 and meta["completion_tokens"] <= 6 and meta["sampling"]["seed"] == 1
    override = records["clip03"]["result"]["metadata"]
    assert override["num_frames"] == 2 and override["completion_tokens"] <= 2
    assert records["clip00"]["line"] == 1 and records["clip00"]["result"]["metadata"]["video"]["duration"] > 0
    assert records["7"]["id"] == 7 and "fps" in records["7"]["error"]["message"]
    assert "outside the allowed media roots" in records["outside"]["error"]["message"]
    assert set(records["line:47"]) == {"id", "line", "error"} and "not JSON" in records["line:47"]["error"]["message"]

    # 3. Nothing left: a rerun starts no engine and writes nothing.
    before = output.read_bytes()
    run3 = run_bulk(*args, "--gpus", "2", env=env, timeout=120)
    assert run3.returncode == 0 and "0 to do" in run3.stderr, run3.stderr[-3000:]
    assert output.read_bytes() == before


@pytest.fixture(scope="module")
def api(worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_api(worker_env, tmp_path_factory.mktemp("logs") / "api.log") as url:
        yield url


@pytest.mark.engine
def test_client_mode_against_the_local_api(
    api: str, worker_env: dict[str, str], media_dir: Path, tmp_path: Path
) -> None:
    clips = [
        make_video(media_dir / f"bulk_client{i}.mp4", seconds=1.0, fps=8, texture=True, seed=100 + i) for i in range(4)
    ]
    rows = [{"id": f"c{i}", "video": str(clip)} for i, clip in enumerate(clips)]
    rows += [
        {"id": "bad-option", "video": str(clips[0]), "fps": 99},
        {"id": "missing", "video": str(media_dir / "bulk_client_nope.mp4")},
        {"id": "chunked", "video": str(clips[1]), "mode": "chunked", "chunk_seconds": 1.0, "stream": True},
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    output = tmp_path / "out.jsonl"
    args = ["--input", str(manifest), "--output", str(output), "--endpoint", api, "--concurrency", "3"]
    args += ["--defaults", json.dumps({"max_tokens": 6, "max_frames": 4, "fps": 4.0})]
    run = run_bulk(*args, env=worker_env, timeout=600)
    assert run.returncode == 0, run.stderr[-5000:]
    keys, records = outcomes(output)
    assert sorted(keys) == sorted(r["id"] for r in rows)
    for i in range(4):
        assert records[f"c{i}"]["result"]["metadata"]["num_frames"] == 4
    assert records["bad-option"]["error"]["type"] == "validation_error"
    assert records["missing"]["error"]["type"] == "fetch_error"
    # A streamed job's output on the endpoint is the list of its parts: the complete result is kept.
    assert records["chunked"]["result"]["num_chunks"] == 1 and len(records["chunked"]["result"]["segments"]) == 1
    rerun = run_bulk(*args, env=worker_env, timeout=120)
    assert rerun.returncode == 0 and "0 keys to send" in rerun.stderr, rerun.stderr[-3000:]
    assert Counter(outcomes(output)[0]) == Counter(keys)


def test_client_mode_stops_on_a_refused_endpoint(worker_env: dict[str, str], tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "video": "/tmp/a.mp4"}) + "\n")
    output = tmp_path / "out.jsonl"
    endpoint = f"http://127.0.0.1:{free_port()}"
    args = ["--input", str(manifest), "--output", str(output), "--endpoint", endpoint, "--retries", "2"]
    run = run_bulk(*args, env=worker_env, timeout=120)
    assert run.returncode == 1 and "left for the next run" in run.stderr and "1 keys left" in run.stderr, run.stderr
    assert output.read_bytes() == b""


@pytest.mark.engine
def test_an_engine_that_cannot_start_writes_nothing(
    dataset: tuple[Path, dict[str, str | None]], worker_env: dict[str, str], tmp_path: Path
) -> None:
    # Every key stays for the rerun: an engine failure is never a line's outcome.
    manifest, expected = dataset
    output = tmp_path / "out.jsonl"
    env = worker_env | {"MODEL_NAME": str(tmp_path / "no-such-model")}
    run = run_bulk("--input", str(manifest), "--output", str(output), "--gpus", "2", env=env, timeout=600)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "engine process 0 exited with 1" in run.stderr and "engine process 1 exited with 1" in run.stderr
    assert "the inference engine failed to start" in run.stderr and "no-such-model" in run.stderr
    assert f"{len(expected)} keys left; rerun the same command" in run.stderr
    assert output.read_bytes() == b"" and leftover_shards(output) == []
