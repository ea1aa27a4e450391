"""Worker settings, read once from the environment.

Names follow RunPod's official vLLM worker (MODEL_NAME, MAX_MODEL_LEN, GPU_MEMORY_UTILIZATION, ...) so a
user moving from it sets the same variables.
"""

from __future__ import annotations

import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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

    # Serving
    max_concurrency: int = Field(8, ge=1, le=256)
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

    # Media sources
    allowed_media_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=lambda: [Path(tempfile.gettempdir()), Path("/runpod-volume")]
    )
    max_download_bytes: int = Field(2 * 1024**3, ge=1)
    download_timeout: float = Field(120.0, gt=0)
    # RunPod caps a request body at 10 MB (/run) and 20 MB (/runsync); decoded base64 beyond that
    # cannot have arrived through the API.
    max_base64_bytes: int = Field(20 * 1024**2, ge=1)
    work_dir: Path = Field(default_factory=lambda: Path(tempfile.gettempdir()) / "caption-worker")

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
