"""Tarsier2 (omni-research/Tarsier2-Recap-7b): Qwen2-VL fine-tuned for detailed video description, served by
this worker's vLLM plugin (worker.models.vllm_plugin.tarsier2).

As the authors run it (bytedance/tarsier, tasks/inference_quick_start.py, dataset/ and
configs/tarser2_default_config.yaml): every sampled frame is shown twice (``use_multi_images_for_video``), so
each frame fills one temporal patch of Qwen2-VL's vision tower instead of sharing it with the next; the user
turn carries the medium first, then the question; "Describe the video in detail." when the job brings no
prompt. The turns are the Qwen2-VL chat layout the model was fine-tuned in, with Qwen2-VL's default system
turn (as vLLM <= 0.23 prompted it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from worker.api.schema import ChatMessage, MediaType
from worker.media.audio import AudioClip
from worker.media.frame_plan import VisionGeometry
from worker.media.frames import DecodedFrames
from worker.media.probe import Probe
from worker.models.adapters.base import MediaLimits, chatml_prompt
from worker.models.adapters.qwen import QwenAdapter
from worker.models.vllm_plugin.tarsier2_config import ARCHITECTURE, RELEASED_ARCHITECTURE, tarsier2_hf_overrides

# tasks/inference_quick_start.py's default instruction for a video.
CAPTION_PROMPT = "Describe the video in detail."
SYSTEM_PROMPT = "You are a helpful assistant."
# Copies of each sampled frame the model sees (configs/tarser2_default_config.yaml: use_multi_images_for_video).
FRAME_REPEAT = 2
_PLACEHOLDER = {
    "video": "<|vision_start|><|video_pad|><|vision_end|>",
    "image": "<|vision_start|><|image_pad|><|vision_end|>",
}


class Tarsier2Adapter(QwenAdapter):
    family: ClassVar[str] = "tarsier2"
    # The release declares the authors' class; vLLM <= 0.23 (and this plugin) name the served one.
    architectures: ClassVar[tuple[str, ...]] = (RELEASED_ARCHITECTURE, ARCHITECTURE)
    # Each sampled frame is doubled into one temporal patch: one group of visual tokens per frame.
    geometry: ClassVar[VisionGeometry] = VisionGeometry(temporal_patch_size=1)
    frame_multiple: ClassVar[int] = 1
    default_video_prompt: ClassVar[str | None] = CAPTION_PROMPT

    def engine_kwargs(self, limits: MediaLimits) -> dict[str, Any]:
        # The engine sees FRAME_REPEAT frames per sampled one; its memory profile must too.
        doubled = MediaLimits(limits.max_frames * FRAME_REPEAT, limits.video_max_pixels, limits.image_max_pixels)
        return super().engine_kwargs(doubled) | {"hf_overrides": tarsier2_hf_overrides}

    def build_prompt(
        self,
        tokenizer: Any,
        text: str | Sequence[ChatMessage],
        media_type: MediaType | None,
        with_audio: bool = False,
    ) -> str:
        """Every turn as <|im_start|>role\\ncontent<|im_end|>\\n after the default system turn; the medium's
        placeholder opens the first user turn, the question follows it directly. Tarsier2 hears nothing, so
        ``with_audio`` changes nothing."""
        opener = None if media_type is None else (lambda content: _PLACEHOLDER[media_type] + content)
        return chatml_prompt(text, SYSTEM_PROMPT, opener)

    def video_inputs(
        self,
        prompt: str,
        frames: DecodedFrames,
        probe: Probe,
        fps_used: float,
        audio: AudioClip | None,
        span: tuple[float, float] | None = None,
    ) -> dict[str, Any]:
        inputs = super().video_inputs(prompt, frames, probe, fps_used, None, span)
        pixels, metadata = inputs["multi_modal_data"]["video"]
        indices = [index for index in metadata["frames_indices"] for _ in range(FRAME_REPEAT)]
        inputs["multi_modal_data"]["video"] = (
            np.repeat(pixels, FRAME_REPEAT, axis=0),
            metadata | {"frames_indices": indices},
        )
        return inputs
