"""Qwen2.5-VL folders (Qwen/Qwen2.5-VL-7B-Instruct's layout); video-SALMONN 2+ and Qwen2.5-Omni reuse its
sizes and processor files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.devtools.families.common import qwen_vl_generation_config, qwen_vl_processor_numbers, write_json
from worker.devtools.families.tokenizer import QWEN2_5_ADDED_TOKENS, write_qwen2_tokenizer_files

# Verbatim from Qwen/Qwen2.5-VL-7B-Instruct (chat_template.json and tokenizer_config.json).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Text and vision numbers per size. "7b" is Qwen/Qwen2.5-VL-7B-Instruct's config.json; "tiny" keeps
# every structural constraint (head_dim = 2 * sum(mrope_section), out_hidden_size == hidden_size,
# window_size a multiple of patch_size * spatial_merge_size, full-attention blocks inside the
# depth) with widths small enough that weights and forward passes cost next to nothing on a 2-core
# CPU (engine start-up is then dominated by vLLM itself).
QWEN2_5_VL_SIZES: dict[str, dict[str, Any]] = {
    "7b": {
        "text": {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "max_window_layers": 28,
            "vocab_size": 152064,
            "mrope_section": [16, 24, 24],
            "torch_dtype": "bfloat16",
        },
        "vision": {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
    },
    "tiny": {
        "text": {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            # head_dim 64: a size vLLM's CPU attention supports; 2 query heads share 1 KV head so
            # grouped-query attention is exercised as in the real model.
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_window_layers": 2,
            # Same padded vocabulary as 7B, so ids past the tokenizer (151665..152063) can be
            # sampled just as in production.
            "vocab_size": 152064,
            "mrope_section": [8, 12, 12],
            "torch_dtype": "bfloat16",
        },
        "vision": {
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            # Last block full attention, the others windowed, like 7B's every-8th pattern.
            "fullatt_block_indexes": [1],
        },
    },
}


def qwen2_5_vl_config(size: str, dims: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json of Qwen2.5-VL in the flat layout of the hub repos.

    Text fields sit at the top level (no ``text_config``) and ``rope_scaling`` uses ``type: mrope``,
    exactly like Qwen/Qwen2.5-VL-7B-Instruct: transformers 5 moves them into ``text_config`` on
    load, so the dummy goes through the same parsing as the production checkpoint.
    """
    dims = dims or QWEN2_5_VL_SIZES[size]
    text, vision = dims["text"], dims["vision"]
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
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
        "max_position_embeddings": 128000,
        "max_window_layers": text["max_window_layers"],
        "model_type": "qwen2_5_vl",
        "num_attention_heads": text["num_attention_heads"],
        "num_hidden_layers": text["num_hidden_layers"],
        "num_key_value_heads": text["num_key_value_heads"],
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": text.get("tie_word_embeddings", False),
        "torch_dtype": text["torch_dtype"],
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": vision["depth"],
            "hidden_act": "silu",
            "hidden_size": vision["hidden_size"],
            "intermediate_size": vision["intermediate_size"],
            "num_heads": vision["num_heads"],
            "in_chans": 3,
            "out_hidden_size": text["hidden_size"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "window_size": 112,
            "fullatt_block_indexes": vision["fullatt_block_indexes"],
            "tokens_per_second": 2,
            "temporal_patch_size": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": text["mrope_section"]},
        "vocab_size": text["vocab_size"],
    }


def build_qwen2_5_vl(out_dir: Path, size: str) -> None:
    """Write every file of a Qwen2.5-VL folder of ``size`` into the existing ``out_dir``."""
    write_json(out_dir / "config.json", qwen2_5_vl_config(size))
    write_qwen2_5_vl_configs(out_dir)
    write_qwen2_tokenizer_files(out_dir, QWEN2_5_ADDED_TOKENS, chat_template=QWEN2_5_VL_CHAT_TEMPLATE)


def write_qwen2_5_vl_configs(out_dir: Path) -> None:
    """Generation and processor configs of Qwen2.5-VL, which video-SALMONN 2+ checkpoints share."""
    # Qwen2.5-VL-7B-Instruct's generation_config.json: vLLM applies it as the default sampling
    # parameters (near-greedy), so requests without explicit sampling behave as in production.
    write_json(out_dir / "generation_config.json", qwen_vl_generation_config(0.1))
    write_json(
        out_dir / "preprocessor_config.json",
        {
            **qwen_vl_processor_numbers(),
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
        },
    )
    # The hub repo has no video processor file, so transformers builds the video processor from
    # preprocessor_config.json; writing the same numbers explicitly gives the identical processor.
    write_json(
        out_dir / "video_preprocessor_config.json",
        {
            **qwen_vl_processor_numbers(),
            "video_processor_type": "Qwen2VLVideoProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
        },
    )
