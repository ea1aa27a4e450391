"""Seed 004's LiveCC loops (``LiveCCDemoInfer.live_cc`` and ``video_qa``), ported to transformers 5.17 on the
CPU: the same turns, texts, ``past_ids`` and ``past_key_values`` handling, greedy ``generate`` with
repetition_penalty 1.05, the last generated id dropped from ``past_ids``. What changed, and why:

- no liger kernel and no flash attention (CPU, float32; liger only fuses kernels);
- the frames are the ones the worker sent (the seed reads them with decord), given as an array;
- ``max_new_tokens`` is explicit: the seed passes none, and transformers then generates 20 new tokens
  (its default max_length, "by default let's always generate 20 new tokens");
- ``positions="qwen"`` (the default) gives each turn's tokens the M-RoPE positions of the whole
  conversation under Qwen's rule (worker/devtools/parity/rope.py), every clip on its own temporal-spatial
  grid, as the model was trained (LiveCC's data/lmm_dataset.py processes the whole conversation at once)
  and as vLLM computes for the re-sent conversation. ``positions="seed"`` keeps what the seed's code does
  (livecc_utils drops position_ids, so a later turn continues from the first turn's rope_deltas: its clip
  gets text positions, one per token); docs/commentary.md compares the two.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worker.devtools.parity.rope import qwen_rope_index

VIDEO_TYPE = 2  # transformers' mm_token_type_ids value of a video token


@dataclass
class Turn:
    span: tuple[float, float]
    text: str
    prompt_ids: list[int]  # past_ids + this turn's ids: what the model was given
    token_ids: list[int]  # generated
    steps: list[tuple[int, float, int, float]] = field(default_factory=list)  # top two scores per step


class LiveCCReference:
    fps = 2
    initial_fps_frames = 6
    streaming_fps_frames = 2
    frame_time_interval = 1 / fps

    def __init__(self, folder: Path, *, positions: str = "qwen") -> None:
        import transformers

        if positions not in ("qwen", "seed"):
            raise ValueError(positions)
        self.positions = positions
        self.model = transformers.Qwen2VLForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
        self.processor = transformers.AutoProcessor.from_pretrained(folder)
        message = {"role": "user", "content": [{"type": "text", "text": "livecc"}]}
        texts = self.processor.apply_chat_template([message], tokenize=False)
        self.system_prompt_offset = texts.index("<|im_start|>user")
        # The seed's model.config.eos_token_id: transformers 5.17 keeps it in the text config.
        self.eos_token_id = int(self.model.config.text_config.eos_token_id)

    @torch.inference_mode()
    def live_cc(
        self,
        clips: list[tuple[np.ndarray, list[float]]],
        query: str | None,
        state: dict[str, Any],
        *,
        default_query: str = "Please describe the video.",
        repetition_penalty: float = 1.05,
        max_new_tokens: int = 20,
    ) -> Iterator[Turn]:
        """``clips``: each turn's frames (T, H, W, 3) and their instants, as the seed's
        ``interleave_clips``/``interleave_timestamps``."""
        for clip, timestamps in clips:
            start_timestamp, stop_timestamp = timestamps[0], timestamps[-1] + self.frame_time_interval
            message: dict[str, Any] = {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"Time={start_timestamp:.1f}-{stop_timestamp:.1f}s"},
                    {"type": "video", "video": "<in memory>"},
                ],
            }
            if not query and not state.get("query", None):
                query = default_query
            if query and state.get("query", None) != query:
                message["content"].append({"type": "text", "text": query})
                state["query"] = query
            texts = self.processor.apply_chat_template([message], tokenize=False, add_generation_prompt=True)
            yield self._turn(texts, clip, state, repetition_penalty, max_new_tokens, (start_timestamp, stop_timestamp))

    @torch.inference_mode()
    def video_qa(
        self,
        message: str,
        state: dict[str, Any],
        clip: np.ndarray | None,
        *,
        repetition_penalty: float = 1.05,
        max_new_tokens: int = 512,
    ) -> Turn:
        """One question; the video (``clip``: the worker's frames) goes with the first only."""
        content: list[dict[str, Any]] = [{"type": "text", "text": message}]
        video = clip if state.get("past_ids", None) is None else None
        if video is not None:
            content.insert(0, {"type": "video", "video": "<in memory>"})
        texts = self.processor.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        return self._turn(texts, video, state, repetition_penalty, max_new_tokens, (0.0, 0.0))

    def follow_up_text(self, message: str) -> str:
        """The text ``video_qa`` adds to ``past_ids`` for a question after the first."""
        turn = [{"role": "user", "content": [{"type": "text", "text": message}]}]
        texts = self.processor.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
        return "<|im_end|>\n" + texts[self.system_prompt_offset :]

    def _turn(
        self,
        texts: str,
        clip: np.ndarray | None,
        state: dict[str, Any],
        repetition_penalty: float,
        max_new_tokens: int,
        span: tuple[float, float],
    ) -> Turn:
        past_ids = state.get("past_ids", None)
        if past_ids is not None:
            texts = "<|im_end|>\n" + texts[self.system_prompt_offset :]
        media: dict[str, Any] = {"videos": [clip], "do_sample_frames": False} if clip is not None else {}
        inputs = self.processor(text=texts, return_tensors="pt", return_attention_mask=False, **media)
        turn_length = inputs["input_ids"].shape[1]
        if "mm_token_type_ids" in inputs:
            turn_types = inputs["mm_token_type_ids"][0].tolist()
        else:
            turn_types = [0] * turn_length
        types = state.get("types", []) + turn_types  # of past_ids + this turn's ids
        if past_ids is not None:
            inputs["input_ids"] = torch.cat([past_ids, inputs.input_ids], dim=1)
        extra = self._positions(inputs, state, types)
        outputs = self.model.generate(
            **inputs,
            **extra,
            past_key_values=state.get("past_key_values", None),
            return_dict_in_generate=True,
            do_sample=False,
            repetition_penalty=repetition_penalty,
            max_new_tokens=max_new_tokens,
            pad_token_id=self.eos_token_id,
            output_scores=True,
        )
        prompt_length = inputs["input_ids"].shape[1]
        generated = outputs.sequences[0, prompt_length:].tolist()
        state["past_key_values"] = outputs.past_key_values
        state["past_ids"] = outputs.sequences[:, :-1]
        state["types"] = types + [0] * (len(generated) - 1)
        steps = []
        for scores in outputs.scores:
            values, ids = torch.topk(scores[0].float(), 2)
            steps.append((int(ids[0]), float(values[0]), int(ids[1]), float(values[1])))
        return Turn(
            span=span,
            text=self.processor.decode(generated, skip_special_tokens=True),
            prompt_ids=inputs["input_ids"][0].tolist(),
            token_ids=generated,
            steps=steps,
        )

    def _positions(self, inputs: Any, state: dict[str, Any], types: list[int]) -> dict[str, Any]:
        """``positions="qwen"``: the whole conversation's positions under Qwen's rule (every clip's grid so
        far), as ``position_ids`` (text row first, as transformers 5.17's Qwen2-VL takes them)."""
        grids = state.setdefault("grids", [])
        if "video_grid_thw" in inputs:
            grids.extend(inputs["video_grid_thw"].tolist())
        if self.positions == "seed":
            return {}
        length = inputs["input_ids"].shape[1]
        if len(types) != length:
            raise ValueError(f"token types cover {len(types)} of {length} tokens")
        merge = self.model.config.vision_config.spatial_merge_size
        vision = qwen_rope_index(types, [], grids, None, spatial_merge_size=merge, tokens_per_second=None)
        rows = np.concatenate([np.arange(length)[None], vision], axis=0)
        return {"position_ids": torch.from_numpy(rows)[:, None, :]}
