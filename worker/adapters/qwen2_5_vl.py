"""Qwen2.5-VL (Qwen/Qwen2.5-VL-3B/7B/32B/72B-Instruct)."""

from __future__ import annotations

from typing import ClassVar

from worker.adapters.qwen import QwenAdapter


class Qwen25VLAdapter(QwenAdapter):
    family: ClassVar[str] = "qwen2_5_vl"
    architectures: ClassVar[tuple[str, ...]] = ("Qwen2_5_VLForConditionalGeneration",)
