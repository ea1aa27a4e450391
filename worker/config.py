"""Worker settings, read once from the environment.

Names follow RunPod's official vLLM worker (MODEL_NAME, MAX_MODEL_LEN, GPU_MEMORY_UTILIZATION, ...) so a
user moving from it sets the same variables.
"""

from __future__ import annotations

import difflib
import json
import logging
import tempfile
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

log = logging.getLogger(__name__)

# 8192x4096: 8K UHD and 8K 360-degree video pass; one decoded 4:2:0 frame of this size is 48 MiB.
DEFAULT_MAX_SOURCE_PIXELS = 8192 * 4096

def _is_original_video_salmonn_2(model: str) -> bool:
    """A repo id or folder of the original video-SALMONN 2 (by name, or by a local config.json's type)."""
    name = model.rstrip("/").rsplit("/", 1)[-1].lower()
    if "video-salmonn-2" in name and "plus" not in name:
        return True
    config = Path(model) / "config.json"
    try:
        declared = json.loads(config.read_text()) if config.is_file() else {}
    except (OSError, ValueError):
        return False
    architectures = declared.get("architectures") or []
    return declared.get("model_type") == "video_salmonn_2" or "VideoSALMONN2ForCausalLM" in architectures


def parse_cpu_list(text: str) -> int | list[int]:
    """DECODE_CPUS: a count ("8") or a Linux CPU list ("0-7,12", as taskset and cgroups write them)."""
    text = text.strip()
    if text.isdigit():
        if int(text) < 1:
            raise ValueError("DECODE_CPUS: a count of CPUs must be at least 1")
        return int(text)
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()) or (high and int(high) < int(low)):
            raise ValueError(f"DECODE_CPUS={text!r}: expected a count (8) or a CPU list (0-7,12)")
        cpus.update(range(int(low), int(high or low) + 1))
    return sorted(cpus)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # Engine (vLLM)
    # Audio-visual: hears the video's sound with process_audio (README, "Models").
    model_name: str = "Qwen/Qwen2.5-Omni-7B"
    # The video-SALMONN 2 RunPod guide's variables (_seed_variables): MODEL_PATH is the folder to serve when
    # MODEL_NAME is unset; MODEL_BASE is where the authors' eval reads only the config from.
    model_path: str | None = None
    model_base: str | None = None
    model_revision: str | None = None
    tokenizer_name: str | None = None
    max_model_len: int = Field(32768, ge=256)
    gpu_memory_utilization: float = Field(0.90, gt=0.0, le=1.0)
    dtype: str = "auto"
    enforce_eager: bool = False
    load_format: str = "auto"
    max_num_seqs: int = Field(32, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    trust_remote_code: bool = False
    seed: int = 0
    # vLLM scheduler/cache knobs; unset keeps vLLM's own default (see engine_overrides). Chunked prefill
    # is not among them: vLLM warns that turning it off for a generative model may crash the engine.
    enable_prefix_caching: bool | None = None
    # Also the multimodal encoder's cache and per-step budget: vLLM 0.26 sizes both to it (no knob of their own).
    max_num_batched_tokens: int | None = Field(None, ge=1)
    mm_processor_cache_gb: float | None = Field(None, ge=0)
    # "data": with TENSOR_PARALLEL_SIZE > 1, each GPU runs the whole vision encoder on its share of the frames
    # instead of a slice of every layer (vLLM's --mm-encoder-tp-mode; families without support fall back).
    mm_encoder_tp_mode: Literal["weights", "data"] | None = None
    # Skip vLLM's start-up memory profile of the multimodal encoder (faster start; its peak is then not
    # reserved, so long videos at high concurrency may run out of GPU memory). To try, not a default.
    skip_mm_profiling: bool | None = None
    # Weights and KV cache in fewer bits, by vLLM's names (fp8, awq, gptq, ...; KV: fp8, ...), as RunPod's vLLM
    # worker names the variables; unset: the checkpoint's own method and the model's dtype. vLLM checks them
    # when the engine is built, before any weights load (worker/engine.py).
    quantization: str | None = None
    kv_cache_dtype: str | None = None
    # vLLM / torch.compile / Triton caches (worker/compile_cache.py); empty = the libraries' defaults.
    compile_cache_dir: Path | None = Path("/runpod-volume/vllm-cache")
    # Grammar engine of json_schema jobs: xgrammar (vLLM's first choice, fastest) or guidance (llguidance).
    structured_outputs_backend: Literal["xgrammar", "guidance"] = "xgrammar"

    # Serving
    # Jobs one worker takes at once (RunPod's concurrency modifier). 32: the engine needs about that many in
    # flight for its throughput (H200, 7B: 3.2x one job at a time; docs/performance.md), MAX_NUM_SEQS's default too.
    # Decodes still run a few at a time in arrival order (worker/media/admission.py); each job waiting
    # holds at most its frames (60 frames of 448x448 RGB: 36 MB).
    max_concurrency: int = Field(32, ge=1, le=256)
    # The handler streams (an async generator: /stream gets each segment, and every job's output is the list
    # of its parts) instead of returning the result as the job's output (worker/runpod_handler.py).
    enable_streaming: bool = False
    # vLLM's front-end warm-up (the model's HF processor and chat template, which the first request would
    # otherwise build): "early" runs it while the engine core process starts, "after" once the engine is
    # ready, "off" leaves it to the first job (docs/performance.md, Cold start).
    engine_warm_up: Literal["early", "after", "off"] = "early"
    # Decoder processes (worker/media/pool.py); unset: one per DECODE_THREADS usable cores; 0: decode in
    # threads of the worker.
    decode_workers: int | None = Field(None, ge=0, le=256)
    # FFmpeg threads per decoder process; 0: FFmpeg's choice (one per core, in every process). 4 processes
    # x 4 threads fed the engine at 0.91 of its ceiling, 16 x 1 at 0.77 (H200, 16 cores; docs/performance.md).
    decode_threads: int = Field(4, ge=0, le=64)
    # CPUs the decoder processes may run on: a list ("0-7,12") or a count ("8": the first 8 usable);
    # unset: every CPU this process may use. Smaller RunPod workers, or cores kept for the serving process.
    decode_cpus: str | None = None
    # CPU priority of the decoder processes below the serving process, which feeds the GPU: under load
    # they would otherwise take the cores its front end and engine loop need (README, Performance).
    decode_nice: int = Field(10, ge=0, le=19)
    debug: bool = False

    # Request limits
    max_frames_limit: int = Field(100, ge=1)
    # Upper bound of pixels per sampled frame; the planner goes lower when frames x tokens must fit
    # MAX_MODEL_LEN. 448*448 keeps 30 frames of a 7B model at ~7.7k visual tokens.
    video_max_pixels: int = Field(448 * 448, ge=28 * 28)
    video_min_pixels: int = Field(56 * 56, ge=28 * 28)
    # Pixels of an `image` job; Qwen's recommended 1280 tokens' worth (1280 * 28 * 28).
    image_max_pixels: int = Field(1280 * 28 * 28, ge=28 * 28)
    # Prompt text and the answer need room next to the visual tokens.
    text_token_reserve: int = Field(512, ge=0)
    # Width x height of the *source* video above which it is refused before any frame is decoded: a few
    # bytes of header can claim a frame size whose decode would take gigabytes.
    max_source_pixels: int = Field(DEFAULT_MAX_SOURCE_PIXELS, ge=64 * 64)
    # Longest video a job may bring (seconds); checked right after probing, before any frame is decoded.
    max_video_seconds: float = Field(3 * 3600.0, gt=0)
    # Items of `videos` / `images` in one job.
    max_batch_items: int = Field(32, ge=1)

    # Media sources
    allowed_media_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path(tempfile.gettempdir()), Path("/runpod-volume")]
    )
    # URLs whose host resolves to a loopback, private, link-local (cloud metadata at 169.254.169.254) or
    # other non-public address are refused: a caller must not reach the worker's own network through it.
    # On-prem deployments fetching from their LAN (and tests with local servers) set it true.
    allow_private_urls: bool = False
    max_download_bytes: int = Field(2 * 1024**3, ge=1)
    download_timeout: float = Field(120.0, gt=0)
    # RunPod caps a request body at 10 MB (/run) and 20 MB (/runsync); decoded base64 beyond that
    # cannot have arrived through the API.
    max_base64_bytes: int = Field(20 * 1024**2, ge=1)
    work_dir: Path = Field(default_factory=lambda: Path(tempfile.gettempdir()) / "caption-worker")

    @field_validator("decode_cpus")
    @classmethod
    def _cpu_list(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_cpu_list(value)  # raises ValueError with what is wrong
        return value.strip()

    @field_validator("compile_cache_dir", "quantization", "kv_cache_dtype", "mm_encoder_tp_mode", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        # RunPod templates pass a variable left blank as "".
        return None if isinstance(value, str) and not value.strip() else value

    def engine_overrides(self) -> dict[str, object]:
        """The vLLM knobs the deployment set, for AsyncEngineArgs; the unset ones stay vLLM's defaults."""
        knobs = {
            "enable_prefix_caching": self.enable_prefix_caching,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "mm_processor_cache_gb": self.mm_processor_cache_gb,
            "mm_encoder_tp_mode": self.mm_encoder_tp_mode,
            "skip_mm_profiling": self.skip_mm_profiling,
            "quantization": self.quantization,
            "kv_cache_dtype": self.kv_cache_dtype,
        }
        return {name: value for name, value in knobs.items() if value is not None}

    @model_validator(mode="after")
    def _seed_variables(self) -> Settings:
        """A deployment of the video-SALMONN 2 guide serves its MODEL_PATH (the release is the full merged
        model: the authors' eval takes only the config from --model_base, and the guide points both at one
        folder). It never serves another model silently: a guide variable naming the original
        video-SALMONN 2 beside a MODEL_NAME for another model stops the start."""
        if "model_name" not in self.model_fields_set:
            if self.model_path:
                self.model_name = self.model_path
            elif self.model_base:
                raise ValueError(
                    "MODEL_BASE alone names no checkpoint (the authors read only its config): set MODEL_PATH to "
                    "the video-SALMONN 2 folder to serve, or set MODEL_NAME"
                )
        for variable in ("model_path", "model_base"):
            value = getattr(self, variable)
            if value and value != self.model_name and _is_original_video_salmonn_2(value):
                raise ValueError(
                    f"{variable.upper()}={value} is the original video-SALMONN 2 but MODEL_NAME={self.model_name} "
                    f"is another model: unset MODEL_NAME (or set it to {value}) to serve it, "
                    f"or unset {variable.upper()}"
                )
        ignored = [f"{v.upper()}={getattr(self, v)}" for v in ("model_path", "model_base") if getattr(self, v)]
        ignored = [text for text in ignored if text.split("=", 1)[1] != self.model_name]
        if ignored:
            log.warning("%s not read: the worker serves MODEL_NAME=%s", ", ".join(ignored), self.model_name)
        return self

    @field_validator("allowed_media_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        # Env gives "a:b" (PATH style) or "a,b"; code may pass a list.
        if isinstance(value, str):
            return [p for p in value.replace(",", ":").split(":") if p.strip()]
        return value


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


# Variables other software sets that start like a setting of this worker.
FOREIGN_VARIABLES = frozenset({"MAX_JOBS"})  # parallel compile jobs of torch/vLLM extension builds


def unknown_settings(environ: Mapping[str, str]) -> dict[str, str | None]:
    """Variables of ``environ`` that look like a setting of this worker but are none, each with the setting it
    nearly spells (None if none): a near-miss of a setting's name (MAX_FRAME_LIMIT) or a name that starts
    with a setting's first word (VIDEO_FPS, ENABLE_CHUNKED_PREFILL). Settings ignores them silently."""
    known = {name.upper() for name in Settings.model_fields}
    prefixes = tuple({name.split("_", 1)[0] + "_" for name in known})
    found: dict[str, str | None] = {}
    for variable in environ:
        name = variable.upper()
        if name in known or name in FOREIGN_VARIABLES:
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
        if close or name.startswith(prefixes):
            found[variable] = close[0] if close else None
    return found


def warn_unknown_settings(environ: Mapping[str, str]) -> None:
    """Log each variable ``unknown_settings`` finds (names only: values may be secrets). Never raises."""
    for variable, close in sorted(unknown_settings(environ).items()):
        hint = f" (did you mean {close}?)" if close else ""
        log.warning("environment variable %s is not a setting of this worker and is ignored%s", variable, hint)
