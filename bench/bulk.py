"""Bulk captioning throughput: the same manifest through ``python -m worker.bulk`` with each GPU count
asked for, one run after the other on the same machine, printing videos/s and the ratio to the first.

    python bench/bulk.py --gpus 1 2      # on a 2-GPU machine; prints RESULT {json}

A 7B-shaped dummy model (random weights: every answer runs to max_tokens) and generated clips, each with
its own pixels (vLLM caches multimodal inputs by content, so repeated clips would flatter the figures).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.devtools.media import make_video
from worker.devtools.dummy_model import cached_dummy_model

RATE = re.compile(r"(\d+) lines written \((\d+) captions, errors: (.*?)\), ([\d.]+) videos/s after the first")


def run(gpus: int, manifest: Path, work: Path, env: dict[str, str], args: argparse.Namespace) -> dict:
    output = work / f"out-{gpus}gpu.jsonl"
    command = [sys.executable, "-m", "worker.bulk", "--input", str(manifest), "--output", str(output)]
    command += ["--gpus", str(gpus), "--no-progress", "--defaults", json.dumps({"max_tokens": args.max_tokens})]
    if args.concurrency:
        command += ["--concurrency", str(args.concurrency)]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    match = RATE.search(proc.stderr)
    if proc.returncode != 0 or match is None:
        raise SystemExit(f"--gpus {gpus} failed ({proc.returncode}):\n{proc.stderr[-5000:]}")
    lines, captions, errors, rate = match.groups()
    return {
        "gpus": gpus,
        "wall_s_with_engine_start": round(wall, 1),
        "lines": int(lines),
        "captions": int(captions),
        "errors": errors,
        "videos_per_s_after_first": float(rate),
    }


def _clip(folder: Path, seconds: float, seed: int) -> Path:
    return make_video(
        folder / f"clip{seed:04d}.mp4", seconds=seconds, fps=24, width=640, height=360, texture=True, seed=seed
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--videos", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--family", default="qwen2_5_vl")
    parser.add_argument("--size", default="7b")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=16, help="jobs in flight per engine process")
    # No torch.compile or CUDA graphs: each engine starts in about a minute instead of several.
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the RESULT json to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    work = Path(tempfile.mkdtemp(prefix="bulk-bench-"))
    clips = work / "clips"
    clips.mkdir()
    t = time.perf_counter()
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        paths = list(pool.map(partial(_clip, clips, args.seconds), range(args.videos)))
    generate_s = time.perf_counter() - t
    manifest = work / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"id": p.stem, "video": f"clips/{p.name}"}) + "\n" for p in paths))
    model = cached_dummy_model(args.family, args.size)
    env = dict(os.environ, MODEL_NAME=str(model), LOAD_FORMAT="dummy", WORK_DIR=str(work / "jobs"))
    if args.enforce_eager:
        env["ENFORCE_EAGER"] = "true"
    runs = [run(gpus, manifest, work, env, args) for gpus in args.gpus]
    base = runs[0]["videos_per_s_after_first"]
    for r in runs:
        r["ratio_to_first"] = round(r["videos_per_s_after_first"] / base, 2) if base else None
    result = {
        "model": f"{args.family} {args.size} dummy weights",
        "videos": f"{args.videos} generated {args.seconds:g} s 640x360 H.264 24 fps clips, default request",
        "video_generate_s": round(generate_s, 1),
        "max_tokens": args.max_tokens,
        "concurrency_per_engine": args.concurrency,
        "enforce_eager": args.enforce_eager,
        "runs": runs,
    }
    print("RESULT " + json.dumps(result), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
