"""Qwen3-VL (Qwen/Qwen3-VL-2B/4B/8B/32B-Instruct and the MoE 30B-A3B/235B-A22B)."""

from __future__ import annotations

from typing import ClassVar

from worker.models.adapters.qwen import QwenAdapter
from worker.media.frame_plan import VisionGeometry


class Qwen3VLAdapter(QwenAdapter):
    family: ClassVar[str] = "qwen3_vl"
    architectures: ClassVar[tuple[str, ...]] = ("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration")
    geometry: ClassVar[VisionGeometry] = VisionGeometry(patch_size=16)
    # Each pair of frames is introduced by its time as text, e.g. "<12.5 seconds>" plus the vision
    # start/end tokens: about 8 tokens.
    text_tokens_per_group: ClassVar[int] = 8
