"""Live commentary (mode "commentary", LiveCC's protocol) and multi-turn questions, through the same
CaptionService the handler uses, on one engine (issue 19 item 6):

- one stream: the real-time factor (video seconds / wall seconds) of a whole video, the time to the first
  turn, the prefix-cache hit rate of every turn;
- N streams at once (the same video, each its own conversation): each stream's real-time factor, time to
  first turn and hit rate;
- two questions over one video (``messages``, the second with the first answer): each one's latency and
  the prefix-cache hit of the second.

Dummy weights never say "nothing new" and never end early: every turn generates --turn-tokens tokens (the
seed's 20), which real LiveCC rarely does, so the figures are a floor.

    python bench/commentary.py --cpu --seconds 8 --streams 2                     # CPU: tiny model, a smoke run
    python bench/commentary.py --size 7b --seconds 300 --streams 16 \\
        --out bench/results/commentary_h200.json                                 # GPU: LiveCC-7B-shaped (dummy)

Prints RESULT {json}; --out also writes it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.config import Settings
from worker.devtools.dummy_model import cached_dummy_model
from worker.devtools.media import loop_video, make_video
from worker.engine import EngineSlot, Generation
from worker.job.service import CaptionService
from worker.media.pool import start_decoders
from worker.media.turn_plan import LIVECC_MAX_PIXELS

log = logging.getLogger("bench.commentary")
Q1, Q2 = "What is happening in the video?", "What happens right after that?"


async def stream(service: CaptionService, video: Path, turn_tokens: int, name: str) -> dict[str, Any]:
    """One commentary job, streamed: when each turn arrived, and the result's own figures."""
    job = {"video": str(video), "mode": "commentary", "stream": True, "max_tokens": turn_tokens}
    started = time.perf_counter()
    arrivals: list[float] = []
    body: dict[str, Any] = {}
    async for part in service.run(job, name):
        if "turn" in part.body:
            arrivals.append(time.perf_counter() - started)
        body = part.body
    wall = time.perf_counter() - started
    if "error" in body:
        raise RuntimeError(f"{name}: {body['error']}")
    meta, turns = body["metadata"], body["turns"]
    rates = [t["prefix_cache_hit_rate"] for t in turns[1:] if t["prefix_cache_hit_rate"] is not None]
    covered = turns[-1]["end"] if turns else 0.0
    return {
        "video_seconds": covered,
        "wall_s": round(wall, 3),
        "real_time_factor": round(covered / wall, 3),
        "time_to_first_turn_s": round(arrivals[0], 3) if arrivals else None,
        "turns": len(turns),
        "context_windows": meta["context_windows"],
        "turn_latency_s": _spread([t["latency"] for t in turns]),
        "prefix_cache_hit_rate": meta["prefix_cache_hit_rate"],
        "prefix_cache_hit_rate_per_turn": [t["prefix_cache_hit_rate"] for t in turns],
        "hit_rate_after_first_turn": _spread(rates),
        "prompt_tokens": meta["prompt_tokens"],
        "cached_tokens": meta["cached_tokens"],
        "completion_tokens": meta["completion_tokens"],
        "frame_size": meta["frame_size"],
        "timings": meta["timings"],
        "warnings": meta["warnings"],
    }


async def questions(
    service: CaptionService, video: Path, seen: list[Generation], args: argparse.Namespace
) -> dict[str, Any]:
    """Two questions over one video; the second carries the first answer (a client's follow-up)."""
    base = {"video": str(video), "fps": 2.0, "max_frames": args.qa_frames, "top_p": 0.0, "max_tokens": args.qa_tokens}
    runs = []
    for messages in ([{"role": "user", "content": Q1}], None):
        if messages is None:
            answer = runs[0]["caption"]
            messages = [{"role": "user", "content": Q1}, {"role": "assistant", "content": answer}]
            messages.append({"role": "user", "content": Q2})
        seen.clear()
        started = time.perf_counter()
        out = await service.handle(base | {"messages": messages})
        wall = time.perf_counter() - started
        if "error" in out:
            raise RuntimeError(f"question: {out['error']}")
        generation = seen[-1]
        runs.append(
            {
                "caption": out["caption"],
                "latency_s": round(wall, 3),
                "inference_s": out["metadata"]["timings"]["inference"],
                "prompt_tokens": generation.prompt_tokens,
                "cached_tokens": generation.cached_tokens,
            }
        )
    first, second = runs
    return {
        "frames": args.qa_frames,
        "first": first | {"caption": first["caption"][:80]},
        "second": second | {"caption": second["caption"][:80]},
        "second_vs_first_latency": round(second["latency_s"] / first["latency_s"], 3),
        "second_prefix_cache_hit_rate": round((second["cached_tokens"] or 0) / second["prompt_tokens"], 4),
    }


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "min": round(ordered[0], 4),
        "median": round(statistics.median(ordered), 4),
        "p90": round(ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)], 4),
        "max": round(ordered[-1], 4),
    }


