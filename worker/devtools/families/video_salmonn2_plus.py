"""video-SALMONN 2+ folders (tsinghua-ee/video-SALMONN2_plus_{3B,7B}_full: Qwen2.5-VL + Whisper-large-v3
encoder + window Q-Former, bytedance/video-SALMONN-2). The plugin loads real weights, so the tiny folder
carries seeded random ones under the authors' names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.devtools.families.common import write_json
from worker.devtools.families.qwen2_5_vl import (
    QWEN2_5_VL_CHAT_TEMPLATE,
    QWEN2_5_VL_SIZES,
    qwen2_5_vl_config,
    write_qwen2_5_vl_configs,
)
from worker.devtools.families.tokenizer import QWEN2_5_ADDED_TOKENS, write_qwen2_tokenizer_files

# The authors add one token after Qwen2.5-VL's specials (tokenizer.add_tokens: not "special").
SALMONN_AUDIO_TOKEN_ID = 151665
_SALMONN_ADDED_TOKENS = (*QWEN2_5_ADDED_TOKENS, ("<|audio_pad|>", False))

# "3b"/"7b" follow tsinghua-ee/video-SALMONN2_plus_{3B,7B}_full: Qwen2.5-VL-3B/7B-Instruct text and vision,
# Whisper-large-v3's encoder, a 2-layer 3072-wide Q-Former. "tiny" keeps the structural constraints
# (1500 encoder positions for a 30 s piece, 128 mel bins, encoder_width == d_model, out == LLM width).
SALMONN_SIZES: dict[str, dict[str, Any]] = {
    "7b": {
        **QWEN2_5_VL_SIZES["7b"],
        "audio": {"d_model": 1280, "layers": 32, "heads": 20, "ffn": 5120},
        "qformer": {"hidden": 3072, "layers": 2, "heads": 12, "ffn": 12288},
    },
    "3b": {
        "text": {
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "max_window_layers": 70,
            "vocab_size": 151936,
            "mrope_section": [16, 24, 24],
            "torch_dtype": "bfloat16",
            "tie_word_embeddings": True,
        },
        "vision": QWEN2_5_VL_SIZES["7b"]["vision"],
        "audio": {"d_model": 1280, "layers": 32, "heads": 20, "ffn": 5120},
        "qformer": {"hidden": 3072, "layers": 2, "heads": 12, "ffn": 12288},
    },
    "tiny": {
        **QWEN2_5_VL_SIZES["tiny"],
        "audio": {"d_model": 64, "layers": 2, "heads": 2, "ffn": 128},
        "qformer": {"hidden": 64, "layers": 2, "heads": 2, "ffn": 128},
    },
}


def video_salmonn2_plus_config(size: str) -> dict[str, Any]:
    """config.json as the authors' checkpoints have it: Qwen2.5-VL's, architecture video_SALMONN2_plus,
    ``audio_token_id`` and a Whisper ``audio_config`` carrying the Q-Former's ``qformer_config``."""
    dims = SALMONN_SIZES[size]
    config = qwen2_5_vl_config(size, dims)
    audio, qformer = dims["audio"], dims["qformer"]
    config["architectures"] = ["video_SALMONN2_plus"]
    config["audio_token_id"] = SALMONN_AUDIO_TOKEN_ID
    config["audio_config"] = {
        "model_type": "whisper",
        "activation_function": "gelu",
        "d_model": audio["d_model"],
        "encoder_layers": audio["layers"],
        "encoder_attention_heads": audio["heads"],
        "encoder_ffn_dim": audio["ffn"],
        "num_mel_bins": 128,
        "max_source_positions": 1500,
        "scale_embedding": False,
        "second_per_window": 0.5,
        "second_stride": 0.5,
        "qformer_config": {
            "model_type": "bert",
            "hidden_size": qformer["hidden"],
            "num_hidden_layers": qformer["layers"],
            "num_attention_heads": qformer["heads"],
            "intermediate_size": qformer["ffn"],
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-12,
            "encoder_width": audio["d_model"],
            "add_cross_attention": True,
            "cross_attention_freq": 1,
            "query_length": 1,
            "max_position_embeddings": 512,
            "out_hidden_size": dims["text"]["hidden_size"],
        },
    }
    return config


