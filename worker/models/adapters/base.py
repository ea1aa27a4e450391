"""What a model family must tell the worker: how to phrase the prompt, how to hand over frames, images and
audio, and how its encoders turn pixels and sound into tokens."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from worker.media.audio import AudioClip
from worker.media.frames import DecodedFrames
from worker.media.probe import Probe
from worker.media.frame_plan import VisionGeometry
from worker.api.schema import ChatMessage, MediaType


def chatml_prompt(
    text: str | Sequence[ChatMessage], system_prompt: str, first_user: Callable[[str], str] | None
) -> str:
    """Every turn as ``<|im_start|>role\ncontent<|im_end|>\n`` after ``system_prompt`` (unless the
    conversation brings its own), the first user turn's content passed through ``first_user`` (where a family
    puts its media placeholder; None: a text-only request), then the assistant's opening: the layout that the
    LLaVA-style plugins' authors build by hand instead of through a chat template."""
    turns = [ChatMessage(role="user", content=text)] if isinstance(text, str) else list(text)
    if not turns or turns[0].role != "system":
        turns = [ChatMessage(role="system", content=system_prompt), *turns]
    opening = next(i for i, turn in enumerate(turns) if turn.role == "user")
    parts = []
    for i, turn in enumerate(turns):
        content = first_user(turn.content) if i == opening and first_user is not None else turn.content
        parts.append(f"<|im_start|>{turn.role}\n{content}<|im_end|>\n")
    return "".join(parts) + "<|im_start|>assistant\n"


@dataclass(frozen=True)
class MediaLimits:
    """The largest media one job can bring; vLLM sizes its memory profile from these."""

    max_frames: int
    video_max_pixels: int
    image_max_pixels: int


class ModelAdapter(ABC):
    family: ClassVar[str]
    # Values of config.json "architectures" this adapter serves; the adapter is chosen from these, never
    # from the model's name.
    architectures: ClassVar[tuple[str, ...]]
    geometry: ClassVar[VisionGeometry] = VisionGeometry()
    # Frames are folded in groups of this size; plans use multiples of it (see plan_timestamps).
    frame_multiple: ClassVar[int] = 1
    # Text tokens the prompt carries per temporal group besides the visual ones (Qwen3-VL's timestamps).
    text_tokens_per_group: ClassVar[int] = 0
    supports_audio: ClassVar[bool] = False
    # Longest audio the model's feature extractor takes in one item; the rest would be cut silently.
    max_audio_seconds: ClassVar[float] = 0.0
    # True: the model hears the whole span the job covers (the video, or the chunk), as it was trained;
    # False: only the stretch the sampled frames stand for (frame_plan.audio_window).
    audio_covers_span: ClassVar[bool] = False
    # The family's own caption prompt for a video job that brings none (None: the worker's default).
    default_video_prompt: ClassVar[str | None] = None
    # Mode "commentary" (LiveCC's protocol, docs/commentary.md): the most clips one prompt may hold, which
    # the engine is started to accept; 0: the family does not do commentary.
    commentary_clips: ClassVar[int] = 0
    # Whether the checkpoint ships Hugging Face processor files (preprocessor_config.json) for the pixel range;
    # a family that resizes in its own plugin has none, and its frame size is then the worker's settings alone.
    has_hf_processor: ClassVar[bool] = True

    def engine_kwargs(self, limits: MediaLimits) -> dict[str, Any]:
        """Extra vLLM engine arguments this family needs. vLLM profiles memory with the largest media a
        job can bring instead of its own much larger defaults, which is both truer and ~40 s faster at
        start-up."""
        video_side = self._square_side(limits.video_max_pixels)
        image_side = self._square_side(limits.image_max_pixels)
        mm: dict[str, Any] = {
            "video": {"count": 1, "num_frames": limits.max_frames, "width": video_side, "height": video_side},
            "image": {"count": 1, "width": image_side, "height": image_side},
        }
        return {"limit_mm_per_prompt": mm}

    def _square_side(self, max_pixels: int) -> int:
        factor = self.geometry.factor
        return max(factor, math.isqrt(max_pixels) // factor * factor)

    def audio_tokens(self, num_samples: int) -> int:
        """Prompt tokens the model spends on ``num_samples`` of 16 kHz audio (0: it takes no audio)."""
        return 0

    @abstractmethod
    def build_prompt(
        self,
        tokenizer: Any,
        text: str | Sequence[ChatMessage],
        media_type: MediaType | None,
        with_audio: bool = False,
    ) -> str:
        """The full prompt string, ready for generation: ``text`` as the user's turn, or a conversation whose
        first user turn carries the model's video or image placeholder (and audio placeholder when
        ``with_audio``); no placeholder when ``media_type`` is None (a text-only request)."""

    @abstractmethod
    def video_inputs(
        self,
        prompt: str,
        frames: DecodedFrames,
        probe: Probe,
        fps_used: float,
        audio: AudioClip | None,
        span: tuple[float, float] | None = None,
    ) -> dict[str, Any]:
        """A vLLM prompt dict (``prompt``, ``multi_modal_data``, ``mm_processor_kwargs``) for a video and,
        for audio-capable models, its sound over the same stretch of time. ``span`` (seconds) is the part
        of the video the frames were sampled from when it is not the whole video (a chunk)."""

    @abstractmethod
    def image_inputs(self, prompt: str, image: np.ndarray) -> dict[str, Any]:
        """A vLLM prompt dict for one RGB image (height, width, 3) already at the planned size."""

    def commentary_turn(self, tokenizer: Any, label: str, video: bool, query: str | None, first: bool) -> str:
        """One user turn of a commentary as text, ready for the answer: ``label`` (``Time=...``), the clip's
        placeholder when ``video``, then ``query`` if given. ``first``: the conversation's opening (with
        the template's system turn); otherwise it continues the previous answer, closing it first."""
        raise NotImplementedError(f"{self.family} does not do commentary")

    def commentary_clip(
        self, frames: DecodedFrames, probe: Probe, span: tuple[float, float]
    ) -> tuple[Any, dict[str, Any]]:
        """One turn's clip as a vLLM video item, and the processor arguments (the same for every clip)."""
        raise NotImplementedError(f"{self.family} does not do commentary")
