"""Qwen2.5-Omni folders (Qwen/Qwen2.5-Omni-7B's layout): the thinker vLLM serves plus the talker and
token2wav configs it only parses, a Whisper feature extractor and the audio-aware tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.devtools.families.common import qwen_vl_processor_numbers, write_json
from worker.devtools.families.qwen2_5_vl import QWEN2_5_VL_SIZES
from worker.devtools.families.tokenizer import QWEN2_5_OMNI_ADDED_TOKENS, write_qwen2_tokenizer_files

# Verbatim from Qwen/Qwen2.5-Omni-7B (chat_template.json). Its default system message is the plain
# "You are a helpful assistant."; the "You are Qwen, a virtual human ..." prompt of the model card is
# something callers pass themselves (the card requires it for speech output, fine-tunes such as AVoCaDO
# were trained with it).
QWEN2_5_OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# "7b" is Qwen/Qwen2.5-Omni-7B. The thinker (what vLLM serves) is a Qwen2.5-VL vision tower, a
# Whisper-large-v3-style audio encoder and a Qwen2.5-7B decoder; the talker (speech tokens) and
# token2wav (DiT + BigVGAN) are only parsed. "tiny" keeps: head_dim = 2 * sum(mrope_section), vision
# out_hidden_size == audio output_dim == text hidden_size == talker embedding_size, num_mel_bins ==
# the feature extractor's feature_size, and the vision window/full-attention rules of Qwen2.5-VL.
QWEN2_5_OMNI_SIZES: dict[str, dict[str, Any]] = {
    "7b": {
        "text": {**QWEN2_5_VL_SIZES["7b"]["text"]},
        "vision": {**QWEN2_5_VL_SIZES["7b"]["vision"]},
        "audio": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120},
        "talker": {
            "hidden_size": 896,
            "intermediate_size": 18944,
            "num_hidden_layers": 24,
            "num_attention_heads": 12,
            "num_key_value_heads": 4,
            "head_dim": 128,
        },
        "dit": {"hidden_size": 1024, "num_hidden_layers": 22, "num_attention_heads": 16, "head_dim": 64},
        "bigvgan": {"upsample_initial_channel": 1536},
    },
    "tiny": {
        "text": {**QWEN2_5_VL_SIZES["tiny"]["text"]},
        "vision": {**QWEN2_5_VL_SIZES["tiny"]["vision"]},
        "audio": {"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 128},
        "talker": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "num_key_value_heads": 1,
            "head_dim": 64,
        },
        "dit": {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1, "head_dim": 64},
        "bigvgan": {"upsample_initial_channel": 64},
    },
}

_OMNI_AUDIO_TOKEN_ID = 151646
_OMNI_AUDIO_START_TOKEN_ID = 151647
_OMNI_AUDIO_END_TOKEN_ID = 151648

# Token ids the thinker and the talker configs both carry.
_SHARED_TOKEN_IDS: dict[str, int] = {
    "audio_end_token_id": _OMNI_AUDIO_END_TOKEN_ID,
    "audio_start_token_id": _OMNI_AUDIO_START_TOKEN_ID,
    "audio_token_index": _OMNI_AUDIO_TOKEN_ID,
    "image_token_index": 151655,
    "video_token_index": 151656,
    "vision_end_token_id": 151653,
    "vision_start_token_id": 151652,
    "position_id_per_seconds": 25,
    "seconds_per_chunk": 2,
}


def _omni_rope_scaling(mrope_section: list[int]) -> dict[str, Any]:
    # Hub spelling for the Omni text/talker configs: "default" rope with an mrope_section.
    return {"mrope_section": mrope_section, "rope_type": "default", "type": "default"}


def _thinker_config(dims: dict[str, Any]) -> dict[str, Any]:
    """The part vLLM serves: Qwen2.5-VL-style vision tower, Whisper-style audio encoder, Qwen2.5 decoder."""
    text, vision, audio = dims["text"], dims["vision"], dims["audio"]
    hidden = text["hidden_size"]
    return {
        "architectures": ["Qwen2OmniNaViTThinkerForConditionalGeneration"],
        "model_type": "qwen2_5_omni_thinker",
        **_SHARED_TOKEN_IDS,
        "vision_token_id": 151654,
        "bos_token_id": 151644,
        "eos_token_id": 151645,
        "pad_token_id": 151643,
        "ignore_index": -100,
        "init_std": 0.02,
        "user_token_id": 872,
        "torch_dtype": "bfloat16",
        "audio_config": {
            "model_type": "qwen2_5_omni_audio_encoder",
            "activation_dropout": 0.0,
            "activation_function": "gelu",
            "attention_dropout": 0.0,
            "d_model": audio["d_model"],
            "dropout": 0.0,
            "encoder_attention_heads": audio["encoder_attention_heads"],
            "encoder_ffn_dim": audio["encoder_ffn_dim"],
            "encoder_layerdrop": 0.0,
            "encoder_layers": audio["encoder_layers"],
            "init_std": 0.02,
            "max_source_positions": 1500,
            "n_window": 100,
            "num_hidden_layers": audio["encoder_layers"],
            # 128 mel bins, the WhisperFeatureExtractor's feature_size below.
            "num_mel_bins": 128,
            "output_dim": hidden,
            "scale_embedding": False,
            "torch_dtype": "bfloat16",
        },
        "text_config": {
            "model_type": "qwen2_5_omni_text",
            "hidden_act": "silu",
            "hidden_size": hidden,
            "init_std": 0.02,
            "intermediate_size": text["intermediate_size"],
            "max_position_embeddings": 32768,
            "max_window_layers": text["max_window_layers"],
            "num_attention_heads": text["num_attention_heads"],
            "num_hidden_layers": text["num_hidden_layers"],
            "num_key_value_heads": text["num_key_value_heads"],
            "rms_norm_eps": 1e-06,
            "rope_scaling": _omni_rope_scaling(text["mrope_section"]),
            "rope_theta": 1000000.0,
            "sliding_window": 32768,
            # The checkpoint has its own thinker.lm_head; the text config class defaults to tying.
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": text["vocab_size"],
        },
        "vision_config": {
            "model_type": "qwen2_5_omni_vision_encoder",
            "depth": vision["depth"],
            "embed_dim": vision["hidden_size"],
            "fullatt_block_indexes": vision["fullatt_block_indexes"],
            "hidden_act": "silu",
            "hidden_size": vision["hidden_size"],
            "in_channels": 3,
            "in_chans": 3,
            "intermediate_size": vision["intermediate_size"],
            "num_heads": vision["num_heads"],
            "out_hidden_size": hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
            # Omni's temporal position ids tick 25 per second (40 ms), matching position_id_per_seconds.
            "tokens_per_second": 25,
            "window_size": 112,
            "torch_dtype": "bfloat16",
        },
    }


def _talker_config(dims: dict[str, Any]) -> dict[str, Any]:
    """The speech-token decoder, parsed but not loaded by vLLM."""
    text, talker = dims["text"], dims["talker"]
    return {
        "architectures": ["Qwen2OmniTalkerForConditionalGeneration"],
        "model_type": "qwen2_5_omni_talker",
        **_SHARED_TOKEN_IDS,
        "attention_dropout": 0.0,
        "embedding_size": text["hidden_size"],
        "head_dim": talker["head_dim"],
        "hidden_act": "silu",
        "hidden_size": talker["hidden_size"],
        "init_std": 0.02,
        "initializer_range": 0.02,
        "intermediate_size": talker["intermediate_size"],
        "max_position_embeddings": 32768,
        "max_window_layers": 28,
        "num_attention_heads": talker["num_attention_heads"],
        "num_hidden_layers": talker["num_hidden_layers"],
        "num_key_value_heads": talker["num_key_value_heads"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": _omni_rope_scaling(text["mrope_section"]),
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "spatial_merge_size": 2,
        "torch_dtype": "bfloat16",
        "tts_codec_end_token_id": 8294,
        "tts_codec_mask_token_id": 8296,
        "tts_codec_pad_token_id": 8292,
        "tts_codec_start_token_id": 8293,
        "tts_text_end_token_id": 151861,
        "tts_text_pad_token_id": 151859,
        "tts_text_start_token_id": 151860,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 8448,
    }


def _token2wav_config(dims: dict[str, Any]) -> dict[str, Any]:
    """The DiT + BigVGAN vocoder, parsed but not loaded by vLLM."""
    return {
        "model_type": "qwen2_5_omni_token2wav",
        "dit_config": {
            "model_type": "qwen2_5_omni_dit",
            **dims["dit"],
            "block_size": 24,
            "dropout": 0.1,
            "emb_dim": 512,
            "enc_attention_channels": 64,
            "enc_channels": [256, 256, 256, 256, 768],
            "enc_dilations": [1, 2, 3, 4, 1],
            "enc_dim": 128,
            "enc_emb_dim": 192,
            "enc_kernel_sizes": [5, 3, 3, 3, 1],
            "enc_res2net_scale": 2,
            "enc_se_channels": 64,
            "ff_mult": 2,
            "look_ahead_layers": [10],
            "look_backward_layers": [0, 20],
            "max_position_embeddings": 32768,
            "mel_dim": 80,
            "num_embeds": 8193,
            "repeats": 2,
        },
        "bigvgan_config": {
            "model_type": "qwen2_5_omni_bigvgan",
            "mel_dim": 80,
            "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
            "resblock_kernel_sizes": [3, 7, 11],
            "upsample_initial_channel": dims["bigvgan"]["upsample_initial_channel"],
            "upsample_kernel_sizes": [11, 7, 4, 4, 4, 4],
            "upsample_rates": [5, 3, 2, 2, 2, 2],
        },
    }


def qwen2_5_omni_config(size: str) -> dict[str, Any]:
    """config.json of Qwen2.5-Omni: thinker_config (audio/vision/text), talker_config, token2wav_config.

    The hub file is transformers' verbose dump of every config default (about 15 KB); this keeps the keys
    the parsing reads, with the hub's spellings (``*_token_index``, ``rope_scaling`` with ``type``).
    """
    dims = QWEN2_5_OMNI_SIZES[size]
    return {
        "architectures": ["Qwen2_5OmniModel"],
        "enable_audio_output": True,
        "enable_talker": True,
        "model_type": "qwen2_5_omni",
        "talker_config": _talker_config(dims),
        "thinker_config": _thinker_config(dims),
        "token2wav_config": _token2wav_config(dims),
        "torch_dtype": "bfloat16",
        "transformers_version": "4.50.0.dev0",
    }


# Whisper-large-v3 front end of Qwen2.5-Omni: 128 mel bins of 25 ms windows every 10 ms at 16 kHz,
# padded to (at most) 300 s per audio.
_WHISPER_FEATURE_EXTRACTOR: dict[str, Any] = {
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "sampling_rate": 16000,
    "hop_length": 160,
    "n_fft": 400,
    "chunk_length": 300,
    "n_samples": 4800000,
    "nb_max_frames": 30000,
    "dither": 0.0,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": True,
}

# Model-specific token names in Qwen2.5-Omni's tokenizer_config.json; Qwen2_5OmniProcessor reads them
# from the tokenizer (tokenizer.audio_token, ...) and fails without them.
_QWEN2_5_OMNI_NAMED_TOKENS: dict[str, str] = {
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "audio_token": "<|AUDIO|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}


def build_qwen2_5_omni(out_dir: Path, size: str) -> None:
    """Write every file of a Qwen2.5-Omni folder of ``size`` into the existing ``out_dir``."""
    write_json(out_dir / "config.json", qwen2_5_omni_config(size))
    # The hub file carries no sampling defaults (transformers/vLLM defaults apply) and no eos list.
    write_json(out_dir / "generation_config.json", {"_from_model_config": True, "transformers_version": "4.50.0.dev0"})
    write_json(
        out_dir / "preprocessor_config.json",
        {
            **qwen_vl_processor_numbers(),
            "image_processor_type": "Qwen2VLImageProcessor",
            **_WHISPER_FEATURE_EXTRACTOR,
            "processor_class": "Qwen2_5OmniProcessor",
        },
    )
    write_json(
        out_dir / "video_preprocessor_config.json",
        {
            **qwen_vl_processor_numbers(),
            "video_processor_type": "Qwen2VLVideoProcessor",
            "processor_class": "Qwen2_5OmniProcessor",
        },
    )
    write_qwen2_tokenizer_files(
        out_dir,
        QWEN2_5_OMNI_ADDED_TOKENS,
        chat_template=QWEN2_5_OMNI_CHAT_TEMPLATE,
        model_max_length=32768,
        named_tokens=_QWEN2_5_OMNI_NAMED_TOKENS,
    )
