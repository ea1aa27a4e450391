"""The vLLM engine: built once per process at cold start and shared by all jobs.

vLLM's AsyncLLM batches whatever requests are in flight, so concurrent jobs simply call ``generate``.
A failed start is kept, not raised: the worker stays up and every job reports what failed (a crash loop
would only make RunPod restart the same failure). An engine that dies later (its core process killed,
e.g. by the OOM killer) is rebuilt in this process; jobs wait for the new one.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from worker.models import vllm_plugin
from worker.models.adapters import MediaLimits, ModelAdapter, adapter_for
from worker.config import Settings
from worker.api.errors import EngineError, UnsupportedInputError, ValidationError

log = logging.getLogger(__name__)


# Largest KV cache the CPU backend gets by default (_cpu_kv_cache_bytes): the default model's 32768-token
# context needs 1.75 GiB (Qwen2.5-VL/Omni 7B), the tiny test models a few MiB.
CPU_KV_CACHE_BYTES = 2 * 2**30

REPORTED_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens", "seed", "stop")


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    sampling: dict[str, Any]  # the sampling parameters in effect, job's and model's defaults merged
    token_ids: tuple[int, ...] = ()  # the answer's ids (commentary extends its conversation with them)
    cached_tokens: int | None = None  # prompt tokens vLLM's prefix cache served (None: not reported)


@dataclass(frozen=True)
class PixelLimits:
    min_pixels: int
    max_pixels: int


@dataclass(frozen=True)
class MediaPixels:
    video: PixelLimits
    image: PixelLimits


class Engine:
    def __init__(
        self, llm: Any, adapter: ModelAdapter, tokenizer: Any, model: str, pixels: MediaPixels, warm_up: str = "after"
    ) -> None:
        self.llm = llm
        self.adapter = adapter
        self.tokenizer = tokenizer
        self.model = model
        self.pixels = pixels
        self.max_model_len: int = llm.vllm_config.model_config.max_model_len
        # The model's generation_config.json (e.g. Qwen's repetition_penalty 1.05) fills what a job leaves
        # unset, as vLLM's own server does; SamplingParams alone would use neutral values instead.
        self.sampling_defaults: dict[str, Any] = llm.vllm_config.model_config.get_diff_sampling_param()
        self.on_death: Callable[[], None] | None = None
        self.warm_up_mode = warm_up  # ENGINE_WARM_UP

    @classmethod
    def build(cls, settings: Settings) -> Engine:
        # Imported here: `import vllm` takes ~20 s and is only needed once the engine is really built.
        from transformers import AutoConfig
        from vllm import AsyncEngineArgs
        from vllm.config import StructuredOutputsConfig
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        from vllm.plugins import load_general_plugins

        from worker.engine_warmup import early_warm_up

        # Before the config: the plugins teach transformers the original video-SALMONN 2's config type.
        load_general_plugins()
        plugins = vllm_plugin.registered()
        try:
            hf_config = AutoConfig.from_pretrained(
                settings.model_name, revision=settings.model_revision, trust_remote_code=settings.trust_remote_code
            )
        except (KeyError, ValueError) as exc:  # an unknown model_type: a plugin's, when the plugins are missing
            if not plugins:
                raise EngineError(vllm_plugin.NOT_REGISTERED.format(what=settings.model_name) + f" ({exc!r})") from exc
            raise
        architectures = getattr(hf_config, "architectures", None)
        if not plugins and (needed := vllm_plugin.served_by_plugin(architectures)):
            raise EngineError(vllm_plugin.NOT_REGISTERED.format(what=", ".join(needed)))
        adapter = adapter_for(architectures)
        pixels = _pixel_limits(settings, adapter.has_hf_processor)
        limits = MediaLimits(settings.max_frames_limit, pixels.video.max_pixels, pixels.image.max_pixels)
        args = AsyncEngineArgs(
            model=settings.model_name,
            revision=settings.model_revision,
            tokenizer=settings.tokenizer_name,
            max_model_len=settings.max_model_len,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            kv_cache_memory_bytes=_cpu_kv_cache_bytes(settings),
            dtype=settings.dtype,
            enforce_eager=settings.enforce_eager,
            load_format=settings.load_format,
            max_num_seqs=settings.max_num_seqs,
            tensor_parallel_size=settings.tensor_parallel_size,
            trust_remote_code=settings.trust_remote_code,
            seed=settings.seed,
            # json_schema jobs get compact JSON: with free whitespace between tokens a model can emit blanks
            # until max_tokens (the test models do), and a caption's JSON gains nothing from layout. vLLM
            # allows that only with a named backend, not "auto".
            structured_outputs_config=StructuredOutputsConfig(
                backend=settings.structured_outputs_backend, disable_any_whitespace=True
            ),
            # The family's needs win over the deployment's knobs (Qwen2.5-Omni must run without the
            # multimodal processor cache, whatever MM_PROCESSOR_CACHE_GB says).
            **(settings.engine_overrides() | adapter.engine_kwargs(limits)),
        )
        started = time.perf_counter()
        # The configuration first (what AsyncLLM.from_engine_args does first): vLLM checks QUANTIZATION,
        # KV_CACHE_DTYPE and the rest against the checkpoint and the GPU here, before any weights load.
        try:
            config = args.create_engine_config(UsageContext.ENGINE_CONTEXT)
        except ValueError as exc:  # pydantic's ValidationError, vLLM's config checks, is one
            raise EngineError(f"vLLM rejects the engine settings{_chosen(settings)}: {_reason(exc)}") from exc
        try:
            with early_warm_up(settings.engine_warm_up == "early"):
                llm = AsyncLLM.from_vllm_config(
                    config, enable_log_requests=args.enable_log_requests, disable_log_stats=args.disable_log_stats
                )
        except Exception as exc:
            if not _chosen(settings):
                raise
            # vLLM accepted the names, but the kernels for them are missing here (fp8 on the CPU backend, an
            # older GPU): the engine core's own error is only in the log, so name the likely cause.
            raise EngineError(
                f"the engine failed to start with{_chosen(settings)}, which this GPU or platform may not support "
                f"(vLLM's reason is in the worker log above this error): {type(exc).__name__}: {exc}"
            ) from exc
        elapsed = time.perf_counter() - started
        runner = f"model runner V{2 if config.use_v2_model_runner else 1}"  # VLLM_USE_V2_MODEL_RUNNER or vLLM's
        log.info("engine ready in %.1f s (%s, adapter %s, %s)", elapsed, settings.model_name, adapter.family, runner)
        return cls(llm, adapter, llm.get_tokenizer(), settings.model_name, pixels, settings.engine_warm_up)

    async def generate(
        self,
        inputs: dict[str, Any],
        sampling: dict[str, Any],
        request_id: str,
        json_schema: dict[str, Any] | None = None,
    ) -> Generation:
        from vllm import SamplingParams
        from vllm.v1.engine.exceptions import EngineDeadError

        params = SamplingParams(**(self.sampling_defaults | sampling), structured_outputs=_structured(json_schema))
        final = None
        try:
            stream: AsyncIterator[Any] = self.llm.generate(inputs, params, request_id)
            async for output in stream:
                final = output
        except asyncio.CancelledError:
            # The job was cancelled (RunPod's /cancel, a timeout): vLLM aborts the request when its stream is
            # cancelled, except while it was still being added; abort by our id too, which is a no-op after that.
            with contextlib.suppress(Exception):  # best effort: the cancellation must go on whatever happens
                await self.llm.abort(request_id)
            raise
        except EngineDeadError as exc:
            if self.on_death is not None:
                self.on_death()
            raise EngineError(
                "the inference engine died while serving this job; the worker is rebuilding it, retry the job"
            ) from exc
        except ValueError as exc:
            # vLLM's input checks (prompt longer than MAX_MODEL_LEN, bad multimodal data) raise ValueError.
            raise UnsupportedInputError(f"the engine rejected the request: {exc}") from exc
        if final is None or not final.outputs:
            raise EngineError("the engine returned no output")
        completion = final.outputs[0]
        return Generation(
            text=completion.text,
            prompt_tokens=len(final.prompt_token_ids or []),
            completion_tokens=len(completion.token_ids),
            finish_reason=completion.finish_reason,
            sampling={name: getattr(params, name) for name in REPORTED_SAMPLING},
            token_ids=tuple(completion.token_ids),
            cached_tokens=getattr(final, "num_cached_tokens", None),
        )

    def check_json_schema(self, schema: dict[str, Any]) -> None:
        """Raise ValidationError when the engine's structured-output backend cannot compile ``schema``:
        vLLM's own check (the one ``generate`` would run), done before the job fetches anything. Blocking
        (grammar compilation): run it in a thread."""
        from vllm import SamplingParams

        config = self.llm.vllm_config
        params = SamplingParams(structured_outputs=_structured(schema))
        try:
            params.verify(
                config.model_config, config.speculative_config, config.structured_outputs_config, self.tokenizer
            )
        except ValueError as exc:
            raise ValidationError(
                f"invalid input: json_schema: the engine cannot use this schema: {exc}",
                details=[{"field": "json_schema", "message": f"the engine cannot use this schema: {exc}"}],
            ) from exc

    def warm_up(self) -> bool:
        """Build now what vLLM's front end would otherwise build on the first request: the model's HF
        processor (tokenizer, image/video/audio processors: ~20 s for Qwen2.5-Omni on the GPU host) and the
        chat template, through vLLM's own warm-up (what ``vllm serve`` runs at start: one dummy input per
        modality through the multimodal processor, its cache emptied after). Synchronous, no engine request,
        so it needs no event loop: the one that serves jobs does not exist yet at cold start. Never raises:
        a failed warm-up only leaves the first job to pay for the set-up. Returns whether it ran. ENGINE_WARM_UP
        "early": the renderer began it as the engine core started (worker/engine_warmup.py); "off": none."""
        from vllm.renderers.params import ChatParams

        if self.warm_up_mode == "off":
            log.info("engine warm-up off (ENGINE_WARM_UP=off): the first job builds the HF processor")
            return False
        started = time.perf_counter()
        wait_warm = getattr(self.llm.renderer, "wait_warm", None)
        if wait_warm is not None:  # worker.engine_warmup.EarlyWarmRenderer
            ok: bool = wait_warm()
            took, waited = self.llm.renderer.warm_up_seconds, time.perf_counter() - started
            if ok:
                log.info("engine warmed up in %.1f s, begun with the engine core (%.1f s waited)", took, waited)
            return ok
        try:
            self.llm.renderer.warmup(ChatParams())
        except Exception:
            log.warning("engine warm-up failed; the first job will pay for the set-up", exc_info=True)
            return False
        log.info("engine warmed up in %.1f s", time.perf_counter() - started)
        return True

    @property
    def healthy(self) -> bool:
        return not self.llm.errored

    def shutdown(self) -> None:
        self.llm.shutdown()


def _structured(json_schema: dict[str, Any] | None) -> Any:
    if json_schema is None:
        return None
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(json=json_schema)


def _chosen(settings: Settings) -> str:
    """The quantization settings the deployment set, for an error message: they are the usual culprits."""
    chosen = {"QUANTIZATION": settings.quantization, "KV_CACHE_DTYPE": settings.kv_cache_dtype}
    named = ", ".join(f"{name}={value}" for name, value in chosen.items() if value is not None)
    return f" ({named})" if named else ""


def _reason(exc: ValueError) -> str:
    """vLLM's own words without pydantic's wrapping (input dumps, documentation links)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(str(error.get("msg", error)).removeprefix("Value error, ") for error in errors())
    return str(exc)


