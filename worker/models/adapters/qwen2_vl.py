"""Qwen2-VL (Qwen/Qwen2-VL-2B/7B/72B-Instruct), and checkpoints built on it such as LiveCC-7B
(chenjoya/LiveCC-7B-Instruct), whose config names the same architecture."""

from __future__ import annotations

from typing import Any, ClassVar

from worker.models.adapters.base import MediaLimits
from worker.models.adapters.qwen import QwenAdapter


class Qwen2VLAdapter(QwenAdapter):
    family: ClassVar[str] = "qwen2_vl"
    architectures: ClassVar[tuple[str, ...]] = ("Qwen2VLForConditionalGeneration",)
    # LiveCC's commentary re-sends every clip of its context window each turn (docs/commentary.md): at
    # LiveCC's frame size a 32k context holds about 80; smaller frames hold more, up to this.
    commentary_clips: ClassVar[int] = 256

    def engine_kwargs(self, limits: MediaLimits) -> dict[str, Any]:
        """One video per prompt, except for commentary's clips: vLLM's memory profile is bounded by
        MAX_MODEL_LEN whatever the count, so allowing more costs nothing at start-up."""
        kwargs = super().engine_kwargs(limits)
        kwargs["limit_mm_per_prompt"]["video"]["count"] = self.commentary_clips
        return kwargs
