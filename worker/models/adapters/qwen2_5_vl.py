"""Qwen2.5-VL (Qwen/Qwen2.5-VL-3B/7B/32B/72B-Instruct)."""

from __future__ import annotations

from typing import Any, ClassVar

from worker.models.adapters.qwen import QwenAdapter

# The VideoMetadata fields transformers' processor reads; the rest of the metadata is vLLM's.
_METADATA_FIELDS = ("fps", "duration", "total_num_frames", "frames_indices", "height", "width")


class Qwen25VLAdapter(QwenAdapter):
    family: ClassVar[str] = "qwen2_5_vl"
    architectures: ClassVar[tuple[str, ...]] = ("Qwen2_5_VLForConditionalGeneration",)

    def video_processor_kwargs(self, metadata: dict[str, Any], fps_used: float) -> dict[str, Any]:
        # vLLM 0.26's Qwen2.5-VL parser drops the metadata that comes with the frames, and the processor
        # then assumes 24 fps for second_per_grid_ts, squeezing the temporal M-RoPE positions (by 48x at
        # 0.5 fps). Handed over as a processor argument, the metadata reaches it; it is also part of vLLM's
        # processor-cache key, so equal frames at different rates are not confused.
        return {"video_metadata": {name: metadata[name] for name in _METADATA_FIELDS}}
