"""Qwen2-VL folders (Qwen/Qwen2-VL-7B-Instruct, also the layout of LiveCC-7B and other Qwen2-VL fine-tunes):
the older vision tower and tokenizer, with Qwen2.5-VL's text sizes and chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.devtools.families.common import qwen_vl_generation_config, qwen_vl_processor_numbers, write_json
from worker.devtools.families.qwen2_5_vl import QWEN2_5_VL_CHAT_TEMPLATE, QWEN2_5_VL_SIZES
from worker.devtools.families.tokenizer import QWEN2_VL_ADDED_TOKENS, write_qwen2_tokenizer_files

# Qwen2-VL-7B-Instruct ships the very template Qwen2.5-VL later reused.
QWEN2_VL_CHAT_TEMPLATE = QWEN2_5_VL_CHAT_TEMPLATE

# "7b" is Qwen/Qwen2-VL-7B-Instruct's config.json. Its vision tower is the older design: embed_dim and
# mlp_ratio instead of hidden_size/intermediate_size, LayerNorm and QuickGELU, no windowed attention;
# its vision "hidden_size" is the *text* width the merger projects to. "tiny" keeps head_dim =
# 2 * sum(mrope_section) and vision hidden_size == text hidden_size.
QWEN2_VL_SIZES: dict[str, dict[str, Any]] = {
    "7b": {
        "text": QWEN2_5_VL_SIZES["7b"]["text"],
        "vision": {"depth": 32, "embed_dim": 1280, "num_heads": 16},
    },
    "tiny": {
        "text": QWEN2_5_VL_SIZES["tiny"]["text"],
        "vision": {"depth": 2, "embed_dim": 64, "num_heads": 2},
    },
}


def qwen2_vl_config(size: str) -> dict[str, Any]:
    """config.json of Qwen2-VL in the flat layout of the hub repos (text fields at the top level)."""
    dims = QWEN2_VL_SIZES[size]
    text, vision = dims["text"], dims["vision"]
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_token_id": 151654,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "hidden_act": "silu",
        "hidden_size": text["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": text["intermediate_size"],
        "max_position_embeddings": 32768,
        "max_window_layers": text["max_window_layers"],
        "model_type": "qwen2_vl",
        "num_attention_heads": text["num_attention_heads"],
        "num_hidden_layers": text["num_hidden_layers"],
        "num_key_value_heads": text["num_key_value_heads"],
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": False,
        "torch_dtype": text["torch_dtype"],
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": vision["depth"],
            "embed_dim": vision["embed_dim"],
            "mlp_ratio": 4,
            "num_heads": vision["num_heads"],
            "in_chans": 3,
            "hidden_size": text["hidden_size"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": text["mrope_section"]},
        "vocab_size": text["vocab_size"],
    }


def build_qwen2_vl(out_dir: Path, size: str) -> None:
    """Write every file of a Qwen2-VL folder of ``size`` into the existing ``out_dir``."""
    write_json(out_dir / "config.json", qwen2_vl_config(size))
    write_json(out_dir / "generation_config.json", qwen_vl_generation_config(0.01))
    write_json(
        out_dir / "preprocessor_config.json",
        {
            **qwen_vl_processor_numbers(),
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2VLProcessor",
        },
    )
    write_json(
        out_dir / "video_preprocessor_config.json",
        {
            **qwen_vl_processor_numbers(),
            "video_processor_type": "Qwen2VLVideoProcessor",
            "processor_class": "Qwen2VLProcessor",
        },
    )
    write_qwen2_tokenizer_files(
        out_dir, QWEN2_VL_ADDED_TOKENS, chat_template=QWEN2_VL_CHAT_TEMPLATE, model_max_length=32768
    )
