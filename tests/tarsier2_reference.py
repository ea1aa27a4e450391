"""Reference forward of Tarsier2 for tests/test_tarsier2_engine.py: the authors' model as their code runs it
(bytedance/tarsier models/modeling_tarsier.py with models/modeling_qwen2_vl_fast.py), on transformers'
Qwen2-VL with the release's tensors mapped by name, in float32.

What is the authors' and not transformers' is ported here minimally: a video is shown as its sampled frames
each repeated twice (dataset/custom_data_parsers/standard_vision_parser.py, ``use_multi_images_for_video``),
its visual tokens are ``image_token_index`` placeholders filled with the vision tower's output in order
(``masked_scatter``), and the M-RoPE positions follow their ``get_rope_index`` (the text after a visual block
continues at the block's largest position + 1). Nothing here imports the worker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    AutoVideoProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

# The release's tensor names -> transformers 5's Qwen2VLForConditionalGeneration.
RENAME = {
    "vision_tower.": "model.visual.",
    "language_model.model.": "model.language_model.",
    "language_model.lm_head.": "lm_head.",
}
SYSTEM = "You are a helpful assistant."


def load(folder: Path) -> tuple[Qwen2VLForConditionalGeneration, dict[str, Any]]:
    """The model, every tensor of the checkpoint loaded strictly (none left over, none missing)."""
    raw = json.loads((folder / "config.json").read_text())
    drop = ("architectures", "auto_map", "_name_or_path", "attn_implementation")
    text = {k: v for k, v in raw["text_config"].items() if k not in drop}
    vision = {k: v for k, v in raw["vision_config"].items() if k not in drop}
    ids = {k: text[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    config = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    model = Qwen2VLForConditionalGeneration(config).to(torch.float32)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        tensors |= load_file(folder / shard)
    renamed = {}
    for name, tensor in tensors.items():
        prefix = next(p for p in RENAME if name.startswith(p))
        renamed[RENAME[prefix] + name[len(prefix) :]] = tensor.float()
    result = model.load_state_dict(renamed, strict=True)
    model.eval()
    report = {"tensors": len(tensors), "missing": list(result.missing_keys), "unexpected": list(result.unexpected_keys)}
    return model, report


def authors_rope_index(input_ids: list[int], grids: list[list[int]], config: Qwen2VLConfig) -> np.ndarray:
    """(3, len) positions by modeling_qwen2_vl_fast.Qwen2VLForCausalLM.get_rope_index: every vision block is
    a run of ``image_token_id`` after ``vision_start_token_id`` with grid (t, h, w) in patches."""
    merge = config.vision_config.spatial_merge_size
    vision_token, start_token = config.image_token_id, config.vision_start_token_id
    starts = [i for i, tok in enumerate(input_ids) if tok == start_token and i + 1 < len(input_ids)]
    blocks = sum(1 for i in starts if input_ids[i + 1] == vision_token)
    parts: list[np.ndarray] = []
    st = 0
    for k in range(blocks):
        ed = input_ids.index(vision_token, st)
        t, h, w = grids[k][0], grids[k][1] // merge, grids[k][2] // merge
        text_len = ed - st
        st_idx = int(parts[-1].max()) + 1 if parts else 0
        parts.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + st_idx)
        parts.append(np.indices((t, h, w)).reshape(3, -1) + text_len + st_idx)
        st = ed + t * h * w
    if st < len(input_ids):
        st_idx = int(parts[-1].max()) + 1 if parts else 0
        parts.append(np.broadcast_to(np.arange(len(input_ids) - st), (3, len(input_ids) - st)) + st_idx)
    return np.concatenate(parts, axis=1).astype(np.int64)


def run(folder: Path, kind: str, pixels: np.ndarray, question: str, max_new_tokens: int) -> dict[str, Any]:
    """Greedy ids of the authors' pipeline on ``pixels``: one image (H, W, 3), or a video's sampled frames
    (T, H, W, 3) before the authors' doubling."""
    model, load_report = load(folder)
    config = model.config
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if kind == "video":
        doubled = np.repeat(pixels, 2, axis=0)  # [f0, f0, f1, f1, ...]
        processed = AutoVideoProcessor.from_pretrained(folder)(videos=[doubled], return_tensors="pt")
        values, grid = processed["pixel_values_videos"], processed["video_grid_thw"]
    else:
        processed = AutoImageProcessor.from_pretrained(folder)(images=[pixels], return_tensors="pt")
        values, grid = processed["pixel_values"], processed["image_grid_thw"]
    merge = config.vision_config.spatial_merge_size
    count = int(grid.prod()) // merge**2
    prompt = (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<|vision_start|>"
        + "<|image_pad|>" * count
        + f"<|vision_end|>{question}<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    positions = authors_rope_index(ids[0].tolist(), grid.tolist(), config)

    def rope_index(input_ids: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        delta = int(positions.max()) + 1 - positions.shape[-1]
        return torch.from_numpy(positions)[:, None, :], torch.tensor([[delta]])

    model.model.get_rope_index = rope_index
    types = (ids == config.image_token_id).int()
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mm_token_type_ids=types,
            pixel_values=values,
            image_grid_thw=grid,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            output_logits=True,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, ids.shape[1] :].tolist()
    margins = [float(torch.topk(step[0].float(), 2).values.diff().abs()) for step in out.logits]
    return {
        "prompt_ids": ids[0].tolist(),
        "token_ids": tokens,
        "margins": margins,
        "positions": positions.tolist(),
        "grid": grid[0].tolist(),
        "pixels": values.float().numpy(),
        "load": load_report,
    }
