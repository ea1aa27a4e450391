"""Tarsier2 folders laid out like the authors' release (omni-research/Tarsier2-Recap-7b, saved by
bytedance/tarsier's TarsierForConditionalGeneration and TarsierProcessor with transformers 4.4x): a LLaVA
wrapper config around Qwen2-VL, Qwen2-VL-7B-Instruct's tokenizer, the processor files of the authors'
TarsierProcessor, and tensors named ``vision_tower.*`` / ``language_model.*`` in shards with an index.

The release's files could not be read here (no Hugging Face access): their layout is restated from the
authors' configuration and processor classes, vLLM 0.23's Tarsier2 support and the vLLM threads on its
config (model_type "llava", a flat Qwen2-VL text_config). The tiny folder carries seeded random weights; the
7B one none (``load_format="dummy"``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worker.devtools.families.common import qwen_vl_processor_numbers, write_json
from worker.devtools.families.qwen2_vl import QWEN2_VL_CHAT_TEMPLATE, QWEN2_VL_SIZES
from worker.devtools.families.tokenizer import QWEN2_VL_ADDED_TOKENS, write_qwen2_tokenizer_files

TARSIER2_SIZES: dict[str, dict[str, Any]] = {"7b": QWEN2_VL_SIZES["7b"], "tiny": QWEN2_VL_SIZES["tiny"]}
_TRANSFORMERS_VERSION = "4.46.1"  # the 4.4x line the authors' code (bytedance/tarsier requirements) runs on
_PROCESSOR_CLASS = "TarsierProcessor"
# Weights drawn this wide make the greedy choice of the tiny model robust to float rounding (parity tests).
_WEIGHT_STD = 0.2
_NORM_JITTER = 0.1


def tarsier2_config(size: str) -> dict[str, Any]:
    """config.json as the authors' LlavaConfig saves it: the wrapper's own fields, Qwen2-VL-7B-Instruct's text
    fields in ``text_config`` and the authors' Qwen2VLVisionConfig fields in ``vision_config`` (whose
    ``hidden_size`` is the width the merger projects to)."""
    dims = TARSIER2_SIZES[size]
    text, vision = dims["text"], dims["vision"]
    return {
        "architectures": ["TarsierForConditionalGeneration"],
        "ignore_index": -100,
        "image_new_idx": 32003,
        "image_newline_idx": 32002,
        "image_token_index": 151655,
        "model_type": "llava",
        "projection_head": None,
        "projector_hidden_act": "gelu",
        "text_config": {
            "architectures": ["Qwen2VLForConditionalGeneration"],
            "attention_dropout": 0.0,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "hidden_act": "silu",
            "hidden_size": text["hidden_size"],
            "image_token_id": 151655,
            "initializer_range": 0.02,
            "intermediate_size": text["intermediate_size"],
            "max_position_embeddings": 32768,
            "max_window_layers": text["max_window_layers"],
            "model_type": "qwen2_vl",
            "num_attention_heads": text["num_attention_heads"],
            "num_hidden_layers": text["num_hidden_layers"],
            "num_key_value_heads": text["num_key_value_heads"],
            "rms_norm_eps": 1e-06,
            "rope_scaling": {"mrope_section": text["mrope_section"], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "sliding_window": 32768,
            "spatial_merge_size": 2,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "use_cache": True,
            "use_sliding_window": False,
            "video_token_id": 151656,
            "vision_end_token_id": 151653,
            "vision_start_token_id": 151652,
            "vision_token_id": 151654,
            "vocab_size": text["vocab_size"],
        },
        "torch_dtype": "bfloat16",
        "transformers_version": _TRANSFORMERS_VERSION,
        "vision_config": {
            "depth": vision["depth"],
            "embed_dim": vision["embed_dim"],
            "hidden_act": "quick_gelu",
            "hidden_size": text["hidden_size"],
            "in_channels": 3,
            "mlp_ratio": 4,
            "model_type": "qwen2_vl",
            "num_heads": vision["num_heads"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
    }


def tarsier2_weight_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Tarsier2 checkpoint by the release's names, with its shape: Qwen2-VL's vision
    transformer under ``vision_tower`` (its merger is the projector), the authors' Qwen2VLForCausalLM under
    ``language_model``."""
    text, vision = config["text_config"], config["vision_config"]
    shapes: dict[str, tuple[int, ...]] = {}
    embed, patch, temporal = vision["embed_dim"], vision["patch_size"], vision["temporal_patch_size"]
    mlp, merged = embed * vision["mlp_ratio"], embed * vision["spatial_merge_size"] ** 2
    shapes["vision_tower.patch_embed.proj.weight"] = (embed, vision["in_channels"], temporal, patch, patch)
    for i in range(vision["depth"]):
        b = f"vision_tower.blocks.{i}"
        for norm in ("norm1", "norm2"):
            shapes |= {f"{b}.{norm}.weight": (embed,), f"{b}.{norm}.bias": (embed,)}
        shapes |= {f"{b}.attn.qkv.weight": (3 * embed, embed), f"{b}.attn.qkv.bias": (3 * embed,)}
        shapes |= {f"{b}.attn.proj.weight": (embed, embed), f"{b}.attn.proj.bias": (embed,)}
        shapes |= {f"{b}.mlp.fc1.weight": (mlp, embed), f"{b}.mlp.fc1.bias": (mlp,)}
        shapes |= {f"{b}.mlp.fc2.weight": (embed, mlp), f"{b}.mlp.fc2.bias": (embed,)}
    shapes |= {"vision_tower.merger.ln_q.weight": (embed,), "vision_tower.merger.ln_q.bias": (embed,)}
    shapes |= {"vision_tower.merger.mlp.0.weight": (merged, merged), "vision_tower.merger.mlp.0.bias": (merged,)}
    out = vision["hidden_size"]
    shapes |= {"vision_tower.merger.mlp.2.weight": (out, merged), "vision_tower.merger.mlp.2.bias": (out,)}
    hidden, inter, vocab = text["hidden_size"], text["intermediate_size"], text["vocab_size"]
    kv = text["num_key_value_heads"] * hidden // text["num_attention_heads"]
    shapes["language_model.model.embed_tokens.weight"] = (vocab, hidden)
    for i in range(text["num_hidden_layers"]):
        b = f"language_model.model.layers.{i}"
        shapes |= {f"{b}.self_attn.q_proj.weight": (hidden, hidden), f"{b}.self_attn.q_proj.bias": (hidden,)}
        shapes |= {f"{b}.self_attn.k_proj.weight": (kv, hidden), f"{b}.self_attn.k_proj.bias": (kv,)}
        shapes |= {f"{b}.self_attn.v_proj.weight": (kv, hidden), f"{b}.self_attn.v_proj.bias": (kv,)}
        shapes |= {f"{b}.self_attn.o_proj.weight": (hidden, hidden)}
        shapes |= {f"{b}.mlp.gate_proj.weight": (inter, hidden), f"{b}.mlp.up_proj.weight": (inter, hidden)}
        shapes |= {f"{b}.mlp.down_proj.weight": (hidden, inter)}
        shapes |= {f"{b}.input_layernorm.weight": (hidden,), f"{b}.post_attention_layernorm.weight": (hidden,)}
    shapes["language_model.model.norm.weight"] = (hidden,)
    shapes["language_model.lm_head.weight"] = (vocab, hidden)
    return shapes