def salmonn_weight_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of a video-SALMONN 2+ checkpoint, by the authors' names (transformers 4.5x layout:
    ``visual.*``, ``model.*``, ``lm_head.*``, ``audio.*``), with its shape."""
    vision, audio = config["vision_config"], config["audio_config"]
    qformer = audio["qformer_config"]
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    shapes: dict[str, tuple[int, ...]] = {}
    vh, vi, patch = vision["hidden_size"], vision["intermediate_size"], vision["patch_size"]
    shapes["visual.patch_embed.proj.weight"] = (vh, 3, vision["temporal_patch_size"], patch, patch)
    for i in range(vision["depth"]):
        b = f"visual.blocks.{i}"
        shapes |= {f"{b}.norm1.weight": (vh,), f"{b}.norm2.weight": (vh,)}
        shapes |= {f"{b}.attn.qkv.weight": (3 * vh, vh), f"{b}.attn.qkv.bias": (3 * vh,)}
        shapes |= {f"{b}.attn.proj.weight": (vh, vh), f"{b}.attn.proj.bias": (vh,)}
        for proj, (o, n) in {"gate_proj": (vi, vh), "up_proj": (vi, vh), "down_proj": (vh, vi)}.items():
            shapes |= {f"{b}.mlp.{proj}.weight": (o, n), f"{b}.mlp.{proj}.bias": (o,)}
    merged = vh * vision["spatial_merge_size"] ** 2
    shapes |= {"visual.merger.ln_q.weight": (vh,)}
    shapes |= {"visual.merger.mlp.0.weight": (merged, merged), "visual.merger.mlp.0.bias": (merged,)}
    shapes |= {"visual.merger.mlp.2.weight": (vision["out_hidden_size"], merged)}
    shapes |= {"visual.merger.mlp.2.bias": (vision["out_hidden_size"],)}
    shapes["model.embed_tokens.weight"] = (config["vocab_size"], hidden)
    for i in range(config["num_hidden_layers"]):
        b = f"model.layers.{i}"
        shapes |= {f"{b}.self_attn.q_proj.weight": (hidden, hidden), f"{b}.self_attn.q_proj.bias": (hidden,)}
        shapes |= {f"{b}.self_attn.k_proj.weight": (kv, hidden), f"{b}.self_attn.k_proj.bias": (kv,)}
        shapes |= {f"{b}.self_attn.v_proj.weight": (kv, hidden), f"{b}.self_attn.v_proj.bias": (kv,)}
        shapes |= {f"{b}.self_attn.o_proj.weight": (hidden, hidden)}
        shapes |= {f"{b}.mlp.gate_proj.weight": (inter, hidden), f"{b}.mlp.up_proj.weight": (inter, hidden)}
        shapes |= {f"{b}.mlp.down_proj.weight": (hidden, inter)}
        shapes |= {f"{b}.input_layernorm.weight": (hidden,), f"{b}.post_attention_layernorm.weight": (hidden,)}
    shapes["model.norm.weight"] = (hidden,)
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (config["vocab_size"], hidden)
    shapes |= {f"audio.{name}": shape for name, shape in salmonn_audio_shapes(audio).items()}
    return shapes


def salmonn_audio_shapes(audio: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The audio tower's tensors (Whisper encoder, window Q-Former, query tokens, projection) by the names
    under ``audio.`` in a 2+ checkpoint; the original video-SALMONN 2 family renames them to its own."""
    qformer = audio["qformer_config"]
    shapes: dict[str, tuple[int, ...]] = {}
    d, ffn = audio["d_model"], audio["encoder_ffn_dim"]
    shapes |= {"conv1.weight": (d, audio["num_mel_bins"], 3), "conv1.bias": (d,)}
    shapes |= {"conv2.weight": (d, d, 3), "conv2.bias": (d,)}
    shapes["embed_positions.weight"] = (audio["max_source_positions"], d)
    for i in range(audio["encoder_layers"]):
        b = f"layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{b}.self_attn.{proj}.weight"] = (d, d)
            if proj != "k_proj":  # Whisper's key projection has no bias
                shapes[f"{b}.self_attn.{proj}.bias"] = (d,)
        shapes |= {
            f"{b}.fc1.weight": (ffn, d),
            f"{b}.fc1.bias": (ffn,),
            f"{b}.fc2.weight": (d, ffn),
            f"{b}.fc2.bias": (d,),
        }
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes |= {f"{b}.{norm}.weight": (d,), f"{b}.{norm}.bias": (d,)}
    shapes |= {"layer_norm.weight": (d,), "layer_norm.bias": (d,)}
    qh, qi, width = qformer["hidden_size"], qformer["intermediate_size"], qformer["encoder_width"]
    q = "qformer.bert"
    shapes |= {f"{q}.embeddings.LayerNorm.weight": (qh,), f"{q}.embeddings.LayerNorm.bias": (qh,)}
    for i in range(qformer["num_hidden_layers"]):
        b = f"{q}.encoder.layer.{i}"
        for attn, kv_width in (("attention", qh), ("crossattention", width)):
            shapes |= {f"{b}.{attn}.self.query.weight": (qh, qh), f"{b}.{attn}.self.query.bias": (qh,)}
            for proj in ("key", "value"):
                shapes |= {f"{b}.{attn}.self.{proj}.weight": (qh, kv_width), f"{b}.{attn}.self.{proj}.bias": (qh,)}
            shapes |= {f"{b}.{attn}.output.dense.weight": (qh, qh), f"{b}.{attn}.output.dense.bias": (qh,)}
            shapes |= {f"{b}.{attn}.output.LayerNorm.weight": (qh,), f"{b}.{attn}.output.LayerNorm.bias": (qh,)}
        shapes |= {f"{b}.intermediate_query.dense.weight": (qi, qh), f"{b}.intermediate_query.dense.bias": (qi,)}
        shapes |= {f"{b}.output_query.dense.weight": (qh, qi), f"{b}.output_query.dense.bias": (qh,)}
        shapes |= {f"{b}.output_query.LayerNorm.weight": (qh,), f"{b}.output_query.LayerNorm.bias": (qh,)}
    shapes["q_tokens"] = (1, qformer["query_length"], qh)
    shapes |= {
        "audio_proj.weight": (qformer["out_hidden_size"], qh),
        "audio_proj.bias": (qformer["out_hidden_size"],),
    }
    return shapes


