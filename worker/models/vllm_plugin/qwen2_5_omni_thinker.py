"""Qwen2.5-Omni's thinker with its sound interleaved with the frames (``use_audio_in_video``), as transformers
lays it out and places it: vLLM 0.26's own class with three departures from transformers put right.

- Positions: vLLM 0.26 starts the interleaved block's TMRoPE positions at ``<|audio_bos|>`` instead of after
  it, so every frame and sound token takes its predecessor's position and the text after the block runs two
  ahead. transformers gives ``<|audio_bos|>`` the position of ``<|vision_bos|>``, the frames and the sound
  their time positions, ``<|audio_eos|>`` and ``<|vision_eos|>`` both the block's largest + 1; so does this.
- Layout below 1 fps (a frame pair longer than a 2-second chunk): vLLM cuts the frames by time range,
  transformers by its own chunking (``get_chunked_index``); the tokens here are transformers'.
- Without the multimodal processor cache (``mm_processor_cache_gb=0``, which the worker sets for this family:
  the cache reuses a stale layout when the same frames come with other sound) vLLM 0.26 lets the HF
  processor expand the prompt and then cannot find the sound in it, failing every request. vLLM expands the
  interleaved prompt itself instead, as it does for cached items.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from vllm.model_executor.models.qwen2_5_omni_thinker import (
    Qwen2_5OmniThinkerDummyInputsBuilder,
    Qwen2_5OmniThinkerForConditionalGeneration,
    Qwen2_5OmniThinkerMultiModalProcessor,
    Qwen2_5OmniThinkerProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFeatureSpec


def chunk_lengths(values: np.ndarray, per_chunk: float) -> list[int]:
    """transformers' ``Qwen2_5OmniProcessor.get_chunked_index``, as lengths: a new chunk starts at each
    value reaching the next multiple of ``per_chunk`` (one multiple per step, so a jump over several
    chunks still opens only one: below 1 fps a frame pair's first token forms a chunk of its own)."""
    lengths, start, current = [], 0, 1
    for i, value in enumerate(values):
        if value >= current * per_chunk:
            lengths.append(i - start)
            start, current = i, current + 1
    lengths.append(len(values) - start)
    return lengths


class Qwen25OmniThinkerProcessor(Qwen2_5OmniThinkerMultiModalProcessor):
    @classmethod
    def omni_get_updates_use_audio_in_video(
        cls,
        thinker_config: Any,
        audio_len: int,
        video_grid_thw: Any,
        video_second_per_grid_t: float,
    ) -> list[int]:
        """The interleaved tokens of one video as transformers' processor lays them out: its frame tokens
        and its sound cut into 2-second chunks, frame chunk j then sound chunk j, between <|audio_bos|> and
        <|audio_eos|>. (vLLM 0.26 splits the frames by time range instead, which agrees at 1 fps and above
        but not below.)"""
        ticks = float(getattr(thinker_config.vision_config, "tokens_per_second", 25))
        per_chunk = int(ticks * thinker_config.seconds_per_chunk)
        merge = thinker_config.vision_config.spatial_merge_size
        grid_t, grid_h, grid_w = (int(x) for x in video_grid_thw)
        per_step = grid_h * grid_w // merge**2
        times = np.repeat(np.arange(grid_t), per_step) * video_second_per_grid_t * ticks
        video = chunk_lengths(times, per_chunk)
        sound = chunk_lengths(np.arange(audio_len), per_chunk)
        tokens = [thinker_config.audio_start_token_id]
        for j in range(max(len(video), len(sound))):
            tokens += [thinker_config.video_token_index] * (video[j] if j < len(video) else 0)
            tokens += [thinker_config.audio_token_index] * (sound[j] if j < len(sound) else 0)
        return tokens + [thinker_config.audio_end_token_id]

    def _apply_hf_processor_main(
        self,
        prompt: str | list[int],
        mm_items: Any,
        hf_processor_mm_kwargs: Mapping[str, object],
        tokenization_kwargs: Mapping[str, object],
        *,
        enable_hf_prompt_update: bool,
    ) -> Any:
        if hf_processor_mm_kwargs.get("use_audio_in_video"):
            enable_hf_prompt_update = False
        return super()._apply_hf_processor_main(
            prompt,
            mm_items,
            hf_processor_mm_kwargs,
            tokenization_kwargs,
            enable_hf_prompt_update=enable_hf_prompt_update,
        )


def _flag(feature: MultiModalFeatureSpec, name: str) -> bool:
    field = feature.data.get(name) if feature.data is not None else None
    return field is not None and bool(field.data.item())


@MULTIMODAL_REGISTRY.register_processor(
    Qwen25OmniThinkerProcessor,
    info=Qwen2_5OmniThinkerProcessingInfo,
    dummy_inputs=Qwen2_5OmniThinkerDummyInputsBuilder,
)
class Qwen25OmniThinker(Qwen2_5OmniThinkerForConditionalGeneration):
    def get_mrope_input_positions(
        self, input_tokens: list[int], mm_features: list[MultiModalFeatureSpec]
    ) -> tuple[torch.Tensor, int]:
        if not any(f.modality == "video" and _flag(f, "use_audio_in_video") for f in mm_features):
            return super().get_mrope_input_positions(input_tokens, mm_features)
        parts: list[np.ndarray] = []
        st = 0  # next token not yet given a position
        for offset, modality, data in self.iter_mm_features(mm_features):
            next_idx = int(parts[-1].max()) + 1 if parts else 0
            if offset > st:
                parts.append(np.broadcast_to(np.arange(offset - st), (3, offset - st)) + next_idx)
                next_idx += offset - st
            if modality == "video" and data["use_audio_in_video"]:
                video = [f for f in mm_features if f.modality == "video" and f.mm_position.offset == offset]
                length = video[0].mm_position.length
                block = self._interleaved_block(input_tokens[offset : offset + length], next_idx, data)
                # The token after the block (<|vision_eos|>) shares <|audio_eos|>'s position.
                parts += [block, block[:, -1:]]
                st = offset + length + 1
                continue
            single = self._single_item(modality, data)
            parts.append(single + next_idx)
            st = offset + single.shape[1]
        if st < len(input_tokens):
            next_idx = int(parts[-1].max()) + 1 if parts else 0
            parts.append(np.broadcast_to(np.arange(len(input_tokens) - st), (3, len(input_tokens) - st)) + next_idx)
        positions = np.concatenate(parts, axis=1).reshape(3, -1)
        return torch.from_numpy(positions.astype(np.int64)), int(positions.max()) + 1 - len(input_tokens)

    def _single_item(self, modality: str, data: dict[str, Any]) -> np.ndarray:
        """Positions of an image, a video without sound or a sound of its own, from 0 (as vLLM's parent)."""
        if modality == "audio":
            count = self._compute_audio_token_count(data["audio_feature_length"])
            return np.broadcast_to(np.arange(count), (3, count))
        grid = np.indices((data["grid_t"], data["grid_h"], data["grid_w"]))
        if data["t_factor"] != 1.0:
            grid[0] = (grid[0] * data["t_factor"]).astype(np.int64)
        return grid.reshape(3, -1)

    def _interleaved_block(self, tokens: list[int], start: int, data: dict[str, Any]) -> np.ndarray:
        """Positions of ``<|audio_bos|>``, the interleaved frame and sound tokens and ``<|audio_eos|>``;
        ``start`` is the position after ``<|vision_bos|>``."""
        grid_t, grid_h, grid_w = data["grid_t"], data["grid_h"], data["grid_w"]
        # transformers' arithmetic, float32: (t * seconds_per_grid * 25).long().
        seconds = torch.tensor(data["t_factor"] / self._ticks_per_second, dtype=torch.float32)
        times = (torch.arange(grid_t) * seconds * self._ticks_per_second).long().numpy()
        frame = np.indices((grid_h, grid_w)).reshape(2, -1)
        video = np.concatenate([np.vstack([np.full(grid_h * grid_w, t), frame]) for t in times], axis=1) + start
        sound = np.arange(self._compute_audio_token_count(data["audio_feature_length"])) + start
        video_id, audio_id = self.config.video_token_index, self.config.audio_token_index
        out = np.empty((3, len(tokens)), dtype=np.int64)
        v = a = 0
        for i, token in enumerate(tokens[1:-1], start=1):
            if token == video_id:
                out[:, i] = video[:, v]
                v += 1
            elif token == audio_id:
                out[:, i] = sound[a]
                a += 1
            else:
                raise ValueError(f"unexpected token {token} inside an interleaved video block")
        if v != video.shape[1] or a != len(sound):
            raise ValueError(
                f"interleaved block holds {v} frame and {a} sound tokens, expected {video.shape[1]} and {len(sound)}"
            )
        out[:, 0] = start - 1
        out[:, -1] = int(out[:, 1:-1].max()) + 1
        return out

    @property
    def _ticks_per_second(self) -> float:
        return float(getattr(self.config.vision_config, "tokens_per_second", 25))
