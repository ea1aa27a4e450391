"""video-SALMONN 2+ (tsinghua-ee/video-SALMONN2_plus_{3B,7B}_full): Qwen2.5-VL that also hears the video,
served by this worker's vLLM plugin (worker.models.vllm_plugin.video_salmonn2_plus).

As the authors run it (bytedance/video-SALMONN-2, video_SALMONN2_plus/inference.py and its data loader):
their plain chat template with the default system turn, the video placeholder followed by a newline before
the question, their caption prompt when the job brings none, and the sound of the whole span the job covers
(the plugin interleaves it with the frames, 60 tokens per started 30 s).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from worker.models.adapters.qwen import QwenAdapter
from worker.media.audio import AudioClip
from worker.api.schema import ChatMessage, MediaType
from worker.models.vllm_plugin.salmonn_layout import MAX_AUDIO_SECONDS, audio_token_count

# video_SALMONN2_plus/inference.py
CAPTION_PROMPT = (
    "Provide a comprehensive description of all the content in the video, leaving out no details. Be sure to "
    "include as much of the audio information as possible, and ensure that your descriptions of the audio and "
    "video are closely aligned."
)
SYSTEM_PROMPT = "You are a helpful assistant."
_PLACEHOLDER = {
    "video": "<|vision_start|><|video_pad|><|vision_end|>\n",
    "image": "<|vision_start|><|image_pad|><|vision_end|>\n",
}


class VideoSalmonn2PlusAdapter(QwenAdapter):
    family: ClassVar[str] = "video_salmonn2_plus"
    architectures: ClassVar[tuple[str, ...]] = ("video_SALMONN2_plus",)
    supports_audio: ClassVar[bool] = True
    max_audio_seconds: ClassVar[float] = MAX_AUDIO_SECONDS
    audio_covers_span: ClassVar[bool] = True
    default_video_prompt: ClassVar[str | None] = CAPTION_PROMPT

    def audio_tokens(self, num_samples: int) -> int:
        return audio_token_count(num_samples)

    def build_prompt(
        self,
        tokenizer: Any,
        text: str | Sequence[ChatMessage],
        media_type: MediaType | None,
        with_audio: bool = False,
    ) -> str:
        """The authors' template: every turn as <|im_start|>role\\ncontent<|im_end|>\\n after a system turn;
        the media placeholder opens the first user turn, followed by a newline (audio needs no placeholder
        of its own: it is interleaved with the video's tokens)."""
        turns = [ChatMessage(role="user", content=text)] if isinstance(text, str) else list(text)
        if not turns or turns[0].role != "system":
            turns = [ChatMessage(role="system", content=SYSTEM_PROMPT), *turns]
        first_user = next(i for i, turn in enumerate(turns) if turn.role == "user")
        parts = []
        for i, turn in enumerate(turns):
            content = turn.content
            if i == first_user and media_type is not None:
                content = _PLACEHOLDER[media_type] + content
            parts.append(f"<|im_start|>{turn.role}\n{content}<|im_end|>\n")
        return "".join(parts) + "<|im_start|>assistant\n"

    def video_item_metadata(self, metadata: dict[str, Any], fps_used: float, audio: AudioClip | None) -> dict[str, Any]:
        # The plugin places the frames on the time axis at this rate and takes the sound from the metadata:
        # it rides inside the video item, so the engine needs no "audio" limit either.
        return metadata | {"sampled_fps": fps_used} | ({} if audio is None else {"audio": audio.samples})
