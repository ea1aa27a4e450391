"""Qwen2-VL (Qwen/Qwen2-VL-2B/7B/72B-Instruct), and checkpoints built on it such as LiveCC-7B
(chenjoya/LiveCC-7B-Instruct), whose config names the same architecture."""

from __future__ import annotations

from typing import ClassVar

from worker.models.adapters.qwen import QwenAdapter


class Qwen2VLAdapter(QwenAdapter):
    family: ClassVar[str] = "qwen2_vl"
    architectures: ClassVar[tuple[str, ...]] = ("Qwen2VLForConditionalGeneration",)
