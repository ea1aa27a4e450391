"""The original video-SALMONN 2 (tsinghua-ee/video-SALMONN-2): LLaVA-OneVision-Qwen2-7B that also hears the
video, served by this worker's vLLM plugin (worker.models.vllm_plugin.video_salmonn2).

As the authors run it (bytedance/video-SALMONN-2, scripts/eval.sh, llava/dataset/): their Qwen chat layout
with the default system turn, ``<image>`` then a newline opening the user turn, the question stripped after
a second newline; the sound of the whole span the job covers; the span's length as the video's time (their
``real_time``: time tokens and the audio split count with it). Videos only: their model has no path for a
single image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from worker.api.errors import UnsupportedInputError
from worker.api.schema import ChatMessage, MediaType
from worker.media.audio import AudioClip
from worker.media.frame_plan import VisionGeometry
from worker.media.frames import DecodedFrames
from worker.media.probe import Probe
from worker.models.adapters.base import MediaLimits, chatml_prompt
from worker.models.adapters.qwen import QwenAdapter
from worker.models.vllm_plugin.salmonn_layout import MAX_AUDIO_SECONDS
from worker.models.vllm_plugin.video_salmonn2_layout import (
    ARCHITECTURE,
    PLACEHOLDER,
    audio_pieces,
    audio_tokens_per_piece,
)

SYSTEM_PROMPT = "You are a helpful assistant."


class VideoSalmonn2Adapter(QwenAdapter):
    family: ClassVar[str] = "video_salmonn2"
    architectures: ClassVar[tuple[str, ...]] = (ARCHITECTURE,)
    # One frame is one SigLIP image (384 x 384 whatever its size): no temporal patches to fill.
    geometry: ClassVar[VisionGeometry] = VisionGeometry(temporal_patch_size=1)
    frame_multiple: ClassVar[int] = 1
    supports_audio: ClassVar[bool] = True
    max_audio_seconds: ClassVar[float] = MAX_AUDIO_SECONDS
    audio_covers_span: ClassVar[bool] = True
    has_hf_processor: ClassVar[bool] = False  # the release has none: SigLIP's 384² resize is in the plugin

    def engine_kwargs(self, limits: MediaLimits) -> dict[str, Any]:
        # Frames are resized to the tower's 384 x 384 by the plugin; the profile needs their count only.
        video = {"count": 1, "num_frames": limits.max_frames, "width": 384, "height": 384}
        return {"limit_mm_per_prompt": {"video": video}}

    def audio_tokens(self, num_samples: int) -> int:
        return audio_pieces(num_samples) * audio_tokens_per_piece()

    def build_prompt(
        self,
        tokenizer: Any,
        text: str | Sequence[ChatMessage],
        media_type: MediaType | None,
        with_audio: bool = False,
    ) -> str:
        """preprocess_qwen's layout: every turn as <|im_start|>role\\ncontent<|im_end|>\\n after the default
        system turn; the first user turn is "<image>\\n" + "\\n" + the question, stripped (the plugin keeps
        the newline after the placeholder a token of its own, as their tokenisation does)."""
        if media_type == "image":
            raise UnsupportedInputError(
                "the original video-SALMONN 2 captions videos only: the authors' model has no single-image "
                "path; send a video, or serve video-SALMONN 2+ for images"
            )
        opener = None if media_type is None else (lambda content: f"{PLACEHOLDER}\n\n{content.strip()}")
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
        start, end = span if span is not None else (0.0, probe.duration)
        metadata: dict[str, Any] = {"duration": float(end - start)}
        if audio is not None and len(audio.samples):
            metadata["audio"] = np.asarray(audio.samples, dtype=np.float32)
        return {"prompt": prompt, "multi_modal_data": {"video": (frames.frames, metadata)}}

    def image_inputs(self, prompt: str, image: np.ndarray) -> dict[str, Any]:
        raise UnsupportedInputError("the original video-SALMONN 2 captions videos only")
