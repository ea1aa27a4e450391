"""What every Qwen vision-language family shares: prompts from the model's own chat template, frames
handed over pre-sampled with their true timing, and sizes the processor must not change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from worker.models.adapters.base import ModelAdapter
from worker.media.audio import AudioClip
from worker.media.frames import DecodedFrames
from worker.media.probe import Probe
from worker.api.schema import ChatMessage, MediaType

# Frames and images already have the planned size (multiples of the patch factor); resizing again would
# only cost time and could change the token count the planner budgeted.
NO_RESIZE: dict[str, Any] = {"do_resize": False}
# Where the chat template's user turn begins and how a turn ends: a commentary turn after the first
# continues the conversation from the previous answer (seed 004's '<|im_end|>\n' + texts[system_prompt_offset:]).
USER_TURN = "<|im_start|>user"
END_OF_TURN = "<|im_end|>\n"


def video_metadata(frames: DecodedFrames, probe: Probe, span: tuple[float, float] | None = None) -> dict[str, Any]:
    """transformers' VideoMetadata for pre-sampled frames: fps and frame indices of the *source*, so the
    processor's sampled rate (len(indices) / total * fps) is the true sampling rate and the models' temporal
    positions (Qwen2.5-VL's second_per_grid_ts, Qwen3-VL's timestamps) match real time. For a chunk
    (``span``) the total is the chunk's frames, so the rate stays the chunk's, while the indices stay the
    source's: Qwen3-VL stamps each frame pair with its true time in the whole video."""
    start, end = span if span is not None else (0.0, probe.duration)
    fps = probe.fps or len(frames.timestamps) / probe.duration
    total = max(round((end - start) * fps), frames.indices[-1] + 1 - round(start * fps))
    return {
        "fps": fps,
        "duration": end - start,
        "total_num_frames": total,
        "frames_indices": frames.indices,
        "video_backend": "pyav",
        "do_sample_frames": False,
        "height": frames.frames.shape[1],
        "width": frames.frames.shape[2],
    }


class QwenAdapter(ModelAdapter):
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL and the Omni thinkers: they differ in geometry and audio only."""

    frame_multiple = 2

    def build_prompt(
        self,
        tokenizer: Any,
        text: str | Sequence[ChatMessage],
        media_type: MediaType | None,
        with_audio: bool = False,
    ) -> str:
        turns = [("user", text)] if isinstance(text, str) else [(turn.role, turn.content) for turn in text]
        first_user = next(i for i, (role, _) in enumerate(turns) if role == "user")
        messages: list[dict[str, Any]] = [{"role": role, "content": content} for role, content in turns]
        if media_type is not None:
            media: list[dict[str, str]] = [{"type": media_type}] + ([{"type": "audio"}] if with_audio else [])
            messages[first_user]["content"] = [*media, {"type": "text", "text": turns[first_user][1]}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def video_inputs(
        self,
        prompt: str,
        frames: DecodedFrames,
        probe: Probe,
        fps_used: float,
        audio: AudioClip | None,
        span: tuple[float, float] | None = None,
    ) -> dict[str, Any]:
        metadata = video_metadata(frames, probe, span)
        heard = audio if audio is not None and self.audio_tokens(len(audio.samples)) > 0 else None
        return {
            "prompt": prompt,
            "multi_modal_data": {
                "video": (frames.frames, self.video_item_metadata(metadata, fps_used, heard)),
                **self.audio_items(heard),
            },
            "mm_processor_kwargs": NO_RESIZE | self.video_processor_kwargs(metadata, fps_used),
        }

    # Where the families differ in what goes with the frames; each returns its part of the prompt dict.

    def video_item_metadata(self, metadata: dict[str, Any], fps_used: float, audio: AudioClip | None) -> dict[str, Any]:
        """The metadata that travels with the frames in their multimodal item."""
        return metadata

    def audio_items(self, audio: AudioClip | None) -> dict[str, Any]:
        """Multimodal items of their own for the sound (``audio``: None when the model hears none)."""
        return {}

    def video_processor_kwargs(self, metadata: dict[str, Any], fps_used: float) -> dict[str, Any]:
        """Arguments for the model's processor besides NO_RESIZE."""
        return {}

    def image_inputs(self, prompt: str, image: np.ndarray) -> dict[str, Any]:
        return {"prompt": prompt, "multi_modal_data": {"image": image}, "mm_processor_kwargs": dict(NO_RESIZE)}

    def commentary_turn(self, tokenizer: Any, label: str, video: bool, query: str | None, first: bool) -> str:
        content: list[dict[str, str]] = [{"type": "text", "text": label}]
        if video:
            content.append({"type": "video"})
        if query is not None:
            content.append({"type": "text", "text": query})
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        return text if first else END_OF_TURN + text[text.index(USER_TURN) :]

    def commentary_clip(
        self, frames: DecodedFrames, probe: Probe, span: tuple[float, float]
    ) -> tuple[Any, dict[str, Any]]:
        metadata = video_metadata(frames, probe, span)
        fps_used = len(frames.timestamps) / max(span[1] - span[0], 1e-6)
        item = (frames.frames, self.video_item_metadata(metadata, fps_used, None))
        return item, NO_RESIZE | self.video_processor_kwargs(metadata, fps_used)
