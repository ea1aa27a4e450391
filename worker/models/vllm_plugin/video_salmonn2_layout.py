"""The original video-SALMONN 2's (tsinghua-ee/video-SALMONN-2) sizes, tensor names and prompt layout as pure
functions that both the plugin and the worker's adapter count with (its config class: video_salmonn2_config).

The authors (bytedance/video-SALMONN-2, ``llava/``) save a flat Qwen2 config (model_type "video_salmonn_2",
architecture "VideoSALMONN2ForCausalLM") plus LLaVA keys; the vision tower's sizes are not in it (their
SigLIP tower hard-codes ``SigLipVisionConfig()``: so400m-patch14-384), nor are Whisper's (taken from
``whisper_path``) or the Q-Former's (bert-base-uncased, 2 layers). Those defaults live here; the worker's
tiny test folders alone add ``vision_config``/``whisper_config``/``qformer_config`` to shrink them. How the
model runs follows the authors' scripts/eval.sh with scripts/run.sh, whose flags overwrite the config at
load: max-pooling stride 2 after the projector, one newline per row of a frame, time tokens, Q-Former
windows of 0.5 s and the final linear head. No vLLM, transformers or torch import: the adapter loads this in
the worker process, which must not import torch before its caches are set (tests/test_compile_cache.py).
"""

from __future__ import annotations

import math
from typing import Any

ARCHITECTURE = "VideoSALMONN2ForCausalLM"
MODEL_TYPE = "video_salmonn_2"
# The authors' prompt marks the video with "<image>" (their IMAGE_TOKEN_INDEX, -200, outside any vocabulary);
# vLLM needs a real id: the first row past Qwen2's specials, which LLaVA-OneVision calls image_token_index.
PLACEHOLDER = "<image>"
DEFAULT_PLACEHOLDER_ID = 151646

# SigLipVisionConfig() of llava/model/multimodal_encoder/siglip_encoder_flash.py (so400m-patch14-384); the
# authors drop its last layer and take the last remaining layer's output, without the post-layernorm.
SIGLIP_SO400M: dict[str, Any] = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
# openai/whisper-large-v3's encoder (scripts/run.sh WHISPER_PATH).
WHISPER_LARGE_V3: dict[str, Any] = {
    "d_model": 1280,
    "encoder_layers": 32,
    "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "num_mel_bins": 128,
    "max_source_positions": 1500,
    "activation_function": "gelu",
    "scale_embedding": False,
}
# init_speech_Qformer: bert-base-uncased cut to 2 layers, cross-attention in each, one query per window.
QFORMER_BERT_BASE: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 2,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "cross_attention_freq": 1,
    "query_length": 1,
}
# scripts/eval.sh + scripts/run.sh: --winqf_second 0.5, POOLING_STRIDE 2, --add_time_token.
SECOND_PER_WINDOW = 0.5
POOL_STRIDE = 2
# Encoder frames per second of sound the authors assume when they split it at the video's end (50 = 1500/30 s).
AUDIO_FRAMES_PER_SECOND = 50
# Rows of their sinusoidal piece positions (sinusoidal_position(200, ...)): at most 200 pieces of 30 s.
MAX_AUDIO_PIECES = 200

def frame_tokens(image_size: int = 384, patch_size: int = 14) -> int:
    """Tokens of one frame: the patch grid max-pooled by 2 (floor: 27 -> 13), each row closed by the
    newline embedding (13 x 14 = 182 for so400m-384)."""
    side = (image_size // patch_size) // POOL_STRIDE
    return side * (side + 1)


def time_strings(real_time: float, num_frames: int) -> list[str]:
    """The time token text after each frame: frame k of n at round(real_time / n * k, 1) seconds, k from 1."""
    step = real_time / num_frames
    return [str(round(step * k, 1)) for k in range(1, num_frames + 1)]


def audio_tokens_per_piece() -> int:
    """Q-Former windows of 0.5 s over 1500 encoder frames of a 30 s piece: 60."""
    kernel = round(1500 * SECOND_PER_WINDOW / 30.0)
    return (1500 - kernel) // kernel + 1


def audio_pieces(num_samples: int, sample_rate: int = 16_000) -> int:
    """30 s pieces of the sound (padded to at least 1 s first, as the authors' loader does)."""
    if num_samples <= 0:
        return 0
    return math.ceil(max(num_samples, sample_rate) / (30 * sample_rate))


def audio_split(num_frames: int, real_time: float, num_audio: int) -> tuple[int, int, int]:
    """(front, per_frame, back): the first round(real_time * 50) audio tokens (at most all) are stretched
    by nearest-neighbour interpolation up to a multiple of the frames and spread over them, per_frame after
    each frame; the ``back`` rest follows the last frame."""
    front = min(round(real_time * AUDIO_FRAMES_PER_SECOND), num_audio)
    per_frame = math.ceil(front / num_frames)
    return front, per_frame, num_audio - front


def video_token_count(
    num_frames: int, real_time: float, num_audio: int, time_lengths: list[int] | None, per_frame_visual: int
) -> int:
    """Embeddings that replace the one placeholder: with sound, each frame's rows then its audio tokens, then
    the rest of the sound (no time tokens: the authors drop them on this path); without, each frame's rows
    then its time tokens, zero-padded to the longest."""
    if num_audio:
        _, per_frame, back = audio_split(num_frames, real_time, num_audio)
        return num_frames * (per_frame_visual + per_frame) + back
    longest = max(time_lengths) if time_lengths else 0
    return num_frames * (per_frame_visual + longest)


# The release's tensor names (the authors' module tree) and vLLM's, most specific first.
WEIGHT_PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.vision_tower.vision_tower.", "vision_tower."),
    ("model.mm_projector.0.", "multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "multi_modal_projector.linear_2."),
    ("model.image_newline", "image_newline"),
    ("model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
    ("speech_encoder.", "audio."),
    ("ln_speech.", "audio.frames_norm."),
    ("speech_Qformer.", "audio.qformer."),
    ("speech_query_tokens", "audio.q_tokens"),
    ("speech_llama_proj.", "audio.audio_proj."),
    ("final_linear.", "audio.out_head."),
)


def vllm_weight_name(name: str) -> str:
    """vLLM's name for the release's tensor ``name``; ValueError for a name outside the release's layout."""
    for source, target in WEIGHT_PREFIXES:
        if name.startswith(source):
            return target + name[len(source) :]
    raise ValueError(f"unexpected tensor {name!r} in a video-SALMONN 2 checkpoint")


def tokenize_prompt(tokenizer: Any, prompt: str, placeholder_id: int) -> list[int]:
    """The prompt's ids as the authors' ``preprocess_qwen`` builds them: the placeholder is one id, and the
    newline right after it is tokenized on its own (they join ``nl_tokens`` and the rest's tokens)."""
    head, found, tail = prompt.partition(PLACEHOLDER)
    ids = list(tokenizer.encode(head, add_special_tokens=False))
    if not found:
        return ids
    ids.append(placeholder_id)
    if tail.startswith("\n"):
        ids += tokenizer.encode("\n", add_special_tokens=False)
        tail = tail[1:]
    return ids + list(tokenizer.encode(tail, add_special_tokens=False))


__all__ = [
    "ARCHITECTURE",
    "MODEL_TYPE",
    "PLACEHOLDER",
    "audio_pieces",
    "audio_split",
    "audio_tokens_per_piece",
    "frame_tokens",
    "time_strings",
    "tokenize_prompt",
    "video_token_count",
    "vllm_weight_name",
]
