"""Qwen2.5-Omni (Qwen/Qwen2.5-Omni-3B/7B): vLLM serves its thinker, which sees the frames and hears the
video's own sound over the same stretch of time, interleaved with the frames in 2-second chunks
(``use_audio_in_video``, TMRoPE) as the model was trained; the worker's vLLM plugin
(worker.models.vllm_plugin.qwen2_5_omni_thinker) makes vLLM 0.26 lay it out and place it as transformers does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from worker.api.schema import ChatMessage, MediaType
from worker.media.audio import AUDIO_SAMPLE_RATE, AudioClip
from worker.media.frames import DecodedFrames
from worker.media.probe import Probe
from worker.models.adapters.base import MediaLimits
from worker.models.adapters.qwen import QwenAdapter

# Whisper-style front end: one mel frame per 160 samples (10 ms); the encoder's stride-2 convolution and
# the thinker's 2x pooling leave one token per 40 ms, 25 per second.
_MEL_HOP = 160


class Qwen25OmniAdapter(QwenAdapter):
    family: ClassVar[str] = "qwen2_5_omni"
    architectures: ClassVar[tuple[str, ...]] = ("Qwen2_5OmniModel", "Qwen2_5OmniForConditionalGeneration")
    supports_audio: ClassVar[bool] = True
    # The checkpoints' feature extractor pads and cuts every audio item to chunk_length = 300 s.
    max_audio_seconds: ClassVar[float] = 300.0

    def __init__(self, audio_in_video: bool = True) -> None:
        # False: the sound as an audio item of its own after the frames, without their 2-second interleaving
        # (what the worker did before; kept so bench/e2e.py can measure what interleaving costs).
        self.audio_in_video = audio_in_video

    def engine_kwargs(self, limits: MediaLimits) -> dict[str, Any]:
        kwargs = super().engine_kwargs(limits)
        kwargs["limit_mm_per_prompt"]["audio"] = {
            "count": 1,
            "length": int(self.max_audio_seconds * AUDIO_SAMPLE_RATE),
        }
        # vLLM 0.26's multimodal processor cache keys the frames and their sound apart: the same frames with
        # other sound reuse the frames' stale interleaved layout and kill the engine (vllm-project/vllm
        # issue 44538). Caption jobs rarely repeat their media, so the cache saves next to nothing here.
        kwargs["mm_processor_cache_gb"] = 0
        return kwargs

    def audio_tokens(self, num_samples: int) -> int:
        if num_samples <= 0:
            return 0
        mel_frames = -(-num_samples // _MEL_HOP)
        encoder_frames = (mel_frames - 1) // 2 + 1
        return max(0, (encoder_frames - 2) // 2 + 1)

    def build_prompt(
        self,
        tokenizer: Any,
        text: str | Sequence[ChatMessage],
        media_type: MediaType | None,
        with_audio: bool = False,
    ) -> str:
        # Interleaved, the sound has no placeholder of its own: it is heard inside the video's.
        return super().build_prompt(tokenizer, text, media_type, with_audio and not self.audio_in_video)

    def video_inputs(
        self,
        prompt: str,
        frames: DecodedFrames,
        probe: Probe,
        fps_used: float,
        audio: AudioClip | None,
        span: tuple[float, float] | None = None,
    ) -> dict[str, Any]:
        inputs = super().video_inputs(prompt, frames, probe, fps_used, audio, span)
        if self.audio_in_video and "audio" in inputs["multi_modal_data"]:
            # vLLM lays the chunks out from this argument (1 s per frame pair when it is missing), the HF
            # processor places the frames in time from ``fps``: both must say the same.
            seconds_per_pair = self.geometry.temporal_patch_size / fps_used
            inputs["mm_processor_kwargs"] |= {"use_audio_in_video": True, "second_per_grid_ts": [seconds_per_pair]}
        return inputs

    def video_processor_kwargs(self, metadata: dict[str, Any], fps_used: float) -> dict[str, Any]:
        # The Omni processor takes the frame rate from this argument, not the metadata (it would assume
        # 2 fps), to place the frames on the time axis of the position ids.
        return {"fps": fps_used}

    def audio_items(self, audio: AudioClip | None) -> dict[str, Any]:
        return {} if audio is None else {"audio": (audio.samples, AUDIO_SAMPLE_RATE)}
