"""Qwen2.5-VL: video frames through vLLM's Qwen2.5-VL processor, prompt from the model's own chat template."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from worker.adapters.base import ModelAdapter
from worker.decode import DecodedFrames, Probe


class Qwen25VLAdapter(ModelAdapter):
    family: ClassVar[str] = "qwen2_5_vl"
    architectures: ClassVar[tuple[str, ...]] = ("Qwen2_5_VLForConditionalGeneration",)
    frame_multiple: ClassVar[int] = 2

    def build_prompt(self, tokenizer: Any, text: str) -> str:
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": text}]}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def build_inputs(
        self, prompt: str, frames: DecodedFrames, probe: Probe, audio: np.ndarray | None
    ) -> dict[str, Any]:
        # Metadata in transformers' VideoMetadata terms: fps and frame indices of the *source*, so the
        # processor's sampled_fps (len(indices) / total * fps) is the true sampling rate and Qwen2.5-VL's
        # temporal position ids (second_per_grid_ts) match real time.
        fps = probe.fps or len(frames.timestamps) / probe.duration
        total = max(round(probe.duration * fps), frames.indices[-1] + 1)
        metadata = {
            "fps": fps,
            "duration": probe.duration,
            "total_num_frames": total,
            "frames_indices": frames.indices,
            "video_backend": "pyav",
            "do_sample_frames": False,
            "height": frames.frames.shape[1],
            "width": frames.frames.shape[2],
        }
        return {
            "prompt": prompt,
            "multi_modal_data": {"video": (frames.frames, metadata)},
            # Frames already have the planned size (multiples of the patch factor); resizing again would
            # only cost time and could change the token count the planner budgeted.
            "mm_processor_kwargs": {"do_resize": False},
        }
