"""Pieces every Qwen VL family's folder shares: the JSON writer, the instruct repos' generation config and
the image/video processor numbers, kept in one place so the families cannot drift apart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# OpenAI CLIP normalisation, which every Qwen VL image/video processor uses.
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Pretty-printed UTF-8 JSON with a final newline, the way the hub repos store their configs."""
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def qwen_vl_generation_config(temperature: float) -> dict[str, Any]:
    """generation_config.json of the Qwen2-VL and Qwen2.5-VL instruct repos (top_k 1: greedy in effect);
    they differ only in temperature."""
    return {
        "bos_token_id": 151643,
        "pad_token_id": 151643,
        "do_sample": True,
        "eos_token_id": [151645, 151643],
        "repetition_penalty": 1.05,
        "temperature": temperature,
        "top_p": 0.001,
        "top_k": 1,
        "transformers_version": "4.37.0",
    }


def qwen_vl_processor_numbers() -> dict[str, Any]:
    # min_pixels 56*56 and max_pixels 14*14*4*16384, as in the Qwen2.5-VL hub repos.
    return {
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
    }
