"""Model FLOPs of one captioned video, for the benches' model FLOP utilisation (MFU): how much of the GPU's
dense peak the measured throughput uses (issue 21, "engine ceiling"). An estimate in the usual way, not a
count of the kernels vLLM runs: 2 FLOPs per weight per token for every matrix multiply, plus the attention
scores and their weighted sum (4 FLOPs per query-key pair and head dimension); norms, activations, rotary
embeddings and sampling are left out (well under 1%). Hand-written: no library computes this for vLLM's
multimodal prefill + decode shape."""

from __future__ import annotations

from dataclasses import dataclass

# NVIDIA H200 SXM (the same tensor cores as the H100 SXM): dense BF16, without sparsity.
H200_BF16_DENSE_FLOPS = 989.4e12


@dataclass(frozen=True)
class TextShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int  # SwiGLU: gate, up and down projections
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def weights_per_token(self) -> int:
        """Weights every token multiplies through: the attention and MLP projections of each layer."""
        kv = self.kv_heads * self.head_dim
        attention = self.hidden * (self.hidden + 2 * kv) + self.hidden * self.hidden
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attention + mlp)


@dataclass(frozen=True)
class VisionShape:
    """A Qwen2.5-VL-style ViT: patches of ``patch`` pixels over ``temporal_patch`` frames, merged
    ``merge``×``merge`` into one LM token; windowed attention except in ``full_attention_layers``."""

    layers: int
    hidden: int
    intermediate: int
    out_hidden: int  # the LM's hidden size
    patch: int = 14
    temporal_patch: int = 2
    merge: int = 2
    window_patches: int = 64  # 112-pixel windows of 14-pixel patches
    full_attention_layers: int = 4

    def weights_per_patch(self) -> int:
        embed = 3 * self.temporal_patch * self.patch * self.patch * self.hidden
        layer = 4 * self.hidden * self.hidden + 3 * self.hidden * self.intermediate
        merged = self.hidden * self.merge**2  # the merger's MLP, per merged token, spread over its patches
        merger = (merged * merged + merged * self.out_hidden) // self.merge**2
        return embed + self.layers * layer + merger


@dataclass(frozen=True)
class ModelShape:
    text: TextShape
    vision: VisionShape


# Qwen2.5-VL-7B-Instruct's config.json (the dummy models of the benches have its shape).
QWEN2_5_VL_7B = ModelShape(
    text=TextShape(layers=28, hidden=3584, heads=28, kv_heads=4, intermediate=18944, vocab=152064),
    vision=VisionShape(layers=32, hidden=1280, intermediate=3420, out_hidden=3584),
)


def attention_pairs(prompt_tokens: int, output_tokens: int) -> int:
    """Query-key pairs of causal attention over a prompt prefilled at once and ``output_tokens`` decoded
    one by one after it (the last output token is sampled, never fed back)."""
    prefill = prompt_tokens * (prompt_tokens + 1) // 2
    fed_back = max(0, output_tokens - 1)
    decode = fed_back * prompt_tokens + fed_back * (fed_back + 1) // 2
    return prefill + decode


def text_flops(shape: TextShape, prompt_tokens: int, output_tokens: int) -> float:
    """The language model's FLOPs for one request: every prompt token and every fed-back output token
    through the layers, the LM head only where a token is sampled (vLLM computes no other logits), plus
    attention."""
    tokens = prompt_tokens + max(0, output_tokens - 1)
    matmul = 2 * shape.weights_per_token() * tokens + 2 * shape.hidden * shape.vocab * output_tokens
    attention = 4 * shape.layers * shape.heads * shape.head_dim * attention_pairs(prompt_tokens, output_tokens)
    return float(matmul + attention)


def vision_flops(shape: VisionShape, visual_tokens: int, groups: int) -> float:
    """The vision encoder's FLOPs for ``visual_tokens`` LM tokens from ``groups`` temporal patch groups
    (frames / temporal_patch): windowed attention within windows, full attention within each group."""
    if visual_tokens <= 0:
        return 0.0
    patches = visual_tokens * shape.merge**2
    per_group = patches / max(1, groups)
    window = min(shape.window_patches, per_group)
    windowed = shape.layers - shape.full_attention_layers
    pairs = patches * (windowed * window + shape.full_attention_layers * per_group)
    return float(2 * shape.weights_per_patch() * patches + 4 * shape.hidden * pairs)


def video_flops(shape: ModelShape, prompt_tokens: int, output_tokens: int, visual_tokens: int, frames: int) -> float:
    """FLOPs of one caption: the encoder on the video's frames, then the LM's prefill and decode."""
    groups = max(1, -(-frames // shape.vision.temporal_patch))
    return vision_flops(shape.vision, visual_tokens, groups) + text_flops(shape.text, prompt_tokens, output_tokens)


def mfu(videos_per_s: float, flops_per_video: float, peak_flops: float = H200_BF16_DENSE_FLOPS) -> float:
    """Model FLOP utilisation: the FLOPs the throughput implies over the device's peak."""
    return videos_per_s * flops_per_video / peak_flops
