"""End-to-end throughput (GPU): real encoded clips through the worker's async service, side by side with
the engine alone and with vLLM's own video loader, on one engine in one run.

    python bench/e2e.py                                  # 64 clips, concurrency 1,8,32, 7B-shaped dummy model
    python bench/e2e.py --concurrency 16,32 --variants worker,worker_threads --process-audio true \
        --family qwen2_5_omni                            # decoder processes vs threads, with the sound
    python bench/e2e.py --model /path/to/model --load-format auto
    python bench/e2e.py --max-num-batched-tokens 8192 --enable-prefix-caching false   # engine knobs
    python bench/e2e.py --quantization fp8 --kv-cache-dtype fp8    # fp8 weights (quantized as they load) and KV
    python bench/e2e.py --family qwen2_5_omni --process-audio true \
        --variants worker,worker_appended,engine,engine_appended   # Omni's sound interleaved vs after the frames
    VLLM_CPU_KVCACHE_SPACE=1 python bench/e2e.py --model /tmp/tiny --clips 3 --seconds 4 --concurrency 1,2 \\
        --serial-clips 2 --max-model-len 4096 --enforce-eager    # CPU smoke run (1 GiB KV cache)

Variants, each at every concurrency (jobs in flight at once):
- worker:      CaptionService.handle, exactly as the RunPod handler calls it (fetch, probe, plan, decode in
               the decoder processes: the worker's layout, by default one per 4 usable cores with 4 FFmpeg
               threads each, admitted in arrival order; engine); concurrency 1 is "one job at a time";
- worker_shipped, worker_unordered, worker_8cores: the choices of issue 21 one by one: the layout shipped
               before it (one process per core, FFmpeg's own thread count, no admission order); the
               worker's layout without the admission order (every job's probe, index and decode queued at
               once, as before); the worker's layout on 8 cores (DECODE_CPUS=8), as on a smaller RunPod worker;
- worker_threads: the same with DECODE_WORKERS=0: probe and decode in threads of the worker process;
- worker_nice0, worker_lean, worker_few: the worker with its decoder processes set otherwise, to find
               what keeps the engine fed at high concurrency: at the serving process's priority (nice 0,
               the default before DECODE_NICE=10); cores / DECODE_WORKERS FFmpeg threads per decode
               instead of one per core in each process; or a quarter as many processes with 4 FFmpeg
               threads each, so fewer decodes share the cores and the first ones reach the engine sooner;
- engine:      the same clips decoded beforehand by the worker's own code, only AsyncLLM.generate timed:
               the ceiling the worker can reach;
- worker_appended, engine_appended: worker and engine as above, Qwen2.5-Omni's sound given as an audio item
               after the frames instead of interleaved with them (``use_audio_in_video``), on the same
               engine: with --process-audio true, what the interleaving costs;
- vllm_loader: the clip handed to vLLM's own loader as its chat front end does for a file:// video_url
               (MediaConnector.fetch_video_async -> the model's video loader, vLLM's thread pool), the
               frames resized by the model's HF processor to the same pixel limits, then generate.
The prefix and multimodal caches are emptied before every measurement, and the clips differ pixel for
pixel, so no run is served from an earlier one. GPU busy fraction: NVML utilisation sampled every 100 ms
(absent without a GPU). Ends with one line `RESULT {json}`. Must run as a script (vLLM spawns).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.decode import bool_arg
from worker.devtools.media import make_video
from worker.compile_cache import configure_compile_caches
from worker.config import Settings
from worker.media.pool import DecodePool, decoder_cpus, default_workers, start_decoders
from worker.engine import Engine, EngineSlot
from worker.job.generate import sampling_params
from worker.job.prompt import model_limits, video_sampling
from worker.job.service import CaptionService
from worker.models.adapters.qwen2_5_omni import Qwen25OmniAdapter
from worker.media.video import decode, plan_video
from worker.api.schema import parse_request

log = logging.getLogger("bench.e2e")
VARIANTS = (
    "worker",
    "worker_threads",
    "worker_nice0",
    "worker_lean",
    "worker_few",
    "worker_shipped",
    "worker_unordered",
    "worker_8cores",
    "engine",
    "vllm_loader",
    "worker_appended",
    "engine_appended",
)
# Qwen2.5-Omni with its sound appended after the frames instead of interleaved with them (the adapter's
# audio_in_video=False), on the same engine: what interleaving costs.
APPENDED = ("worker_appended", "engine_appended")
TUNED = ("worker_nice0", "worker_lean", "worker_few", "worker_shipped", "worker_unordered", "worker_8cores")
UNORDERED = 256  # an admission limit no run reaches: every job's decoder calls queue at once, as before issue 21
DEFAULT_VARIANTS = ("worker", "engine", "vllm_loader")
CLIP_VERSION = 1


# ---- clips ----


def _make_clip(job: tuple[Path, int, float, int, int]) -> Path:
    path, seed, seconds, width, height = job
    if not path.exists():
        tmp = path.with_suffix(".part.mp4")
        make_video(
            tmp,
            seconds=seconds,
            fps=30,
            width=width,
            height=height,
            audio="aac",
            texture=True,
            seed=seed,
            encoder_options={"preset": "veryfast"},
        )
        tmp.rename(path)
    return path


def make_clips(media_dir: Path, count: int, seconds: float, width: int, height: int) -> list[Path]:
    """``count`` textured H.264 + AAC clips, each with its own texture; cached in ``media_dir``."""
    media_dir.mkdir(parents=True, exist_ok=True)
    jobs = [
        (media_dir / f"v{CLIP_VERSION}_{width}x{height}_{seconds:g}s_{i:03d}.mp4", i, seconds, width, height)
        for i in range(count)
    ]
    missing = [j for j in jobs if not j[0].exists()]
    if missing:
        # x264 threads too, but one encoder per core keeps every core busy on short clips.
        with multiprocessing.get_context("spawn").Pool(max(1, min(len(missing), os.cpu_count() or 1))) as pool:
            pool.map(_make_clip, missing)
    return [j[0] for j in jobs]


# ---- GPU busy sampling ----


class GpuSampler:
    """Mean NVML utilisation (share of time a kernel ran) of GPU 0 while running; None without NVML."""

    def __init__(self, period: float = 0.1) -> None:
        self.period = period
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handle: Any = None
        try:
            import pynvml
        except ImportError:  # no NVML bindings (CPU build): report None, the rest of the bench still runs
            return
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except pynvml.NVMLError:  # no driver or no GPU
            return
        self._nvml = pynvml

    def __enter__(self) -> Self:
        if self._handle is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def busy(self) -> float | None:
        return round(statistics.mean(self.samples) / 100, 3) if self.samples else None


# ---- variants ----


class Bench:
    def __init__(self, service: CaptionService, engine: Engine, clips: list[Path], args: argparse.Namespace) -> None:
        self.service = service
        # The same service decoding in threads of this process (DECODE_WORKERS=0), for worker_threads.
        self.threads_service = CaptionService(service.settings, service.engine, DecodePool(0))
        self.tuned: dict[str, CaptionService] = {}
        self.engine = engine
        self.clips = clips
        self.args = args
        self.jobs = [self.job(clip) for clip in clips]
        self.request = parse_request(self.jobs[0], max_frames_limit=service.settings.max_frames_limit)
        self.sampling = sampling_params(self.request)
        self.prompt = engine.adapter.build_prompt(
            engine.tokenizer, self.request.conversation, "video", self.request.process_audio
        )
        self.predecoded: list[dict[str, Any]] = []
        self.predecoded_appended: list[dict[str, Any]] = []
        self.appended: CaptionService | None = None  # worker_appended's service, set by main
        self.connector: Any = None
        self.video_processor: str | None = None

    def job(self, clip: Path) -> dict[str, Any]:
        return {
            "video": str(clip),
            "fps": self.args.fps,
            "max_frames": self.args.max_frames,
            "max_tokens": self.args.max_tokens,
            "process_audio": self.args.process_audio,
        }

    def predecode(self) -> None:
        """The worker's own probe/plan/decode for every clip, then the adapter's engine inputs."""
        asyncio.run(self._predecode())

    async def _predecode(self) -> None:
        engine = self.engine
        settings = self.service.settings
        for clip, job in zip(self.clips, self.jobs, strict=True):
            request = parse_request(job, max_frames_limit=settings.max_frames_limit)
            plan = await plan_video(
                self.service.decoder,
                clip,
                video_sampling(request),
                model_limits(request, engine, settings),
                max_source_pixels=settings.max_source_pixels,
                max_video_seconds=settings.max_video_seconds,
            )
            chunk = plan.chunks[0]
            media = await decode(self.service.decoder, plan, chunk)
            inputs = engine.adapter.video_inputs(self.prompt, media.frames, plan.probe, chunk.fps_used, media.audio)
            self.predecoded.append(inputs)
            if self.appended is not None:
                adapter = self.appended.engine.get().adapter
                prompt = adapter.build_prompt(engine.tokenizer, request.conversation, "video", request.process_audio)
                appended = adapter.video_inputs(prompt, media.frames, plan.probe, chunk.fps_used, media.audio)
                self.predecoded_appended.append(appended)

    def setup_vllm_loader(self) -> None:
        from vllm.multimodal.media.connector import MediaConnector
        from vllm.transformers_utils.processor import get_video_processor_cls_name

        # What `--media-io-kwargs '{"video": {"fps": F, "max_frames": N}}'` gives the chat front end.
        video_io = {"fps": self.args.fps, "max_frames": self.args.max_frames}
        self.connector = MediaConnector({"video": video_io}, allowed_local_media_path=str(self.clips[0].parent))
        self.video_processor = get_video_processor_cls_name(self.engine.llm.vllm_config.model_config)

    async def one(self, variant: str, i: int) -> dict[str, Any]:
        started = time.perf_counter()
        if variant in ("worker", "worker_threads", "worker_appended", *TUNED):
            services = {"worker": self.service, "worker_threads": self.threads_service, **self.tuned}
            service = self.appended if variant == "worker_appended" else services[variant]
            assert service is not None
            out = await service.handle(self.jobs[i])
            if "error" in out:
                raise RuntimeError(f"clip {i}: {out['error']}")
            meta = out["metadata"]
            prompt_tokens, completion = meta["prompt_tokens"], meta["completion_tokens"]
            timings = meta["timings"]
        else:
            if variant in ("engine", "engine_appended"):
                inputs = (self.predecoded_appended if variant == "engine_appended" else self.predecoded)[i]
            else:
                frames, metadata = await self.connector.fetch_video_async(
                    self.clips[i].as_uri(), video_processor=self.video_processor
                )
                pixels = self.engine.pixels.video
                inputs = {
                    "prompt": self.prompt,
                    "multi_modal_data": {"video": (frames, metadata)},
                    # The same per-frame pixel limits the worker plans with, so both spend alike on tokens.
                    "mm_processor_kwargs": {
                        "size": {"shortest_edge": pixels.min_pixels, "longest_edge": pixels.max_pixels}
                    },
                }
            generation = await self.engine.generate(inputs, self.sampling, f"{variant}-{i}-{uuid.uuid4().hex[:8]}")
            prompt_tokens, completion = generation.prompt_tokens, generation.completion_tokens
            timings = {}
        return {
            "latency": time.perf_counter() - started,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            # The worker's own split of each job (fetch+probe+plan, decode, engine request to last token): it
            # shows whether jobs under load wait on their frames or on the engine.
            **{f"{k}_s": v for k, v in timings.items()},
        }

    async def measure(self, variant: str, concurrency: int, count: int) -> dict[str, Any]:
        llm = self.engine.llm
        # Nothing carried over from an earlier run: same pixels would hit both caches.
        await llm.reset_mm_cache()
        await llm.reset_prefix_cache()
        gate = asyncio.Semaphore(concurrency)

        async def gated(i: int) -> dict[str, Any]:
            async with gate:
                return await self.one(variant, i)

        with GpuSampler() as gpu:
            started = time.perf_counter()
            results = await asyncio.gather(*(gated(i) for i in range(count)))
            wall = time.perf_counter() - started
        return {
            "videos": count,
            "wall_s": round(wall, 2),
            "videos_per_s": round(count / wall, 4),
            "latency_p50_s": round(statistics.median(r["latency"] for r in results), 3),
            "gpu_busy": gpu.busy,
            "prompt_tokens_mean": round(statistics.mean(r["prompt_tokens"] for r in results), 1),
            "completion_tokens_mean": round(statistics.mean(r["completion_tokens"] for r in results), 1),
            **{
                f"{part}_mean_s": round(statistics.mean(r[f"{part}_s"] for r in results), 3)
                for part in ("fetch", "decode", "inference")
                if all(f"{part}_s" in r for r in results)
            },
        }


async def run_all(
    bench: Bench, variants: list[str], levels: list[int], serial_clips: int, serial_variants: list[str]
) -> dict[str, Any]:
    # The first jobs pay one-time set-up in vLLM's front end (processor, loader); not part of any figure.
    for variant in variants:
        await bench.one(variant, 0)
    figures: dict[str, dict[str, Any]] = {v: {} for v in variants}
    for concurrency in levels:
        for variant in variants:
            if concurrency == 1 and variant not in serial_variants:
                continue
            count = min(len(bench.clips), serial_clips) if concurrency == 1 else len(bench.clips)
            got = await bench.measure(variant, concurrency, count)
            figures[variant][str(concurrency)] = got
            log.info("%s at concurrency %d: %s", variant, concurrency, got)
    return figures


def ratios(figures: dict[str, dict[str, Any]], levels: list[int]) -> dict[str, Any]:
    def rate(variant: str, level: int) -> float | None:
        return figures.get(variant, {}).get(str(level), {}).get("videos_per_s")

    out: dict[str, Any] = {}
    for level in levels:
        for kind in ("worker", "engine"):  # videos/s interleaved over appended: below 1, interleaving costs
            interleaved, appended = rate(kind, level), rate(f"{kind}_appended", level)
            if interleaved and appended:
                out[f"{kind}_interleaved_over_appended_c{level}"] = round(interleaved / appended, 3)
        worker = rate("worker", level)
        if worker is None:
            continue
        for other in ("worker_threads", *TUNED, "engine", "vllm_loader"):
            if rate(other, level):
                out[f"worker_over_{other}_c{level}"] = round(worker / rate(other, level), 3)
        if level != 1 and rate("worker", 1):
            out[f"worker_c{level}_over_one_at_a_time"] = round(worker / rate("worker", 1), 2)
    top = max(levels)
    targets = {
        "worker_vs_engine_at_top_ge_0.9": out.get(f"worker_over_engine_c{top}"),
        "worker_vs_one_at_a_time_at_top_ge_4": out.get(f"worker_c{top}_over_one_at_a_time"),
        "worker_vs_vllm_loader_at_top_ge_1.5": out.get(f"worker_over_vllm_loader_c{top}"),
    }
    out["targets"] = {
        k: {"value": v, "met": v is not None and v >= float(k.rsplit("_ge_", 1)[1])} for k, v in targets.items()
    }
    return out


def print_table(figures: dict[str, dict[str, Any]], levels: list[int]) -> None:
    print(
        "\n| variant | concurrency | videos | videos/s | p50 latency s | GPU busy | prompt tokens | output tokens "
        "| mean decode / inference s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for variant, by_level in figures.items():
        for level in levels:
            f = by_level.get(str(level))
            if f:
                busy = "-" if f["gpu_busy"] is None else f"{f['gpu_busy']:.0%}"
                split = f"{f['decode_mean_s']:.2f} / {f['inference_mean_s']:.2f}" if "decode_mean_s" in f else "-"
                print(
                    f"| {variant} | {level} | {f['videos']} | {f['videos_per_s']:.3f} | {f['latency_p50_s']:.2f} | "
                    f"{busy} | {f['prompt_tokens_mean']:.0f} | {f['completion_tokens_mean']:.0f} | {split} |"
                )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or id (default: a dummy qwen2_5_vl folder of --size)")
    parser.add_argument("--size", default="7b", help="dummy model size when --model is not given")
    parser.add_argument("--load-format", default="dummy", help="dummy = random weights (default)")
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--serial-clips", type=int, default=16, help="clips timed at concurrency 1 (a rate)")
    parser.add_argument("--serial-variants", help="the variants timed at concurrency 1 (default: all of --variants)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each clip")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"from {','.join(VARIANTS)}")
    parser.add_argument("--family", default="qwen2_5_vl", help="dummy model family when --model is not given")
    parser.add_argument("--process-audio", type=bool_arg, default=False, help="jobs hear the sound (audio models)")
    parser.add_argument("--decode-workers", type=int, help="DECODE_WORKERS of the worker variant (default: cores / 4)")
    parser.add_argument("--decode-threads", type=int, help="DECODE_THREADS of the worker variant (default: 4)")
    parser.add_argument("--decode-cpus", help="DECODE_CPUS of the worker variant, e.g. 8 or 0-7 (default: all)")
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--max-frames", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=32768)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.90)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--enable-prefix-caching", type=bool_arg, help="ENABLE_PREFIX_CACHING (default: vLLM's)")
    parser.add_argument("--max-num-batched-tokens", type=int, help="MAX_NUM_BATCHED_TOKENS (default: vLLM's)")
    parser.add_argument("--mm-processor-cache-gb", type=float, help="MM_PROCESSOR_CACHE_GB (default: vLLM's)")
    parser.add_argument("--quantization", help="QUANTIZATION, e.g. fp8 (default: the checkpoint's)")
    parser.add_argument("--kv-cache-dtype", help="KV_CACHE_DTYPE, e.g. fp8 (default: auto, the model's dtype)")
    parser.add_argument("--media-dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-e2e-media")
    parser.add_argument(
        "--compile-cache-dir",
        type=Path,
        help="COMPILE_CACHE_DIR for this run (e.g. the one bench/coldstart.py --cache-dir filled); default: "
        "the libraries' own cache folders",
    )
    parser.add_argument("--out", type=Path, help="also write the RESULT json to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    levels = [int(c) for c in args.concurrency.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    serial_variants = args.serial_variants.split(",") if args.serial_variants else variants
    if set(variants) - set(VARIANTS) or set(serial_variants) - set(variants):
        parser.error(f"--variants from {VARIANTS}; --serial-variants from --variants")

    t = time.perf_counter()
    clips = make_clips(args.media_dir, args.clips, args.seconds, args.width, args.height)
    clips_s = time.perf_counter() - t
    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    if args.model:
        model = args.model
    else:
        from worker.devtools.dummy_model import cached_dummy_model

        model = str(cached_dummy_model(args.family, args.size))
    settings = Settings(
        model_name=model,
        load_format=args.load_format,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=args.enforce_eager,
        max_num_seqs=max(levels),
        max_concurrency=max(levels),
        max_frames_limit=max(Settings.model_fields["max_frames_limit"].default, args.max_frames),
        enable_prefix_caching=args.enable_prefix_caching,
        max_num_batched_tokens=args.max_num_batched_tokens,
        mm_processor_cache_gb=args.mm_processor_cache_gb,
        quantization=args.quantization,
        kv_cache_dtype=args.kv_cache_dtype,
        allowed_media_roots=[args.media_dir],
        work_dir=work / "jobs",
        decode_workers=args.decode_workers,
        **{k: v for k, v in (("decode_threads", args.decode_threads), ("decode_cpus", args.decode_cpus)) if v is not None},
    )
    if args.compile_cache_dir:
        # As the handler does at start, before vLLM is imported (nothing above has imported it).
        configure_compile_caches(args.compile_cache_dir)
    t = time.perf_counter()
    slot = EngineSlot()
    slot.start(settings)
    engine = slot.get()  # raises with the start-up failure, if any
    start_s = time.perf_counter() - t
    memory_gib = _gpu_memory_used_gib()  # the engine's weights, KV cache and activations, before any job
    service = CaptionService(settings, slot, start_decoders(settings))
    bench = Bench(service, engine, clips, args)
    workers = service.decoder.workers
    cores = default_workers()
    eight = decoder_cpus("8")
    tuning: dict[str, dict[str, Any]] = {
        "worker_nice0": {"workers": workers, "nice": 0},
        "worker_lean": {
            "workers": workers,
            "nice": settings.decode_nice,
            "frame_threads": max(1, cores // max(1, workers)),
        },
        "worker_few": {"workers": max(1, cores // 4), "nice": settings.decode_nice, "frame_threads": 4},
        "worker_shipped": {"workers": cores, "nice": settings.decode_nice, "admit": UNORDERED},
        "worker_unordered": {
            "workers": workers,
            "nice": settings.decode_nice,
            "frame_threads": settings.decode_threads,
            "admit": UNORDERED,
        },
        "worker_8cores": {
            "workers": max(1, len(eight or []) // max(1, settings.decode_threads)),
            "nice": settings.decode_nice,
            "frame_threads": settings.decode_threads,
            "cpus": eight,
        },
    }
    for name in TUNED:
        if name in variants:
            pool = DecodePool(**tuning[name])
            pool.start()
            bench.tuned[name] = CaptionService(settings, slot, pool)
    if set(APPENDED) & set(variants):
        if not isinstance(engine.adapter, Qwen25OmniAdapter):
            parser.error(f"--variants {','.join(APPENDED)} are Qwen2.5-Omni's (this model is {engine.adapter.family})")
        # The same engine, its adapter giving the sound after the frames.
        appended_engine = copy.copy(engine)
        appended_engine.adapter = Qwen25OmniAdapter(audio_in_video=False)
        appended_slot = EngineSlot()
        appended_slot.set(appended_engine)
        bench.appended = CaptionService(settings, appended_slot, service.decoder)
    if {"engine", "engine_appended"} & set(variants):
        bench.predecode()
    if "vllm_loader" in variants:
        bench.setup_vllm_loader()
    figures = asyncio.run(run_all(bench, variants, levels, args.serial_clips, serial_variants))
    scheduler = engine.llm.vllm_config.scheduler_config
    result = {
        "bench": "e2e",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "device": _device(),
        "model": model if args.model else f"{args.family} {args.size} dummy weights",
        "decode_workers": service.decoder.workers,
        "decode_threads": settings.decode_threads,
        "decode_cpus": service.decoder.cpus,
        "decode_admission_limit": service.decoder.admission.limit,
        "decode_nice": settings.decode_nice,
        "tuned_decoders": {name: tuning[name] for name in bench.tuned},
        "load_format": args.load_format,
        "clips": f"{args.clips} x {args.seconds:g} s {args.width}x{args.height} H.264 30 fps + AAC (generated)",
        "request": {
            "fps": args.fps,
            "max_frames": args.max_frames,
            "max_tokens": args.max_tokens,
            "process_audio": args.process_audio,
        },
        "engine": {
            "max_model_len": settings.max_model_len,
            "max_num_seqs": settings.max_num_seqs,
            "enforce_eager": settings.enforce_eager,
            "max_num_batched_tokens": scheduler.max_num_batched_tokens,
            "enable_prefix_caching": engine.llm.vllm_config.cache_config.enable_prefix_caching,
            "mm_processor_cache_gb": engine.llm.vllm_config.model_config.multimodal_config.mm_processor_cache_gb,
            "quantization": engine.llm.vllm_config.model_config.quantization,
            "kv_cache_dtype": engine.llm.vllm_config.cache_config.cache_dtype,
            # Tokens the KV cache holds: with fp8 KV twice as many fit the same memory.
            "kv_cache_tokens": (engine.llm.vllm_config.cache_config.num_gpu_blocks or 0)
            * engine.llm.vllm_config.cache_config.block_size,
            "gpu_memory_used_gib": memory_gib,
        },
        "clips_ready_s": round(clips_s, 1),
        "engine_start_s": round(start_s, 1),
        "figures": figures,
        "ratios": ratios(figures, levels),
    }
    print_table(figures, levels)
    print(json.dumps(result["ratios"], indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("RESULT " + json.dumps(result), flush=True)
    # asyncio.run has closed the loop the engine's output task lived on; stop the engine process directly.
    engine.shutdown()
    for decoders in [service.decoder, *(tuned.decoder for tuned in bench.tuned.values())]:
        decoders.shutdown()


def _gpu_memory_used_gib() -> float | None:
    """Memory in use on GPU 0 (every process: the engine core's), None without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        used = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used
    except Exception:  # no bindings, driver or GPU
        return None
    return round(used / 2**30, 2)


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return f"CPU ({os.cpu_count()} cores)"


if __name__ == "__main__":
    main()
