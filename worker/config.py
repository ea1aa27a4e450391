"""Worker settings, read once from the environment.

Names follow RunPod's official vLLM worker (MODEL_NAME, MAX_MODEL_LEN, GPU_MEMORY_UTILIZATION, ...) so a
user moving from it sets the same variables.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# 8192x4096: 8K UHD and 8K 360-degree video pass; one decoded 4:2:0 frame of this size is 48 MiB.
DEFAULT_MAX_SOURCE_PIXELS = 8192 * 4096


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # Engine (vLLM)
    # Audio-visual: hears the video's sound with process_audio (README, "Models").
    model_name: str = "Qwen/Qwen2.5-Omni-7B"
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
    # vLLM / torch.compile / Triton caches (worker/compile_cache.py); empty = the libraries' defaults.
    compile_cache_dir: Path | None = Path("/runpod-volume/vllm-cache")
    # Grammar engine of json_schema jobs: xgrammar (vLLM's first choice, fastest) or guidance (llguidance).
    structured_outputs_backend: Literal["xgrammar", "guidance"] = "xgrammar"

    # Serving
    max_concurrency: int = Field(8, ge=1, le=256)
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

    @field_validator("compile_cache_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    def engine_overrides(self) -> dict[str, object]:
        """The vLLM knobs the deployment set, for AsyncEngineArgs; the unset ones stay vLLM's defaults."""
        knobs = {
            "enable_prefix_caching": self.enable_prefix_caching,
            "max_num_batched_tokens": self.max_num_batched_tokens,
            "mm_processor_cache_gb": self.mm_processor_cache_gb,
        }
        return {name: value for name, value in knobs.items() if value is not None}

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
