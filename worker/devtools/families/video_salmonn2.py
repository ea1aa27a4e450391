"""The original video-SALMONN 2 folders (tsinghua-ee/video-SALMONN-2: LLaVA-OneVision-Qwen2-7B with a
Whisper-large-v3 encoder and a window Q-Former, bytedance/video-SALMONN-2 ``llava/``), laid out as the
authors' ``VideoSALMONN2ForCausalLM.save_pretrained`` writes them: a flat Qwen2 config with the LLaVA keys
and the training run's ``model_args``, tensors under their module names (``model.vision_tower.vision_tower.
vision_model.*``, ``model.mm_projector.{0,2}``, ``model.image_newline``, ``speech_encoder.*``, ``ln_speech``,
``speech_Qformer.bert.*``, ``speech_query_tokens``, ``speech_llama_proj``, ``final_linear.{0,2}``). The tiny
folder alone adds ``vision_config``/``whisper_config``/``qformer_config`` (the release takes those sizes
from SigLIP-so400m, Whisper-large-v3 and bert-base) and carries seeded random weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.devtools.families.common import write_json
from worker.devtools.families.qwen2_5_vl import QWEN2_5_VL_CHAT_TEMPLATE
from worker.devtools.families.tokenizer import write_qwen2_tokenizer_files
from worker.devtools.families.video_salmonn2_plus import salmonn_audio_shapes

# Qwen2-7B-Instruct's tokenizer as LLaVA-OneVision ships it: three specials, <|im_start|>/<|im_end|> listed as
# additional special tokens (the authors' preprocess_qwen unpacks exactly those two).
_ADDED_TOKENS = (("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True))

VIDEO_SALMONN2_SIZES: dict[str, dict[str, Any]] = {
    # lmms-lab/llava-onevision-qwen2-7b-ov's language model; the towers are the release's defaults.
    "7b": {
        "text": {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
        },
        "vision": None,
        "whisper": None,
        "qformer": None,
    },
    # head_dim 64 (vLLM's CPU attention); the SigLIP grid stays 384 / 14 = 27 (the authors assert 729 patches).
    "tiny": {
        "text": {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "vocab_size": 151936,
        },
        "vision": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3, "num_attention_heads": 2},
        "whisper": {"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 128},
        "qformer": {"hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128},
    },
}

# scripts/run.sh and scripts/eval.sh (the flags a training run saves into config.json).
_MODEL_ARGS: dict[str, Any] = {
    "version": "qwen_1_5",
    "vision_tower": "google/siglip-so400m-patch14-384",
    "mm_vision_select_layer": -2,
    "mm_projector_type": "mlp2x_gelu",
    "mm_use_im_start_end": False,
    "mm_use_im_patch_token": False,
    "mm_patch_merge_type": "spatial_unpad",
    "mm_spatial_pool_stride": 2,
    "mm_spatial_pool_mode": "max",
    "mm_spatial_pool_out_channels": 1152,
    "mm_pooling_position": "after",
    "mm_newline_position": "grid",
    "audio_visual": True,
    "whisper_path": "openai/whisper-large-v3",
    "num_speech_query_token": 1,
    "window_level_Qformer": True,
    "second_per_window": 0.5,
    "second_stride": 0.5,
    "use_final_linear": True,
    "add_time_token": True,
}


def video_salmonn2_config(size: str) -> dict[str, Any]:
    dims = VIDEO_SALMONN2_SIZES[size]
    text = dims["text"]
    config: dict[str, Any] = {
        "architectures": ["VideoSALMONN2ForCausalLM"],
        "model_type": "video_salmonn_2",
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": 32768,
        "max_window_layers": text["num_hidden_layers"],
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "sliding_window": 131072,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        **text,
        "image_token_index": 151646,
        "mm_vision_tower": "google/siglip-so400m-patch14-384",
        "mm_hidden_size": 1152 if dims["vision"] is None else dims["vision"]["hidden_size"],
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "mm_patch_merge_type": "spatial_unpad",
        "mm_newline_position": "grid",
        "mm_spatial_pool_stride": 2,
        "mm_spatial_pool_mode": "max",
        "mm_pooling_position": "after",
        "mm_tunable_parts": "mm_vision_tower,mm_mlp_adapter,mm_language_model",
        "image_aspect_ratio": "anyres",
        "image_grid_pinpoints": [[384, 768], [768, 384], [768, 768], [1152, 384], [384, 1152]],
        "image_crop_resolution": 224,
        "image_split_resolution": 224,
        "tokenizer_model_max_length": 32768,
        "tokenizer_padding_side": "right",
        "use_mm_proj": True,
        "add_time_token": True,
        "model_args": _MODEL_ARGS,
    }
    if dims["vision"] is not None:
        config["vision_config"] = dims["vision"] | {"image_size": 384, "patch_size": 14}
        config["whisper_config"] = dims["whisper"]
        config["qformer_config"] = dims["qformer"]
    return config


def weight_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of the authors' state_dict, by name, with its shape."""
    from worker.models.vllm_plugin.video_salmonn2_config import VideoSalmonn2Config

    cfg = VideoSalmonn2Config(**config)
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    kv = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (config["vocab_size"], hidden)}
    for i in range(config["num_hidden_layers"]):
        b = f"model.layers.{i}"
        for proj, out in (("q_proj", hidden), ("k_proj", kv), ("v_proj", kv)):
            shapes |= {f"{b}.self_attn.{proj}.weight": (out, hidden), f"{b}.self_attn.{proj}.bias": (out,)}
        shapes[f"{b}.self_attn.o_proj.weight"] = (hidden, hidden)
        shapes |= {f"{b}.mlp.gate_proj.weight": (inter, hidden), f"{b}.mlp.up_proj.weight": (inter, hidden)}
        shapes |= {f"{b}.mlp.down_proj.weight": (hidden, inter)}
        shapes |= {f"{b}.input_layernorm.weight": (hidden,), f"{b}.post_attention_layernorm.weight": (hidden,)}
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (config["vocab_size"], hidden)
    vision = cfg.vision_config
    vh, vi, patch = vision.hidden_size, vision.intermediate_size, vision.patch_size
    v = "model.vision_tower.vision_tower.vision_model"
    shapes[f"{v}.embeddings.patch_embedding.weight"] = (vh, 3, patch, patch)
    shapes[f"{v}.embeddings.patch_embedding.bias"] = (vh,)
    shapes[f"{v}.embeddings.position_embedding.weight"] = ((vision.image_size // patch) ** 2, vh)
    for i in range(vision.num_hidden_layers - 1):  # the authors delete the last layer before saving
        b = f"{v}.encoder.layers.{i}"
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            shapes |= {f"{b}.self_attn.{proj}.weight": (vh, vh), f"{b}.self_attn.{proj}.bias": (vh,)}
        for norm in ("layer_norm1", "layer_norm2"):
            shapes |= {f"{b}.{norm}.weight": (vh,), f"{b}.{norm}.bias": (vh,)}
        shapes |= {f"{b}.mlp.fc1.weight": (vi, vh), f"{b}.mlp.fc1.bias": (vi,)}
        shapes |= {f"{b}.mlp.fc2.weight": (vh, vi), f"{b}.mlp.fc2.bias": (vh,)}
    shapes |= {f"{v}.post_layernorm.weight": (vh,), f"{v}.post_layernorm.bias": (vh,)}
    shapes |= {"model.mm_projector.0.weight": (hidden, vh), "model.mm_projector.0.bias": (hidden,)}
    shapes |= {"model.mm_projector.2.weight": (hidden, hidden), "model.mm_projector.2.bias": (hidden,)}
    shapes["model.image_newline"] = (hidden,)
    whisper, qformer = cfg.whisper(), cfg.qformer()
    audio = whisper | {"qformer_config": qformer | {"encoder_width": whisper["d_model"], "out_hidden_size": hidden}}
    renames = {"qformer.": "speech_Qformer.", "q_tokens": "speech_query_tokens", "audio_proj.": "speech_llama_proj."}
    for name, shape in salmonn_audio_shapes(audio).items():
        prefix = next((p for p in renames if name.startswith(p)), None)
        shapes[renames[prefix] + name[len(prefix) :] if prefix else "speech_encoder." + name] = shape
    d = whisper["d_model"]
    shapes |= {"ln_speech.weight": (d,), "ln_speech.bias": (d,)}
    for i in (0, 2):
        shapes |= {f"final_linear.{i}.weight": (hidden, hidden), f"final_linear.{i}.bias": (hidden,)}
    return shapes


def write_weights(out_dir: Path, config: dict[str, Any], seed: int = 0) -> None:
    """model-0000{1,2}-of-00002.safetensors with an index, as save_pretrained shards (bfloat16, as they
    ship), plus the Q-Former's persistent ``embeddings.position_ids`` buffer. Norm scales start near 1; the
    rest is N(0, 0.2), wide enough that greedy decoding of the tiny model does not settle on one token."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in weight_shapes(config).items():
        value = torch.randn(shape, generator=generator) * 0.2
        if "norm" in name.lower() and name.endswith(".weight"):
            value += 1.0
        tensors[name] = value.to(torch.bfloat16)
    tensors["speech_Qformer.bert.embeddings.position_ids"] = torch.arange(512).unsqueeze(0)
    names = sorted(tensors)
    half = len(names) // 2
    files = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    weight_map: dict[str, str] = {}
    total = 0
    for file, part in zip(files, (names[:half], names[half:]), strict=True):
        save_file({n: tensors[n].contiguous() for n in part}, str(out_dir / file), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, file)
        total += sum(tensors[n].numel() * tensors[n].element_size() for n in part)
    write_json(out_dir / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


def build_video_salmonn2(out_dir: Path, size: str) -> None:
    """Write every file of an original video-SALMONN 2 folder of ``size`` into the existing ``out_dir``."""
    config = video_salmonn2_config(size)
    write_json(out_dir / "config.json", config)
    write_json(out_dir / "generation_config.json", {"bos_token_id": 151643, "eos_token_id": 151645})
    write_qwen2_tokenizer_files(out_dir, _ADDED_TOKENS, chat_template=QWEN2_5_VL_CHAT_TEMPLATE, model_max_length=32768)
    if size == "tiny":
        write_weights(out_dir, config)
