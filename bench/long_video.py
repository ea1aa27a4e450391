"""A long video, single mode against chunked mode, side by side on one engine and one clip: wall time, decode
and inference time, frames and engine requests, decode seconds per sampled frame, and the peak RSS of
the worker and its engine processes during each job, through the same CaptionService the handler uses.

    python bench/long_video.py --cpu                                     # 10 min 64x48 clip, tiny model
    python bench/long_video.py --size 7b --seconds 60 --loop 30 --width 1280 --height 720 --video-fps 30 \
        --fps 2 --max-frames 64 --max-tokens 256                             # GPU: 30 min 720p
    python bench/long_video.py --size 7b --video clip.mp4 --fps 2 --max-frames 64   # a clip made beforehand

Prints RESULT {json}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.devtools.media import loop_video, make_video
from worker.config import Settings
from worker.devtools.dummy_model import cached_dummy_model
from worker.engine import EngineSlot
from worker.job.service import CaptionService


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (the engine core and its helpers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def status_kib(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_peaks(pids: list[int]) -> None:
    # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass


async def run_job(service: CaptionService, job: dict[str, Any]) -> dict[str, Any]:
    pids = process_tree(os.getpid())
    reset_peaks(pids)
    rss_before = sum(status_kib(pid, "VmRSS") for pid in pids)
    started = time.perf_counter()
    out = await service.handle(job)
    wall = time.perf_counter() - started
    assert "error" not in out, out
    meta = out["metadata"]
    requests = len(out.get("segments") or [None]) + (meta.get("combine") or {}).get("requests", 0)
    peaks = {pid: status_kib(pid, "VmHWM") for pid in pids}
    return {
        "wall_s": round(wall, 2),
        "decode_s": meta["timings"]["decode"],
        "inference_s": meta["timings"]["inference"],
        "num_frames": meta["num_frames"],
        "frame_size": meta["frame_size"],
        "engine_requests": requests,
        "num_chunks": out.get("num_chunks"),
        "decode_ms_per_sampled_frame": round(1000 * meta["timings"]["decode"] / meta["num_frames"], 2),
        "prompt_tokens": meta["prompt_tokens"],
        "completion_tokens": meta["completion_tokens"],
        "rss_before_mib": round(rss_before / 1024),
        "peak_rss_mib_all_processes": round(sum(peaks.values()) / 1024),
        "peak_rss_mib_worker": round(peaks[os.getpid()] / 1024),
    }


async def measure(service: CaptionService, video: Path, args: argparse.Namespace) -> dict[str, Any]:
    base = {"video": str(video), "fps": args.fps, "max_frames": args.max_frames, "max_tokens": args.max_tokens}
    await service.handle(base | {"max_frames": 2, "max_tokens": 2})  # one-time processor set-up, not measured
    single = await run_job(service, base)
    chunked = await run_job(service, base | {"mode": "chunked"})
    return {
        "single": single,
        "chunked": chunked,
        "chunked_vs_single": {
            "wall": round(chunked["wall_s"] / single["wall_s"], 2),
            "frames": round(chunked["num_frames"] / single["num_frames"], 2),
            "decode_per_sampled_frame": round(
                chunked["decode_ms_per_sampled_frame"] / single["decode_ms_per_sampled_frame"], 2
            ),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu", action="store_true", help="the test suite's CPU engine settings")
    parser.add_argument("--family", default="qwen2_5_vl")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--video-fps", type=int, default=2)
    parser.add_argument("--fps", type=float, default=0.2)
    parser.add_argument("--max-frames", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--loop", type=int, default=1, help="play the generated clip this many times (remuxed)")
    parser.add_argument("--video", type=Path, help="an existing clip instead of a generated one")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    work = Path(tempfile.mkdtemp(prefix="long-video-"))
    t = time.perf_counter()
    if args.video:
        video = args.video.resolve()
    else:
        video = make_video(
            work / "clip.mp4", seconds=args.seconds, fps=args.video_fps, width=args.width, height=args.height,
            audio="aac",
        )  # fmt: skip
        if args.loop > 1:
            video = loop_video(video, work / "looped.mp4", args.loop)
    make_s = time.perf_counter() - t
    model = cached_dummy_model(args.family, args.size)
    engine_settings: dict[str, Any] = {}
    if args.cpu:
        engine_settings = {"max_model_len": 4096, "enforce_eager": True}
        # The CPU backend's KV cache in GiB: absolute, so the run does not depend on the machine's free RAM.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    settings = Settings(
        model_name=str(model), load_format="dummy", allowed_media_roots=[work, video.parent], work_dir=work / "jobs",
        **engine_settings,
    )  # fmt: skip
    slot = EngineSlot()
    slot.start(settings)
    engine = slot.get()  # raises with the start-up failure, if any
    service = CaptionService(settings, slot)
    figures = asyncio.run(measure(service, video, args))
    result = {
        "model": f"{args.family} {args.size} dummy weights",
        "video": str(args.video)
        if args.video
        else f"{args.seconds * args.loop:g} s {args.width}x{args.height} H.264 {args.video_fps} fps + AAC "
        f"(generated: {args.seconds:g} s, {args.loop} times)",
        "video_generate_s": round(make_s, 1),
        "job": {"fps": args.fps, "max_frames": args.max_frames, "max_tokens": args.max_tokens},
        "runs": figures,
    }
    print("RESULT " + json.dumps(result), flush=True)
    engine.shutdown()


if __name__ == "__main__":
    main()
