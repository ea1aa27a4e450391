"""The reference side: the family's own transformers pipeline, as its model card runs it.

``AutoProcessor`` and the folder's chat template, the messages built media first then text, the processor
given the frames the worker sent and their true timing (``video_metadata``), then
``...ForConditionalGeneration.generate(do_sample=False)``. What the reference computed on the way (prompt
ids, grids, the M-RoPE positions its language model received, the processed pixels, each step's top two
scores) is recorded for the comparison. A family whose reference differs (Omni's audio, video-SALMONN's
authors' code) subclasses ``Reference`` and registers itself in ``REFERENCES``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from worker.devtools.parity.records import GRID_KEYS, PIXEL_KEYS, VALUE_KEYS, Media, SideRun, Step
from worker.devtools.parity.rope import qwen_rope_index

log = logging.getLogger(__name__)


# model_type values whose positions Qwen's original rule (rope.py) describes.
QWEN_RULE_TYPES = ("qwen2_vl", "qwen2_5_vl")


class Reference:
    """Qwen2-VL, Qwen2.5-VL and Qwen3-VL: one processor call and ``generate`` on the whole model."""

    families: ClassVar[tuple[str, ...]] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

    def __init__(self, folder: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        import transformers

        self.folder = Path(folder)
        self.device = device
        self.dtype = dtype
        self.processor = transformers.AutoProcessor.from_pretrained(self.folder)
        self.model = self.load_model(transformers).to(device).eval()
        self._positions: list[np.ndarray] = []
        self.language_model().register_forward_pre_hook(self._record_positions, with_kwargs=True)

    # ---- family hooks -------------------------------------------------------------------------------

    def load_model(self, transformers: Any) -> torch.nn.Module:
        config = transformers.AutoConfig.from_pretrained(self.folder)
        cls = getattr(transformers, config.architectures[0])
        model, info = cls.from_pretrained(self.folder, dtype=self.dtype, output_loading_info=True)
        _check_loaded(info)
        return model

    def language_model(self) -> torch.nn.Module:
        """The decoder whose forward receives the M-RoPE position ids."""
        return self.model.model.language_model

    def rope_owner(self) -> torch.nn.Module:
        """The module whose ``get_rope_index`` computes the prompt's positions (``qwen_positions``)."""
        return self.model.model

    def messages(self, prompt: str, media: Media | None) -> list[dict[str, Any]]:
        """The model card's conversation: one user turn, the medium first, then the text."""
        content: list[dict[str, Any]] = []
        if media is not None:
            content.append({"type": media.kind, media.kind: "<in memory>"})
        content.append({"type": "text", "text": prompt})
        return [{"role": "user", "content": content}]

    def processor_inputs(self, media: Media | None) -> dict[str, Any]:
        """The processor's media arguments besides the text."""
        if media is None:
            return {}
        if media.kind == "image":
            return {"images": [media.pixels]}
        kwargs: dict[str, Any] = {"videos": [media.pixels], "do_sample_frames": False}
        if media.metadata is not None:
            kwargs["video_metadata"] = [_video_metadata(media.metadata)]
        return kwargs

    def generate_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {}

    # ---- the run ------------------------------------------------------------------------------------

    def qwen_rule(self, inputs: dict[str, Any]) -> np.ndarray | None:
        """The prompt's positions under Qwen's original rule (rope.py), for the families it describes."""
        config = self.model.config
        if config.model_type not in QWEN_RULE_TYPES or "mm_token_type_ids" not in inputs:
            return None
        return qwen_rope_index(
            inputs["mm_token_type_ids"][0].tolist(),
            inputs["image_grid_thw"].tolist() if "image_grid_thw" in inputs else [],
            inputs["video_grid_thw"].tolist() if "video_grid_thw" in inputs else [],
            [float(v) for v in inputs["second_per_grid_ts"]] if "second_per_grid_ts" in inputs else None,
            spatial_merge_size=config.vision_config.spatial_merge_size,
            tokens_per_second=getattr(config.vision_config, "tokens_per_second", None),
        )

    def run(
        self,
        prompt: str,
        media: Media | None,
        max_new_tokens: int,
        processor_overrides: dict[str, Any] | None = None,
        qwen_positions: bool = False,
    ) -> SideRun:
        """Process and generate. ``qwen_positions``: the language model gets Qwen's original positions
        (rope.py) instead of transformers 5.17's own, where those differ."""
        text = self.processor.apply_chat_template(
            self.messages(prompt, media), tokenize=False, add_generation_prompt=True
        )
        inputs = self.processor(
            text=[text], **(self.processor_inputs(media) | (processor_overrides or {})), return_tensors="pt"
        )
        rule = self.qwen_rule(inputs)
        if qwen_positions and rule is None:
            raise ValueError(f"Qwen's original position rule does not cover {self.model.config.model_type}")
        with _positions_from(self.rope_owner(), rule if qwen_positions else None):
            side = self._generate(inputs, max_new_tokens)
        side.qwen_rule_positions = rule
        return side

    def _generate(self, inputs: Any, max_new_tokens: int) -> SideRun:
        side = SideRun(prompt_token_ids=inputs["input_ids"][0].tolist(), token_ids=[])
        for key in GRID_KEYS:
            if key in inputs:
                side.grids[key] = inputs[key].tolist()
        for key in VALUE_KEYS:
            if key in inputs:
                side.mm_values[key] = [float(v) for v in np.asarray(inputs[key]).reshape(-1)]
        for key in PIXEL_KEYS:
            if key in inputs:
                side.pixels[key] = inputs[key].float().numpy()
        self._positions.clear()
        model_inputs = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        with torch.no_grad():
            out = self.model.generate(
                **model_inputs,
                **self.generate_kwargs(model_inputs),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                output_scores=True,
                output_logits=True,
                return_dict_in_generate=True,
            )
        prompt_len = inputs["input_ids"].shape[1]
        side.token_ids = out.sequences[0, prompt_len:].tolist()
        side.steps = [_top2(scores[0]) for scores in out.scores]
        side.raw_steps = [_top2(logits[0]) for logits in out.logits]
        side.text = self.processor.tokenizer.decode(side.token_ids, skip_special_tokens=True)
        if self._positions and self._positions[0].shape[-1] == prompt_len:
            side.positions = self._positions[0]
        else:
            side.notes.append("reference positions not captured at prefill")
        return side

    def _record_positions(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("position_ids")
        if ids is None or self._positions:
            return
        ids = ids.detach().cpu()
        if ids.ndim == 3 and ids.shape[0] == 4:  # text positions first, then the three M-RoPE axes
            ids = ids[1:]
        if ids.ndim == 3:
            self._positions.append(ids[:, 0, :].numpy().astype(np.int64))


@contextlib.contextmanager
def _positions_from(model: torch.nn.Module, positions: np.ndarray | None) -> Iterator[None]:
    """``model.get_rope_index`` answering ``positions`` (and their delta) for the prompt while inside."""
    if positions is None:
        yield
        return

    def get_rope_index(input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if input_ids.shape[-1] != positions.shape[-1]:
            raise ValueError("Qwen-rule positions were computed for another prompt")
        ids = torch.from_numpy(positions)[:, None, :].to(input_ids.device)
        delta = torch.tensor([[int(positions.max()) + 1 - positions.shape[-1]]], device=input_ids.device)
        return ids, delta

    model.get_rope_index = get_rope_index
    try:
        yield
    finally:
        del model.get_rope_index


def _check_loaded(info: dict[str, Any]) -> None:
    """Every checkpoint tensor used and every parameter loaded: a reference on half-random weights would
    prove nothing (vLLM's loader makes the same check on its side and refuses to start otherwise)."""
    keys = ("missing_keys", "unexpected_keys", "mismatched_keys")
    problems = {k: sorted(v) for k, v in info.items() if k in keys and v}
    if problems:
        raise RuntimeError(f"the reference did not load the checkpoint exactly: {problems}")


def _video_metadata(metadata: dict[str, Any]) -> Any:
    from transformers.video_utils import VideoMetadata

    fields = ("total_num_frames", "fps", "width", "height", "duration", "video_backend", "frames_indices")
    return VideoMetadata(**{k: metadata[k] for k in fields if k in metadata})


def _top2(scores: torch.Tensor) -> Step:
    values, ids = torch.topk(scores.float(), 2)
    return Step(int(ids[0]), float(values[0]), int(ids[1]), float(values[1]))


REFERENCES: dict[str, type[Reference]] = {family: Reference for family in Reference.families}


def reference_for(family: str) -> type[Reference]:
    if family not in REFERENCES:
        raise ValueError(f"no parity reference for family {family!r}; known: {sorted(REFERENCES)}")
    return REFERENCES[family]
