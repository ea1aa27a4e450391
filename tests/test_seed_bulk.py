"""The JSONL video pipeline's manifest (../shared/seeds/002_…, docs/seeds.md) through ``python -m worker.bulk``:
its lines as written (``{"path": ..., "meta": {...}}``), their own fields and the line itself carried to the
output, its ``--gpus 0,1,…`` device lists and its ``structured_caption`` task. The pure parts here; one run on
the real CPU engine at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from worker.api.presets import STRUCTURED_CAPTION_SCHEMA
from worker.bulk import supervisor
from worker.bulk.cli import parse_args
from worker.bulk.common import record
from worker.bulk.manifest import parse_line
from worker.devtools.media import make_video

ROOT = Path(__file__).resolve().parent.parent
SEED_LINE = {"path": "/abs/path/to/video.mp4", "meta": {"source": "ds-1", "tags": ["a", "b"], "score": 0.5}}


def parse(row: Any, **kwargs: Any) -> Any:
    options: dict[str, Any] = {"id_field": "id", "video_field": "path", "defaults": {}, "base_dir": Path("/none")}
    text = row if isinstance(row, str) else json.dumps(row)
    return parse_line(text, 3, **(options | kwargs))


def test_fields_that_are_no_job_option_are_kept_for_the_output_line() -> None:
    entry = parse(SEED_LINE, extra_fields="keep", defaults={"fps": 2})
    assert entry.error is None and entry.key == "/abs/path/to/video.mp4"
    assert entry.job_input == {"fps": 2, "video": "/abs/path/to/video.mp4"}
    assert entry.extra == {"meta": SEED_LINE["meta"]} and entry.raw == SEED_LINE
    args = Namespace(id_field="id", raw=True)
    line = record(entry, args, {"caption": "x"})
    assert line == {"id": "/abs/path/to/video.mp4", "line": 3, "meta": SEED_LINE["meta"], "raw": SEED_LINE,
                    "result": {"caption": "x"}}
    assert "raw" not in record(entry, Namespace(id_field="id", raw=False), {"caption": "x"})


def test_by_default_such_fields_stay_errors_and_typos_always_do() -> None:
    assert parse(SEED_LINE).job_input["meta"] == SEED_LINE["meta"]  # the job's validation_error names it
    typo = parse({"path": "/v.mp4", "max_frame": 4, "meta": {}}, extra_fields="keep")
    assert typo.job_input == {"video": "/v.mp4", "max_frame": 4} and typo.extra == {"meta": {}}
    clash = parse({"path": "/v.mp4", "result": 1}, extra_fields="keep")
    assert clash.error is not None and "'result' is a field of the output line" in clash.error["error"]["message"]
    broken = parse("[1, 2]", extra_fields="keep")
    assert broken.error is not None and broken.raw == [1, 2]
    assert parse("{not json").raw is None


def test_gpus_takes_a_count_or_a_device_list(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    base = ["--input", str(manifest), "--output", str(tmp_path / "o.jsonl")]
    assert (parse_args([*base, "--gpus", "2"]).gpus, parse_args([*base, "--gpus", "2"]).devices) == (2, None)
    listed = parse_args([*base, "--gpus", "0,1,2,3,4,5,6,7"])
    assert listed.devices == [str(i) for i in range(8)] and listed.gpus is None
    assert parse_args([*base, "--gpus", "3,"]).devices == ["3"]
    for bad in ("0", "a", "0,0", ","):
        with pytest.raises(SystemExit):
            parse_args([*base, "--gpus", bad])
    args = parse_args([*base, "--extra-fields", "keep", "--raw"])
    assert (args.extra_fields, args.raw) == ("keep", True)


def test_each_engine_process_gets_its_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[dict[str, Any]] = []

    def popen(argv: list[str], **kwargs: Any) -> Any:
        started.append({"argv": argv, "devices": kwargs["env"].get("CUDA_VISIBLE_DEVICES")})
        return None

    monkeypatch.setattr(supervisor.subprocess, "Popen", popen)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    args = parse_args(["--input", str(manifest), "--output", str(tmp_path / "o.jsonl"), "--gpus", "3,", "--raw",
                       "--extra-fields", "keep"])
    args.gpus = 1
    supervisor.start_shard(args, 0, ",".join(args.devices), tmp_path / "w.log", 0)
    (shard,) = started
    assert shard["devices"] == "3"  # the device named, not the environment's
    assert "--raw" in shard["argv"] and shard["argv"][shard["argv"].index("--extra-fields") + 1] == "keep"
    assert supervisor.device_groups(4, 1, "0,1,2,3") == ["0", "1", "2", "3"]


@pytest.mark.engine
@pytest.mark.timeout(900)
def test_the_pipelines_manifest_with_structured_caption_on_the_cpu_engine(
    worker_env: dict[str, str], tmp_path: Path
) -> None:
    """Its example lines as written and its describe.yaml's options, translated as docs/seeds.md shows."""
    data = tmp_path / "data"
    data.mkdir()
    clips = [make_video(data / f"v{i}.mp4", seconds=2.0, fps=8, texture=True, seed=200 + i) for i in range(2)]
    rows = [{"path": str(clips[0]), "meta": SEED_LINE["meta"]}, {"path": str(clips[1])}]
    manifest = data / "input.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "output.structured_caption.jsonl"
    defaults = {"task": "structured_caption", "fps": 2, "temperature": 0.2, "top_p": 0.9, "max_tokens": 64,
                "repetition_penalty": 1.0, "max_frames": 4}
    command = [sys.executable, "-m", "worker.bulk", "--no-progress", "--input", str(manifest), "--output",
               str(output), "--video-field", "path", "--extra-fields", "keep", "--raw", "--gpus", "0,",
               "--defaults", json.dumps(defaults)]
    run = subprocess.run(command, cwd=ROOT, env=worker_env, capture_output=True, text=True, timeout=840)
    assert run.returncode == 0, run.stderr[-5000:]
    assert "on CUDA_VISIBLE_DEVICES 0" in run.stderr
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(str(c) for c in clips)  # keyed by the path (id_field: null)
    for record_ in records:
        row = rows[record_["line"] - 1]
        assert record_["raw"] == row and record_.get("meta") == row.get("meta")  # untouched
        result = record_["result"]
        assert "structured" in result and result["caption"].lstrip().startswith("{"), result  # the grammar's JSON
        meta = result["metadata"]
        assert meta["num_frames"] == 4 and meta["sampling"]["temperature"] == 0.2
        if meta["finish_reason"] == "stop":
            jsonschema.validate(result["structured"], STRUCTURED_CAPTION_SCHEMA)
        else:  # random weights may not close the object within max_tokens
            assert result["structured"] is None and any("json_schema" in w for w in meta["warnings"])
