"""Qwen2.5-Omni (Qwen/Qwen2.5-Omni-3B/7B): vLLM serves its thinker, which sees the frames and hears the
video's own sound over the same stretch of time, given as its own audio item after the frames
(why not interleaved: docs/architecture.md).
"""

from __future__ import annotations

from typing import Any, ClassVar

from worker.models.adapters.base import MediaLimits
from worker.models.adapters.qwen import QwenAdapter
from worker.media.audio import AUDIO_SAMPLE_RATE, AudioClip

# Whisper-style front end: one mel frame per 160 samples (10 ms); the encoder's stride-2 convolution and
# the thinker's 2x pooling leave one token per 40 ms, 25 per second.
_MEL_HOP = 160


class Qwen25OmniAdapter(QwenAdapter):
    family: ClassVar[str] = "qwen2_5_omni"
    architectures: ClassVar[tuple[str, ...]] = ("Qwen2_5OmniModel", "Qwen2_5OmniForConditionalGeneration")
    supports_audio: ClassVar[bool] = True
    # The checkpoints' feature extractor pads and cuts every audio item to chunk_length = 300 s.
    max_audio_seconds: ClassVar[float] = 300.0

    def engine_kwargs(self, limits: MediaLimits) -> dict[str, Any]:
        kwargs = super().engine_kwargs(limits)
        kwargs["limit_mm_per_prompt"]["audio"] = {
            "count": 1,
            "length": int(self.max_audio_seconds * AUDIO_SAMPLE_RATE),
        }
        return kwargs

    def audio_tokens(self, num_samples: int) -> int:
        if num_samples <= 0:
            return 0
        mel_frames = -(-num_samples // _MEL_HOP)
        encoder_frames = (mel_frames - 1) // 2 + 1
        return max(0, (encoder_frames - 2) // 2 + 1)

    def video_processor_kwargs(self, metadata: dict[str, Any], fps_used: float) -> dict[str, Any]:
        # The Omni processor takes the frame rate from this argument, not the metadata (it would assume
        # 2 fps), to place the frames on the time axis of the position ids.
        return {"fps": fps_used}

    def audio_items(self, audio: AudioClip | None) -> dict[str, Any]:
        return {} if audio is None else {"audio": (audio.samples, AUDIO_SAMPLE_RATE)}
