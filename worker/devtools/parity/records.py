"""What each side of a parity check saw and produced, in one shape for every family, so the comparison
(compare.py) needs to know nothing about how a side got there."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The processors' names of what is compared: the visual grids, per-item numbers (Qwen2.5-VL's seconds per
# temporal patch, Omni's), and the processed pixel tensors.
GRID_KEYS = ("video_grid_thw", "image_grid_thw")
VALUE_KEYS = ("second_per_grid_ts", "video_second_per_grid")
PIXEL_KEYS = ("pixel_values_videos", "pixel_values")


@dataclass(frozen=True)
class Step:
    """One greedy step: the token taken and the runner-up, with their scores (logits, or log-probs: only
    the difference, the margin, is compared)."""

    token: int
    score: float
    runner_up: int
    runner_up_score: float

    @property
    def margin(self) -> float:
        return self.score - self.runner_up_score


@dataclass
class SideRun:
    """One side's run of one case. ``steps``: what the greedy choice was made on (the reference's processed
    scores; the worker's log-probs, vLLM's raw ones). ``grids`` and ``mm_values`` use the processors' names
    (``video_grid_thw``, ``image_grid_thw``, ``second_per_grid_ts``, ...); ``positions`` is (3, prompt
    length) M-RoPE positions, None where they could not be read; ``pixels`` the processed pixel tensors
    by name (``pixel_values_videos``, ``pixel_values``) as float32 arrays."""

    prompt_token_ids: list[int]
    token_ids: list[int]
    steps: list[Step] = field(default_factory=list)
    grids: dict[str, list[list[int]]] = field(default_factory=dict)
    mm_values: dict[str, list[float]] = field(default_factory=dict)
    positions: np.ndarray | None = None
    pixels: dict[str, np.ndarray] = field(default_factory=dict)
    text: str = ""
    notes: list[str] = field(default_factory=list)
    # Reference only: each step's top two of the raw logits (before repetition penalty and the like), the
    # same quantity as vLLM's default log-probs, so the two sides' margins can be set side by side.
    raw_steps: list[Step] = field(default_factory=list)
    # Reference only: the prompt's positions under Qwen's original rule (rope.py), where it applies.
    qwen_rule_positions: np.ndarray | None = None


@dataclass
class Media:
    """The medium one case showed the model, as the worker sent it to the engine: frames (T, H, W, 3) and
    their true timing (transformers' VideoMetadata fields), or one image (H, W, 3); audio as 16 kHz mono
    float32 where the family hears it."""

    kind: str  # "video" or "image"
    pixels: np.ndarray
    metadata: dict[str, Any] | None = None
    audio: np.ndarray | None = None


@dataclass
class WorkerRun:
    """The worker's side of one case: the job's output, the prompt dict the adapter handed the engine,
    the medium in it and what the engine computed."""

    job: dict[str, Any]
    output: dict[str, Any]
    inputs: dict[str, Any]
    media: Media | None
    side: SideRun
