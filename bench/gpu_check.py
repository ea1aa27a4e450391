"""GPU check of the worker pipeline: engine start time, one job's latency, and jobs/s with N jobs in flight,
through the same CaptionService the RunPod handler uses, on a 7B-shaped dummy model of one family, for
each ``process_audio`` setting asked for and each decoder (``--decoders``: the worker's decoder processes,
DECODE_WORKERS of them, and threads of the worker process, DECODE_WORKERS=0), side by side on the same
engine and clip.

    python bench/gpu_check.py --family qwen2_5_omni --process-audio false true   # prints RESULT {json}
    python bench/gpu_check.py --family qwen2_5_omni --process-audio true --decoders processes threads
    python bench/gpu_check.py --family video_salmonn2_plus --fps 2 --max-frames 120 --process-audio false true
    python bench/gpu_check.py --family video_salmonn2 --fps 1 --max-frames 60 --process-audio false true

Every job of a run sends the same clip: vLLM's prefix and multimodal-processor caches are emptied before
each measurement, but within one the later jobs may be served from them. For throughput on distinct
videos use bench/e2e.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.devtools.media import make_video  # noqa: E402
from worker.config import Settings  # noqa: E402
from worker.media.pool import DecodePool, start_decoders  # noqa: E402
from worker.devtools.dummy_model import cached_dummy_model  # noqa: E402
from worker.engine import EngineSlot  # noqa: E402
from worker.job.service import CaptionService  # noqa: E402


def gpu_memory_used_mib() -> int | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.split()[0])
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return None


async def measure_all(services: dict[str, CaptionService], video: Path, args: argparse.Namespace) -> dict[str, dict]:
    """One loop for every measurement: the engine's output task lives on the loop that first uses it."""
    figures = {}
    for audio in args.process_audio:
        for name, service in services.items():
            key = f"process_audio={audio}" + (f" decoders={name}" if len(services) > 1 else "")
            llm = service.engine.get().llm
            await llm.reset_mm_cache()
            await llm.reset_prefix_cache()
            figures[key] = await measure(service, video, args, audio)
    return figures


def job_for(video: Path, args: argparse.Namespace, audio: bool) -> dict:
    """The job every request of a run sends; fps and max_frames only when asked (else the worker's defaults)."""
    job = {"video": str(video), "max_tokens": args.max_tokens, "process_audio": audio}
    return job | {name: value for name in ("fps", "max_frames") if (value := getattr(args, name)) is not None}


async def measure(service: CaptionService, video: Path, args: argparse.Namespace, audio: bool) -> dict:
    concurrency = args.concurrency
    job = job_for(video, args, audio)
    # The first job pays one-time processor set-up in vLLM's front end; report it apart.
    t = time.perf_counter()
    first = await service.handle(job)
    first_s = time.perf_counter() - t
    assert "error" not in first, first
    singles = []
    for _ in range(3):
        t = time.perf_counter()
        out = await service.handle(job)
        singles.append(time.perf_counter() - t)
        assert "error" not in out, out
    t = time.perf_counter()
    outs = await asyncio.gather(*(service.handle(job) for _ in range(concurrency)))
    wall = time.perf_counter() - t
    errors = [o for o in outs if "error" in o]
    assert not errors, errors[:2]
    meta = [o["metadata"] for o in outs]
    return {
        "first_job_s": round(first_s, 2),
        "one_job_latency_s": round(statistics.median(singles), 2),
        "one_job_timings": out["metadata"]["timings"],
        "concurrency": concurrency,
        "concurrent_wall_s": round(wall, 2),
        "jobs_per_s": round(concurrency / wall, 3),
        "speedup_vs_one_at_a_time": round((concurrency / wall) * statistics.median(singles), 2),
        "num_frames": meta[0]["num_frames"],
        "frame_size": meta[0]["frame_size"],
        "prompt_tokens": meta[0]["prompt_tokens"],
        "audio_processed": meta[0]["audio_processed"],
        "audio_seconds": meta[0]["audio_seconds"],
        "audio_tokens": meta[0]["audio_tokens"],
        "completion_tokens_mean": round(statistics.mean(m["completion_tokens"] for m in meta), 1),
        "decode_s_mean_under_load": round(statistics.mean(m["timings"]["decode"] for m in meta), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--fps", type=float, help="the job's fps (default: the worker's)")
    parser.add_argument("--max-frames", type=int, help="the job's max_frames (default: the worker's)")
    parser.add_argument("--size", default="7b")
    parser.add_argument("--family", default="qwen2_5_vl")
    parser.add_argument(
        "--process-audio", nargs="+", default=[False], type=lambda v: v.lower() == "true", help="true / false"
    )
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument(
        "--decoders",
        nargs="+",
        default=["processes"],
        choices=["processes", "threads"],
        help="processes: DECODE_WORKERS decoder processes (the worker's default); threads: DECODE_WORKERS=0",
    )
    parser.add_argument("--decode-workers", type=int, help="DECODE_WORKERS for --decoders processes (default: cores)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    t = time.perf_counter()
    video = make_video(work / "clip_720p_60s.mp4", seconds=60, fps=30, width=1280, height=720, audio="aac")
    make_s = time.perf_counter() - t
    model = cached_dummy_model(args.family, args.size)
    settings = Settings(
        model_name=str(model),
        load_format="dummy",
        enforce_eager=args.enforce_eager,
        allowed_media_roots=[work],
        work_dir=work / "jobs",
        decode_workers=args.decode_workers,
        # The deployment's default limit would refuse e.g. fps 2 over the 60 s clip (120 frames).
        max_frames_limit=max(Settings.model_fields["max_frames_limit"].default, args.max_frames or 0),
    )
    t = time.perf_counter()
    slot = EngineSlot()
    slot.start(settings)
    start_s = time.perf_counter() - t
    engine = slot.get()  # raises with the start-up failure, if any
    pools = {name: start_decoders(settings) if name == "processes" else DecodePool(0) for name in args.decoders}
    services = {name: CaptionService(settings, slot, pool) for name, pool in pools.items()}
    figures = asyncio.run(measure_all(services, video, args))
    result = {
        "model": f"{args.family} {args.size} dummy weights",
        "video": "60 s 1280x720 H.264 30 fps + AAC (generated)",
        "video_generate_s": round(make_s, 1),
        "engine_start_s": round(start_s, 1),
        "enforce_eager": args.enforce_eager,
        "decode_workers": {name: pool.workers for name, pool in pools.items()},
        "max_model_len": settings.max_model_len,
        "max_tokens": args.max_tokens,
        "job_fps_max_frames": [args.fps, args.max_frames],  # None: the worker's defaults
        "gpu_memory_used_mib": gpu_memory_used_mib(),
        "runs": figures,
    }
    print("RESULT " + json.dumps(result), flush=True)
    # asyncio.run has closed the loop the engine's output task lived on, so the slot reports it stopped;
    # shut the engine process down directly.
    engine.shutdown()
    for pool in pools.values():
        pool.shutdown()


if __name__ == "__main__":
    main()
