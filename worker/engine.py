"""The vLLM engine: built once per process at cold start and shared by all jobs.

vLLM's AsyncLLM batches whatever requests are in flight, so concurrent jobs simply call ``generate``.
A failed start is kept, not raised: the worker stays up and every job reports what failed (a crash loop
would only make RunPod restart the same failure).
"""

from __future__ import annotations

import atexit
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from worker.adapters import MediaLimits, ModelAdapter, adapter_for
from worker.config import Settings
from worker.errors import EngineError, UnsupportedInputError

log = logging.getLogger(__name__)


REPORTED_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens", "seed", "stop")


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    sampling: dict[str, Any]  # the sampling parameters in effect, job's and model's defaults merged


@dataclass(frozen=True)
class PixelLimits:
    min_pixels: int
    max_pixels: int


@dataclass(frozen=True)
class MediaPixels:
    video: PixelLimits
    image: PixelLimits


class Engine:
    def __init__(self, llm: Any, adapter: ModelAdapter, tokenizer: Any, model: str, pixels: MediaPixels) -> None:
        self.llm = llm
        self.adapter = adapter
        self.tokenizer = tokenizer
        self.model = model
        self.pixels = pixels
        self.max_model_len: int = llm.vllm_config.model_config.max_model_len
        # The model's generation_config.json (e.g. Qwen's repetition_penalty 1.05) fills what a job leaves
        # unset, as vLLM's own server does; SamplingParams alone would use neutral values instead.
        self.sampling_defaults: dict[str, Any] = llm.vllm_config.model_config.get_diff_sampling_param()

    @classmethod
    def build(cls, settings: Settings) -> Engine:
        # Imported here: `import vllm` takes ~20 s and is only needed once the engine is really built.
        from transformers import AutoConfig
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        hf_config = AutoConfig.from_pretrained(
            settings.model_name, revision=settings.model_revision, trust_remote_code=settings.trust_remote_code
        )
        adapter = adapter_for(getattr(hf_config, "architectures", None))
        pixels = _pixel_limits(settings)
        limits = MediaLimits(settings.max_frames_limit, pixels.video.max_pixels, pixels.image.max_pixels)
        args = AsyncEngineArgs(
            model=settings.model_name,
            revision=settings.model_revision,
            tokenizer=settings.tokenizer_name,
            max_model_len=settings.max_model_len,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            dtype=settings.dtype,
            enforce_eager=settings.enforce_eager,
            load_format=settings.load_format,
            max_num_seqs=settings.max_num_seqs,
            tensor_parallel_size=settings.tensor_parallel_size,
            trust_remote_code=settings.trust_remote_code,
            seed=settings.seed,
            **settings.engine_overrides(),
            **adapter.engine_kwargs(limits),
        )
        started = time.perf_counter()
        llm = AsyncLLM.from_engine_args(args)
        elapsed = time.perf_counter() - started
        log.info("engine ready in %.1f s (%s, adapter %s)", elapsed, settings.model_name, adapter.family)
        return cls(llm, adapter, llm.get_tokenizer(), settings.model_name, pixels)

    async def generate(self, inputs: dict[str, Any], sampling: dict[str, Any], request_id: str) -> Generation:
        from vllm import SamplingParams
        from vllm.v1.engine.exceptions import EngineDeadError

        params = SamplingParams(**(self.sampling_defaults | sampling))
        final = None
        try:
            stream: AsyncIterator[Any] = self.llm.generate(inputs, params, request_id)
            async for output in stream:
                final = output
        except EngineDeadError as exc:
            raise EngineError("the inference engine died while serving this job; the worker must restart") from exc
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
        )

    @property
    def healthy(self) -> bool:
        return not self.llm.errored

    def shutdown(self) -> None:
        self.llm.shutdown()


def _pixel_limits(settings: Settings) -> MediaPixels:
    """Pixel ranges of frames and images: the deployment's settings within what the model's processors
    accept, so the processors never resize what the planner sized."""
    from transformers import AutoImageProcessor, AutoVideoProcessor

    source = {"revision": settings.model_revision, "trust_remote_code": settings.trust_remote_code}
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
    """Holds the process's engine, or the reason it could not be built."""

    def __init__(self) -> None:
        self._engine: Engine | None = None
        self._failure: str | None = None

    def start(self, settings: Settings) -> None:
        try:
            self._engine = Engine.build(settings)
        except Exception as exc:  # any start failure must leave the worker serving errors, not crash-looping
            self._failure = f"{type(exc).__name__}: {exc}"
            log.exception("engine failed to start; every job will report it")
            return
        # The engine core is a separate process that outlives ours unless told to stop (seen with the
        # local API server stopped by SIGTERM); uvicorn and runpod return normally on SIGTERM, so atexit runs.
        atexit.register(self._engine.shutdown)

    def set(self, engine: Engine) -> None:
        self._engine, self._failure = engine, None

    def get(self) -> Engine:
        if self._engine is None:
            raise EngineError(f"the inference engine failed to start: {self._failure or 'not started'}")
        if not self._engine.healthy:
            raise EngineError("the inference engine has stopped; the worker must restart")
        return self._engine
