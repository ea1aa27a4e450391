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

ORIGINAL_VIDEO_SALMONN_2 = (
    "the original video-SALMONN 2 (tsinghua-ee/video-SALMONN-2: LLaVA-OneVision-Qwen2-7B with Whisper), which this "
    "worker does not serve; set MODEL_NAME=tsinghua-ee/video-SALMONN2_plus_7B_full instead (video-SALMONN 2+, the "
    "same authors' audio-visual successor: jobs keep process_audio) and unset MODEL_PATH/MODEL_BASE"
)


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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # Engine (vLLM)
    # Audio-visual: hears the video's sound with process_audio (README, "Models").
    model_name: str = "Qwen/Qwen2.5-Omni-7B"
    # The video-SALMONN 2 RunPod guide's variables: read only to stop with a clear error (_seed_variables).
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
    max_num_batched_tokens: int | None = Field(None, ge=1)
    mm_processor_cache_gb: float | None = Field(None, ge=0)
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
    max_concurrency: int = Field(8, ge=1, le=256)
    # The handler streams (an async generator: /stream gets each segment, and every job's output is the list
    # of its parts) instead of returning the result as the job's output (worker/runpod_handler.py).
    enable_streaming: bool = False
    # Decoder processes (worker/media/pool.py); unset: one per core; 0: decode in threads of the worker.
    decode_workers: int | None = Field(None, ge=0, le=256)
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

    @field_validator("compile_cache_dir", "quantization", "kv_cache_dtype", mode="before")
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
            "quantization": self.quantization,
            "kv_cache_dtype": self.kv_cache_dtype,
        }
        return {name: value for name, value in knobs.items() if value is not None}

    @model_validator(mode="after")
    def _seed_variables(self) -> Settings:
        """Stop at start, not serve another model, when a deployment of the video-SALMONN 2 guide arrives."""
        for variable in ("model_path", "model_base", "model_name"):
            value = getattr(self, variable)
            if value and _is_original_video_salmonn_2(value):
                raise ValueError(f"{variable.upper()}={value} is {ORIGINAL_VIDEO_SALMONN_2}")
        if (self.model_path or self.model_base) and "model_name" not in self.model_fields_set:
            raise ValueError(
                "MODEL_PATH/MODEL_BASE (the video-SALMONN 2 RunPod guide's variables) are not read by this worker: "
                "set MODEL_NAME to the model to serve and unset them"
            )
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