def _cpu_kv_cache_bytes(settings: Settings) -> int | None:
    """On vLLM's CPU backend GPU_MEMORY_UTILIZATION is the share of the machine's RAM the engine may take,
    checked against what is free at start, so the GPU default (0.9) fails on any machine that runs anything
    else. Unless the deployment set it (or vLLM's own VLLM_CPU_KVCACHE_SPACE), the KV cache gets an absolute
    budget instead: a quarter of the memory available now, at most CPU_KV_CACHE_BYTES. None elsewhere."""
    import psutil
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or "gpu_memory_utilization" in settings.model_fields_set:
        return None
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return None
    budget = min(CPU_KV_CACHE_BYTES, psutil.virtual_memory().available // 4)
    log.info("CPU engine, GPU_MEMORY_UTILIZATION unset: KV cache of %.2f GiB", budget / 2**30)
    return budget


def _pixel_limits(settings: Settings, has_processor: bool = True) -> MediaPixels:
    """Pixel ranges of frames and images: the deployment's settings within what the model's processors
    accept, so the processors never resize what the planner sized."""
    from transformers import AutoImageProcessor, AutoVideoProcessor

    source = {"revision": settings.model_revision, "trust_remote_code": settings.trust_remote_code}
    video = image = None  # a family without processor files resizes in its plugin (ModelAdapter.has_hf_processor)
    if has_processor:
        video = AutoVideoProcessor.from_pretrained(settings.model_name, **source)
        image = AutoImageProcessor.from_pretrained(settings.model_name, **source)
    return MediaPixels(
        video=_within(video, "VIDEO", settings.video_min_pixels, settings.video_max_pixels),
        image=_within(image, "IMAGE", settings.video_min_pixels, settings.image_max_pixels),
    )


def _within(processor: Any, name: str, wanted_min: int, wanted_max: int) -> PixelLimits:
    size = getattr(processor, "size", None) or {}
    low = int(size.get("shortest_edge") or getattr(processor, "min_pixels", 0) or 0)
    high = int(size.get("longest_edge") or getattr(processor, "max_pixels", 0) or wanted_max)
    limits = PixelLimits(max(wanted_min, low), min(wanted_max, high))
    if limits.min_pixels > limits.max_pixels:
        raise EngineError(
            f"VIDEO_MIN_PIXELS/{name}_MAX_PIXELS ({wanted_min}/{wanted_max}) leave no room within the model's "
            f"{name.lower()} processor range [{low}, {high}]"
        )
    return limits


class EngineSlot:
    """Holds the process's engine, or the reason it could not be built, and rebuilds it when it dies.

    Recovery happens here rather than through runpod's ``refresh_worker`` because it also works where
    nothing restarts the process (the local API, plain ``docker run``) and keeps the jobs that were still
    downloading or decoding: they wait for the new engine instead of being cut off with the worker. Only
    when the rebuild itself fails do jobs ask RunPod for a fresh worker."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._failure: str | None = None
        self._settings: Settings | None = None
        self._rebuild: asyncio.Task[None] | None = None
        self._rebuild_failure: str | None = None
        self.restarts = 0

    def start(self, settings: Settings) -> None:
        self._settings = settings
        try:
            engine = Engine.build(settings)
        except Exception as exc:  # any start failure must leave the worker serving errors, not crash-looping
            self._failure = f"{type(exc).__name__}: {exc}"
            log.exception("engine failed to start; every job will report it")
            return
        engine.warm_up()
        self.set(engine)
        # The engine core is a separate process that outlives ours unless told to stop (seen with the
        # local API server stopped by SIGTERM); uvicorn and runpod return normally on SIGTERM, so atexit runs.
        atexit.register(self.shutdown)

    def set(self, engine: Engine) -> None:
        engine.on_death = self._schedule_rebuild
        self._engine, self._failure = engine, None

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()

    def get(self) -> Engine:
        """The engine as it is now, dead or alive; raises only when there has never been one."""
        if self._engine is None:
            raise EngineError(f"the inference engine failed to start: {self._failure or 'not started'}")
        return self._engine

    async def acquire(self) -> Engine:
        """A live engine. When it has died, the first caller starts a rebuild and every caller waits for it."""
        engine = self.get()
        if engine.healthy:
            return engine
        self._schedule_rebuild()
        if self._rebuild is not None:
            # Shielded: a job cancelled while waiting must not cancel the rebuild the others wait for.
            await asyncio.shield(self._rebuild)
        engine = self.get()
        if self._rebuild_failure is not None or not engine.healthy:
            raise EngineError(
                f"the inference engine died and could not be rebuilt: {self._rebuild_failure or 'died again'}; "
                "this worker asks RunPod for a replacement",
                refresh_worker=True,
            )
        return engine

    def _schedule_rebuild(self) -> None:
        busy = self._rebuild is not None and not self._rebuild.done()
        if busy or self._rebuild_failure is not None or self._engine is None or self._engine.healthy:
            return
        self._rebuild = asyncio.get_running_loop().create_task(self._rebuild_engine(self._engine))

    async def _rebuild_engine(self, dead: Engine) -> None:
        assert self._settings is not None  # set by start(), the only way to get an engine that can die
        log.error("the inference engine died; rebuilding it in this process")
        started = time.perf_counter()
        try:
            # Both block for long (process teardown, model load): off the event loop, which keeps serving.
            await asyncio.to_thread(dead.shutdown)
            engine = await asyncio.to_thread(Engine.build, self._settings)
            await asyncio.to_thread(engine.warm_up)
        except Exception as exc:
            self._rebuild_failure = f"{type(exc).__name__}: {exc}"
            log.exception("rebuilding the inference engine failed; jobs will ask RunPod for a new worker")
            return
        self.set(engine)
        self.restarts += 1
        log.info("inference engine rebuilt in %.1f s (restart %d)", time.perf_counter() - started, self.restarts)
