"""Token-for-token parity of the worker with each family's transformers reference (issue 17): a tiny model
folder of the family with seeded float32 weights, jobs through the worker end to end (CaptionService, PyAV,
the adapter, vLLM loading those weights), the same frames and their true timing through transformers 5.17's
processor and ``generate(do_sample=False)``. Prompt ids, grids, M-RoPE positions and the first greedy ids
must be equal (worker/devtools/parity; docs/correctness.md says what each check covers and every known,
explained difference). One engine per family, all its cases in it, in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest

from tests.conftest import KV_CACHE_GIB
from worker.devtools.dummy_model import build_dummy_model
from worker.devtools.parity.weights import write_seeded_weights

pytestmark = [pytest.mark.engine, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parent.parent
TOKENS = 24  # greedy tokens generated and compared (the issue asks for at least 16)
PROMPT = "Describe what happens in this video."
# Temporal positions (issue item 5): 8 frames at each rate, from a clip as long as 8 frames at that rate
# take, so the worker samples at exactly that rate. Small frames keep the prompt short (4 x 4 tokens).
RATES = (0.5, 1.0, 4.0)
FAMILY_CASES: dict[str, tuple[str, ...]] = {
    "qwen2_5_vl": ("video", "image", "video without timing", *(f"fps {r:g}" for r in RATES)),
    "qwen2_vl": ("video", "image", *(f"fps {r:g}" for r in RATES)),
    "qwen3_vl": ("video", "image", "video 16 frames"),
}


def cases_for(family: str, video: Callable[..., Path], image: Path) -> list[dict[str, Any]]:
    # MPEG-4 Part 2, not H.264: x264's output varies from run to run by a few levels, and the same pixels
    # every run keep a report's ids comparable between runs (parity itself compares both sides on the
    # frames of one run, whatever they are).
    clip = {"fps": 10, "texture": True, "codec": "mpeg4"}
    main = video("parity_224.mp4", seconds=4.0, width=224, height=224, **clip)
    job = {"prompt": PROMPT, "max_tokens": TOKENS, "fps": 2.0, "max_frames": 8}
    all_cases = {
        # 8 frames of 224 x 224 at 2 fps: 4 temporal groups of 8 x 8 (Qwen3-VL: 7 x 7) tokens.
        "video": {"job": job | {"video": str(main)}},
        "image": {"job": {"image": str(image), "prompt": "Describe this image.", "max_tokens": TOKENS}},
        # The check has teeth: the reference called without the frames' timing (transformers then assumes
        # 24 fps) must differ from the worker.
        "video without timing": {"job": job | {"video": str(main)}, "processor": {"video_metadata": None}},
        # Qwen3-VL's timestamp text over more groups, from a clip whose frames sit between whole seconds.
        "video 16 frames": {
            "job": job
            | {"video": str(video("parity_q3.mp4", seconds=6.4, width=160, height=96, seed=3, **clip))}
            | {"max_frames": 16, "fps": 2.5}
        },
    }
    for rate in RATES:
        path = video(f"parity_{rate:g}fps.mp4", seconds=8 / rate, width=112, height=112, seed=1, **clip)
        all_cases[f"fps {rate:g}"] = {"job": job | {"video": str(path), "fps": rate}}
    return [{"name": name, **all_cases[name]} for name in FAMILY_CASES[family]]


@pytest.fixture(scope="module")
def parity_image(media_dir: Path) -> Path:
    path = media_dir / "parity_photo.png"
    pixels = np.random.default_rng(7).integers(0, 255, (168, 224, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module", params=sorted(FAMILY_CASES))
def parity(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    video: Callable[..., Path],
    media_dir: Path,
    parity_image: Path,
) -> dict[str, dict[str, Any]]:
    """Reports by case name for one family: one engine, every case of the family in it."""
    family: str = request.param
    work = tmp_path_factory.mktemp(f"parity-{family}")
    folder = build_dummy_model(work / "model", family, "tiny")
    write_seeded_weights(folder, seed=0)
    spec = {
        "settings": {
            "model_name": str(folder),
            "load_format": "auto",
            "dtype": "float32",
            "max_model_len": 4096,
            "enforce_eager": True,
            "max_num_seqs": 2,
            "max_concurrency": 1,
            "allowed_media_roots": [str(media_dir)],
            "work_dir": str(work / "jobs"),
            "compile_cache_dir": None,
            "decode_workers": 0,
        },
        "cases": cases_for(family, video, parity_image),
        "min_tokens": 16,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=KV_CACHE_GIB, PYTHONUNBUFFERED="1")
    with (work / "parity.log").open("w") as log:
        run = subprocess.run(
            [sys.executable, "-m", "worker.devtools.parity", str(work / "spec.json"), str(work / "out.json")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=1100,
        )
    tail = (work / "parity.log").read_text()[-6000:]
    assert run.returncode == 0, f"the parity run failed:\n{tail}"
    out = json.loads((work / "out.json").read_text())
    print(f"\n{family}:\n{out['table']}")
    return {r["name"]: r for r in out["reports"]}


def summary(report: dict[str, Any]) -> str:
    keys = (
        "prompt_lengths", "first_prompt_difference", "placeholders", "grids", "values", "pixels_max_difference",
        "positions_equal", "positions_equal_qwen_rule", "first_position_difference", "temporal_positions",
        "divergence", "min_margin", "margin_noise", "worker_ids", "reference_ids", "reference", "media", "notes",
    )
    return json.dumps({k: report[k] for k in keys}, indent=1, default=str)


def case_report(parity: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
    if name not in parity:
        pytest.skip(f"no {name!r} case for this family")
    return parity[name]


@pytest.mark.parametrize("name", ["video", "image"])
def test_worker_equals_reference(parity: dict[str, dict[str, Any]], name: str) -> None:
    """Prompt ids (text, placeholders, Qwen3-VL's timestamps), grid, per-item numbers, processed pixels,
    M-RoPE positions and the first 24 greedy ids: all equal to transformers'."""
    report = case_report(parity, name)
    detail = summary(report)
    assert report["prompt_ids_equal"], detail
    assert report["grid_equal"] and report["values_equal"], detail
    assert report["pixels_max_difference"] == 0.0, detail
    assert report["positions_equal"] is True, detail
    assert report["tokens_equal"] and report["tokens_compared"] >= 16, detail
    assert report["reference"] == "transformers", detail


def test_worker_frames_are_the_files(parity: dict[str, dict[str, Any]]) -> None:
    """The frames the worker sent are the file's frames at its reported times, pixel for pixel, and the
    timing it sent the processor is the file's (fps, frame count, indices)."""
    media = case_report(parity, "video")["media"]
    assert media["frames_max_difference_to_file"] == 0, media
    assert media["timing_equal"], media


@pytest.mark.parametrize("rate", RATES)
def test_temporal_positions(parity: dict[str, dict[str, Any]], rate: float) -> None:
    """Issue item 5: at each rate the worker's M-RoPE positions are Qwen's original rule (what vLLM and the
    released code compute), and its greedy ids equal the reference run on those positions. Where
    transformers 5.17 computes other positions (docs/correctness.md), the report says so."""
    report = case_report(parity, f"fps {rate:g}")
    detail = summary(report)
    assert report["prompt_ids_equal"] and report["grid_equal"] and report["values_equal"], detail
    assert report["positions_equal_qwen_rule"] is True, detail
    assert report["tokens_equal"] and report["tokens_compared"] >= 16, detail
    temporal = report["temporal_positions"]["worker"]
    groups = len(temporal)
    if report["family"] == "qwen2_5_vl":
        # tokens_per_second 2, two frames per group: a group every 2 / rate seconds is 4 / rate positions.
        assert temporal == [int(g * 4 / rate) for g in range(groups)], detail
    else:
        assert temporal == list(range(groups)), detail  # Qwen2-VL: the group number, whatever the rate


def test_transformers_differences_are_the_documented_ones(parity: dict[str, dict[str, Any]]) -> None:
    """Where transformers 5.17's own positions differ from the worker's, it is only for the two reasons
    docs/correctness.md gives: Qwen2.5-VL's seconds per group truncated to an integer (4 fps: 0.5 s -> 0,
    every group at one temporal position) and text after a video continuing at max(h, w) rather than past
    the temporal axis. The worker follows vLLM and the released code."""
    for name, report in parity.items():
        if not name.startswith("fps ") or report["positions_equal"]:
            continue
        transformers_temporal = report["temporal_positions"]["reference"]
        worker_temporal = report["temporal_positions"]["worker"]
        rate = float(name.split()[1])
        if report["family"] == "qwen2_5_vl" and rate == 4.0:
            assert transformers_temporal == [0], summary(report)  # int(0.5) == 0
        else:
            # Same temporal indices; the difference is where the text after the video resumes.
            assert transformers_temporal == worker_temporal, summary(report)


def test_reference_without_timing_differs(parity: dict[str, dict[str, Any]]) -> None:
    """The comparison catches a timing error: without video_metadata transformers times the frames as
    24 fps (second_per_grid_ts 2/24 instead of 1.0) and the check fails."""
    report = case_report(parity, "video without timing")
    assert report["values"]["worker"]["second_per_grid_ts"] == [1.0], summary(report)
    assert report["values"]["reference"]["second_per_grid_ts"] == [round(2 / 24, 6)], summary(report)
    assert not report["values_equal"] and report["positions_equal"] is False, summary(report)


def test_qwen3_timestamps(parity: dict[str, dict[str, Any]]) -> None:
    """Qwen3-VL's "<t seconds>" text before each group: equal ids over 8 groups, times from the file."""
    report = case_report(parity, "video 16 frames")
    detail = summary(report)
    assert report["prompt_ids_equal"] and report["grid_equal"] and report["positions_equal"], detail
    assert report["tokens_equal"] and report["tokens_compared"] >= 16, detail
    # One "<|vision_start|>" per group after its time, inside the template's own pair around the video.
    assert report["placeholders"]["<|vision_start|>"] == [9, 9], detail