def write_salmonn_weights(out_dir: Path, config: dict[str, Any], seed: int = 0) -> Path:
    """model.safetensors of seeded random weights under the authors' names (bfloat16, as they ship), plus the
    Q-Former's ``embeddings.position_ids`` buffer their checkpoints may carry. Norm weights start near 1 so
    activations stay in range; everything else is N(0, 0.02)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in salmonn_weight_shapes(config).items():
        value = torch.randn(shape, generator=generator) * 0.02
        if "norm" in name.lower() and name.endswith(".weight"):
            value += 1.0
        tensors[name] = value.to(torch.bfloat16)
    positions = config["audio_config"]["qformer_config"]["max_position_embeddings"]
    tensors["audio.qformer.bert.embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)
    path = out_dir / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def build_video_salmonn2_plus(out_dir: Path, size: str) -> None:
    """Write every file of a video-SALMONN 2+ folder of ``size`` into the existing ``out_dir``."""
    config = video_salmonn2_plus_config(size)
    write_json(out_dir / "config.json", config)
    write_qwen2_5_vl_configs(out_dir)
    write_qwen2_tokenizer_files(out_dir, _SALMONN_ADDED_TOKENS, chat_template=QWEN2_5_VL_CHAT_TEMPLATE)
    if size == "tiny":
        write_salmonn_weights(out_dir, config)