def write_tarsier2_weights(out_dir: Path, config: dict[str, Any], seed: int = 0) -> dict[str, str]:
    """Seeded random weights in bfloat16 (as released), in two shards (the vision tower, the language model)
    with ``model.safetensors.index.json``, the way ``save_pretrained`` splits a checkpoint. Norm scales are
    1 + N(0, 0.1), everything else N(0, 0.2). Returns the index's weight map."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    shards: dict[str, dict[str, torch.Tensor]] = {}
    names = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    for name, shape in tarsier2_weight_shapes(config).items():
        value = torch.randn(shape, generator=generator) * _WEIGHT_STD
        if ("norm" in name and name.endswith(".weight")) or name.endswith("ln_q.weight"):
            value = 1.0 + torch.randn(shape, generator=generator) * _NORM_JITTER
        shard = names[0] if name.startswith("vision_tower.") else names[1]
        shards.setdefault(shard, {})[name] = value.to(torch.bfloat16)
    weight_map: dict[str, str] = {}
    total = 0
    for shard, tensors in shards.items():
        save_file(tensors, str(out_dir / shard), metadata={"format": "pt"})
        weight_map |= {name: shard for name in tensors}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    write_json(out_dir / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    return weight_map


def _processor_files(out_dir: Path) -> None:
    """The authors' TarsierProcessor.save_pretrained: Qwen2-VL's image processor as transformers 4.4x writes
    it (pixel range both at the top level and in ``size``, which transformers 5 no longer reads), the
    processor's own arguments, and the chat template in chat_template.json."""
    numbers = qwen_vl_processor_numbers()
    write_json(
        out_dir / "preprocessor_config.json",
        {
            "do_convert_rgb": True,
            "do_normalize": True,
            "do_rescale": True,
            "do_resize": True,
            **numbers,
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": _PROCESSOR_CLASS,
            "resample": 3,
            "rescale_factor": 0.00392156862745098,
            "size": {"max_pixels": numbers["max_pixels"], "min_pixels": numbers["min_pixels"]},
        },
    )
    write_json(
        out_dir / "processor_config.json",
        {
            "image_token": "<|image_pad|>",
            "max_seq_len": 16384,
            "merge_size": 2,
            "patch_size": 14,
            "processor_class": _PROCESSOR_CLASS,
            "temporal_patch_size": 2,
        },
    )
    write_json(out_dir / "chat_template.json", {"chat_template": QWEN2_VL_CHAT_TEMPLATE})


def build_tarsier2(out_dir: Path, size: str) -> None:
    """Write every file of a Tarsier2 folder of ``size`` into the existing ``out_dir``."""
    config = tarsier2_config(size)
    write_json(out_dir / "config.json", config)
    generation = {"_from_model_config": True, "transformers_version": _TRANSFORMERS_VERSION}
    write_json(out_dir / "generation_config.json", generation)
    _processor_files(out_dir)
    write_qwen2_tokenizer_files(
        out_dir, QWEN2_VL_ADDED_TOKENS, chat_template=QWEN2_VL_CHAT_TEMPLATE, model_max_length=32768
    )
    # A 4.4x release keeps the template in chat_template.json and names its processor in the tokenizer's config.
    (out_dir / "chat_template.jinja").unlink()
    tokenizer_config = json.loads((out_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    write_json(out_dir / "tokenizer_config.json", tokenizer_config | {"processor_class": _PROCESSOR_CLASS})
    if size == "tiny":
        write_tarsier2_weights(out_dir, config)
