"""What a model family must tell the worker: how to phrase the prompt, how to hand over frames (and audio),
and how its vision tower turns pixels into tokens."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from worker.decode import DecodedFrames, Probe
from worker.frame_plan import VisionGeometry


class ModelAdapter(ABC):
    family: ClassVar[str]
    # Values of config.json "architectures" this adapter serves; the adapter is chosen from these, never
    # from the model's name.
    architectures: ClassVar[tuple[str, ...]]
    geometry: ClassVar[VisionGeometry] = VisionGeometry()
    # Frames are folded in groups of this size; plans use multiples of it (see plan_timestamps).
    frame_multiple: ClassVar[int] = 1
    supports_audio: ClassVar[bool] = False

    def engine_kwargs(self, max_frames: int, max_pixels: int) -> dict[str, Any]:
        """Extra vLLM engine arguments this family needs. vLLM profiles memory with the largest video a
        job can bring (``max_frames`` frames of ``max_pixels``) instead of its own much larger default,
        which is both truer and ~40 s faster at start-up."""
        side = max(self.geometry.factor, math.isqrt(max_pixels) // self.geometry.factor * self.geometry.factor)
        video = {"count": 1, "num_frames": max_frames, "width": side, "height": side}
        return {"limit_mm_per_prompt": {"video": video, "image": 0}}

    @abstractmethod
    def build_prompt(self, tokenizer: Any, text: str) -> str:
        """The full prompt string, with the model's video placeholder, ready for generation."""

    @abstractmethod
    def build_inputs(
        self, prompt: str, frames: DecodedFrames, probe: Probe, audio: np.ndarray | None
    ) -> dict[str, Any]:
        """A vLLM prompt dict (``prompt``, ``multi_modal_data``, ``mm_processor_kwargs``)."""
