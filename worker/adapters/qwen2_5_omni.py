"""Qwen2.5-Omni (Qwen/Qwen2.5-Omni-3B/7B): vLLM serves its thinker, which sees the frames and hears the
video's own sound, interleaved by time (``use_audio_in_video``)."""

from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

import numpy as np

from worker.adapters.base import MediaLimits
from worker.adapters.qwen import QwenAdapter
from worker.decode import AUDIO_SAMPLE_RATE, AudioClip, DecodedFrames, Probe

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

    def video_inputs(
        self, prompt: str, frames: DecodedFrames, probe: Probe, fps_used: float, audio: AudioClip | None
    ) -> dict[str, Any]:
        inputs = super().video_inputs(prompt, frames, probe, fps_used, audio)
        # Unlike Qwen2.5-VL, the Omni processor takes the frame rate from this argument, not the metadata
        # (it would assume 2 fps), to place frames on the time axis that the audio shares: transformers'
        # processor reads `fps` (position ids) and vLLM's prompt layout reads `second_per_grid_ts` (it
        # would assume 1 s per frame pair and interleave sound and frames at the wrong times).
        seconds_per_step = self.geometry.temporal_patch_size / fps_used
        inputs["mm_processor_kwargs"] |= {"fps": fps_used, "second_per_grid_ts": [seconds_per_step]}
        if audio is not None and self.audio_tokens(len(audio.samples)) > 0:
            inputs["multi_modal_data"]["audio"] = (audio.samples, AUDIO_SAMPLE_RATE)
            inputs["mm_processor_kwargs"]["use_audio_in_video"] = True
            # vLLM 0.26 caches processed items under a hash of each item alone, but with use_audio_in_video
            # the video's prompt layout depends on the sound's length and the sound's processing on the
            # video: the same frames with another track (or the same track with other frames) would reuse a
            # wrong entry and either get the wrong layout or kill the engine ("Attempted to assign 62
            # multimodal tokens to 162 placeholders"). Keying both items by frames and sound together keeps
            # the cache correct.
            _, metadata = inputs["multi_modal_data"]["video"]
            key = _frames_and_sound_key(frames.frames, audio.samples, metadata)
            inputs["multi_modal_uuids"] = {"video": [f"video-{key}"], "audio": [f"audio-{key}"]}
        return inputs


def _frames_and_sound_key(frames: np.ndarray, samples: np.ndarray, metadata: dict[str, Any]) -> str:
    digest = hashlib.blake2b(digest_size=20)
    digest.update(np.ascontiguousarray(frames).data)
    digest.update(np.ascontiguousarray(samples).data)
    digest.update(json.dumps(metadata, sort_keys=True, default=str).encode())
    return digest.hexdigest()