async def measure(
    service: CaptionService, video: Path, warm: Path, seen: list[Generation], args: argparse.Namespace
) -> dict[str, Any]:
    await stream(service, warm, 2, "warm-up")  # one-time processor set-up, not measured
    one = await stream(service, video, args.turn_tokens, "single")
    many = await asyncio.gather(*(stream(service, video, args.turn_tokens, f"stream-{i}") for i in range(args.streams)))
    factors = [s["real_time_factor"] for s in many]
    concurrent = {
        "streams": args.streams,
        "real_time_factor_per_stream": _spread(factors),
        "streams_at_or_above_1x": sum(f >= 1.0 for f in factors),
        "time_to_first_turn_s": _spread([s["time_to_first_turn_s"] for s in many if s["time_to_first_turn_s"]]),
        "prefix_cache_hit_rate": _spread([s["prefix_cache_hit_rate"] for s in many if s["prefix_cache_hit_rate"]]),
        "turn_latency_median_s": _spread([s["turn_latency_s"]["median"] for s in many if s["turn_latency_s"]]),
        "aggregate_video_seconds_per_second": round(
            sum(s["video_seconds"] for s in many) / max(s["wall_s"] for s in many), 3
        ),
    }
    qa = await questions(service, video, seen, args)
    return {"single": one, "concurrent": concurrent, "questions": qa}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu", action="store_true", help="the test suite's CPU engine settings")
    parser.add_argument("--size", default="tiny", help="qwen2_vl size: tiny, or 7b (LiveCC-7B's shape)")
    parser.add_argument("--seconds", type=float, default=300.0, help="video length")
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--video-fps", type=int, default=10)
    parser.add_argument("--turn-tokens", type=int, default=20, help="max_tokens per turn (the seed's 20)")
    parser.add_argument("--qa-frames", type=int, default=64, help="frames of the question jobs (2 fps)")
    parser.add_argument("--qa-tokens", type=int, default=128)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--mm-cache-gb", type=float, default=None, help="MM_PROCESSOR_CACHE_GB (GPU default 32)")
    parser.add_argument("--video", type=Path, help="an existing clip instead of a generated one")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    work = Path(tempfile.mkdtemp(prefix="commentary-bench-"))
    t = time.perf_counter()
    clip = {"fps": args.video_fps, "width": args.width, "height": args.height, "texture": True}
    warm = make_video(work / "warm.mp4", seconds=4.0, **clip)
    if args.video:
        video = args.video.resolve()
    else:
        piece = min(args.seconds, 60.0)
        video = make_video(work / "piece.mp4", seconds=piece, **clip)
        if args.seconds > piece:
            video = loop_video(video, work / "clip.mp4", round(args.seconds / piece))
    make_s = time.perf_counter() - t
    model = cached_dummy_model("qwen2_vl", args.size)
    engine_settings: dict[str, Any] = {"mm_processor_cache_gb": args.mm_cache_gb or (4 if args.cpu else 32)}
    if args.cpu:
        engine_settings |= {"max_model_len": args.max_model_len or 4096, "enforce_eager": True}
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: absolute, whatever RAM is free
    elif args.max_model_len:
        engine_settings["max_model_len"] = args.max_model_len
    settings = Settings(
        model_name=str(model), load_format="dummy", enable_prefix_caching=True,
        video_max_pixels=LIVECC_MAX_PIXELS,  # LiveCC's frame size (the worker's default is 448x448)
        max_num_seqs=max(32, 2 * args.streams), max_concurrency=max(8, args.streams),
        allowed_media_roots=[work, video.parent], work_dir=work / "jobs", **engine_settings,
    )  # fmt: skip
    slot = EngineSlot()
    slot.start(settings)
    engine = slot.get()  # raises with the start-up failure, if any
    seen: list[Generation] = []
    generate = engine.generate

    async def recorded(*call: Any, **kwargs: Any) -> Generation:
        generation = await generate(*call, **kwargs)
        seen.append(generation)
        return generation

    engine.generate = recorded  # type: ignore[method-assign]
    service = CaptionService(settings, slot, start_decoders(settings))
    try:
        figures = asyncio.run(measure(service, video, warm, seen, args))
    finally:
        engine.shutdown()
        service.decoder.shutdown()
    result = {
        "model": f"qwen2_vl {args.size} dummy weights" + (" (LiveCC-7B's shape)" if args.size == "7b" else ""),
        "video": str(args.video)
        if args.video
        else f"{args.seconds:g} s {args.width}x{args.height} H.264 {args.video_fps} fps",
        "video_generate_s": round(make_s, 1),
        "settings": {
            "max_model_len": engine.max_model_len, "max_num_seqs": settings.max_num_seqs,
            "mm_processor_cache_gb": settings.mm_processor_cache_gb, "turn_tokens": args.turn_tokens,
        },  # fmt: skip
        "targets": {"single_stream_real_time_factor": 10.0, "each_of_16_streams_real_time_factor": 1.0},
        **figures,
    }
    text = json.dumps(result)
    print("RESULT " + text, flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
