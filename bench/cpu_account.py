"""A job's CPU by stage, alone and under load: which stage costs more per job when many jobs run at once.

    python bench/cpu_account.py                                    # GPU: 32 x 30 s 720p clips, 7B dummy, 1 and 32 in flight
    python bench/cpu_account.py --decode-workers 16 --decode-threads 1   # the old layout (16 x 1)
    python bench/cpu_account.py --decode-cpus 8                    # decoders limited to 8 cores
    VLLM_CPU_KVCACHE_SPACE=1 python bench/cpu_account.py --size tiny --clips 4 --seconds 4 --width 640 \\
        --height 360 --concurrency 1,4 --max-frames 8 --max-tokens 8 --max-model-len 4096 --enforce-eager \\
        --out bench/results/cpu_account_tiny_cpu_<date>.json      # CPU smoke run

Each job runs through CaptionService.handle, as the RunPod handler calls it; its result's
``metadata.timings.cpu`` (worker/media/cpu.py) gives CPU seconds per stage: probe, packet_index, decode
(FFmpeg, all its threads), resize (swscale to the model's size and RGB), audio, handover (pickling the frames
in the decoder process and reading them back in the serving process) and frontend (vLLM's
InputProcessor.process_inputs in the serving process: the HF processor's resize, normalise and patchify,
and tokenising; timed here by wrapping it, the worker does not). Besides, whole processes' CPU over each run
(psutil): the serving process, the decoder processes and the rest (vLLM's engine core). Each stage's mean
per job at every concurrency, and its ratio loaded / alone: near 1, load costs that stage nothing extra.
Ends with one line `RESULT {json}`. Must run as a script (vLLM spawns).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.decode import bool_arg
from bench.e2e import make_clips
from worker.config import Settings
from worker.engine import Engine, EngineSlot
from worker.job.service import CaptionService
from worker.media import cpu
from worker.media.pool import DecodePool, start_decoders

log = logging.getLogger("bench.cpu_account")


def time_front_end(engine: Engine) -> None:
    """Charge vLLM's input processing (the HF processor and tokenizer, run in the serving process as a
    request is added) to the job's ledger as "frontend": it runs in the job's own task, on this thread."""
    processor = engine.llm.input_processor
    original = processor.process_inputs

    def timed(*args: Any, **kwargs: Any) -> Any:
        with cpu.measured("frontend", time.thread_time):
            return original(*args, **kwargs)

    processor.process_inputs = timed


class ProcessCpu:
    """CPU seconds of the serving process, the decoder processes and the other children (engine core)."""

    def __init__(self, decoders: DecodePool) -> None:
        self.me = psutil.Process()
        self.decoders = decoders

    def read(self) -> dict[str, float]:
        def used(process: psutil.Process) -> float:
            try:
                times = process.cpu_times()
            except psutil.Error:  # ended meanwhile
                return 0.0
            return times.user + times.system

        decoder_pids = set(self.decoders.pids())
        children = self.me.children(recursive=True)
        return {
            "serving_process": used(self.me),
            "decoder_processes": sum(used(p) for p in children if p.pid in decoder_pids),
            "other_children": sum(used(p) for p in children if p.pid not in decoder_pids),
        }


async def run_level(
    service: CaptionService, jobs: list[dict[str, Any]], concurrency: int, sampler: ProcessCpu
) -> dict[str, Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> dict[str, Any]:
        async with gate:
            out = await service.handle(jobs[i], f"cpu-{concurrency}-{i}")
        if "error" in out:
            raise RuntimeError(f"clip {i}: {out['error']}")
        return out["metadata"]

    before = sampler.read()
    started = time.perf_counter()
    metas = await asyncio.gather(*(one(i) for i in range(len(jobs))))
    wall = time.perf_counter() - started
    after = sampler.read()
    stages = sorted({s for m in metas for s in m["timings"]["cpu"]}, key=lambda s: cpu.STAGES.index(s))
    per_job = {s: round(statistics.mean(m["timings"]["cpu"].get(s, 0.0) for m in metas), 4) for s in stages}
    per_job["accounted_total"] = round(sum(per_job[s] for s in stages), 4)
    return {
        "jobs": len(jobs),
        "wall_s": round(wall, 2),
        "videos_per_s": round(len(jobs) / wall, 4),
        "decode_wall_mean_s": round(statistics.mean(m["timings"]["decode"] for m in metas), 3),
        "cpu_per_job_s": per_job,
        "process_cpu_per_job_s": {k: round((after[k] - before[k]) / len(jobs), 4) for k in after},
        "decoder_peak_calls": service.decoder.peak_in_flight,
        "admission_peak": service.decoder.admission.peak,
    }


def print_table(figures: dict[str, dict[str, Any]], alone: str, loaded: str) -> None:
    rows = list(figures[alone]["cpu_per_job_s"]) + list(figures[alone]["process_cpu_per_job_s"])
    print(f"\n| CPU s per job | {alone} in flight | {loaded} in flight | loaded / alone |")
    print("|---|---|---|---|")
    for row in rows:
        a = {**figures[alone]["cpu_per_job_s"], **figures[alone]["process_cpu_per_job_s"]}.get(row)
        b = {**figures[loaded]["cpu_per_job_s"], **figures[loaded]["process_cpu_per_job_s"]}.get(row)
        ratio = f"{b / a:.2f}" if a and b is not None else "-"
        print(f"| {row} | {a} | {b} | {ratio} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder (default: a dummy folder of --family and --size)")
    parser.add_argument("--family", default="qwen2_5_vl")
    parser.add_argument("--size", default="7b")
    parser.add_argument("--load-format", default="dummy")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--concurrency", default="1,32", help="the first level is 'alone', the last 'loaded'")
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--max-frames", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--process-audio", type=bool_arg, default=False)
    parser.add_argument("--max-model-len", type=int, default=32768)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.90)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--decode-workers", type=int, help="DECODE_WORKERS (default: the worker's layout)")
    parser.add_argument("--decode-threads", type=int, help="DECODE_THREADS (default: the worker's, 4)")
    parser.add_argument("--decode-cpus", help="DECODE_CPUS, e.g. 8 or 0-7 (default: every usable core)")
    parser.add_argument("--media-dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-e2e-media")
    parser.add_argument("--out", type=Path, help="also write the RESULT json to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    levels = [int(c) for c in args.concurrency.split(",")]
    clips = make_clips(args.media_dir, args.clips, args.seconds, args.width, args.height)
    if args.model:
        model = args.model
    else:
        from worker.devtools.dummy_model import cached_dummy_model

        model = str(cached_dummy_model(args.family, args.size))
    decoding = {
        name: value
        for name, value in (
            ("decode_workers", args.decode_workers),
            ("decode_threads", args.decode_threads),
            ("decode_cpus", args.decode_cpus),
        )
        if value is not None
    }
    settings = Settings(
        model_name=model,
        load_format=args.load_format,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=args.enforce_eager,
        max_num_seqs=max(levels),
        max_concurrency=max(levels),
        max_frames_limit=max(Settings.model_fields["max_frames_limit"].default, args.max_frames),
        allowed_media_roots=[args.media_dir],
        work_dir=Path(tempfile.mkdtemp(prefix="bench-cpu-")) / "jobs",
        **decoding,
    )
    slot = EngineSlot()
    slot.start(settings)
    engine = slot.get()
    time_front_end(engine)
    service = CaptionService(settings, slot, start_decoders(settings))
    jobs = [
        {
            "video": str(clip),
            "fps": args.fps,
            "max_frames": args.max_frames,
            "max_tokens": args.max_tokens,
            "process_audio": args.process_audio,
        }
        for clip in clips
    ]
    sampler = ProcessCpu(service.decoder)

    async def run_all() -> dict[str, dict[str, Any]]:
        await service.handle(jobs[0], "cpu-warm-up")  # one-time set-up in vLLM's front end, in no figure
        figures: dict[str, dict[str, Any]] = {}
        for level in levels:
            await engine.llm.reset_mm_cache()
            await engine.llm.reset_prefix_cache()
            figures[str(level)] = await run_level(service, jobs, level, sampler)
            log.info("concurrency %d: %s", level, figures[str(level)])
        return figures

    figures = asyncio.run(run_all())
    alone, loaded = str(levels[0]), str(levels[-1])
    both = {
        **{k: (figures[alone]["cpu_per_job_s"].get(k), v) for k, v in figures[loaded]["cpu_per_job_s"].items()},
        **{k: (figures[alone]["process_cpu_per_job_s"][k], v) for k, v in figures[loaded]["process_cpu_per_job_s"].items()},
    }
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    result = {
        "bench": "cpu_account",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "device": device,
        "usable_cores": len(os.sched_getaffinity(0)),
        "model": model if args.model else f"{args.family} {args.size} dummy weights",
        "clips": f"{args.clips} x {args.seconds:g} s {args.width}x{args.height} H.264 30 fps + AAC (generated)",
        "request": {"fps": args.fps, "max_frames": args.max_frames, "max_tokens": args.max_tokens,
                    "process_audio": args.process_audio},
        "decoders": {
            "processes": service.decoder.workers,
            "ffmpeg_threads": settings.decode_threads,
            "cpus": service.decoder.cpus,
            "admission_limit": service.decoder.admission.limit,
        },
        "figures": figures,
        "ratios": {
            f"loaded_over_alone_{k}": round(b / a, 3) for k, (a, b) in both.items() if a and b is not None
        },
    }
    print_table(figures, alone, loaded)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("RESULT " + json.dumps(result), flush=True)
    engine.shutdown()
    service.decoder.shutdown()


if __name__ == "__main__":
    main()
