"""video-SALMONN 2+'s audio tower: vLLM's Whisper encoder, then a window Q-Former of ours.

Per 30 s piece: log-mel (128 x 3000) -> Whisper encoder (1500 x 1280, final ``layer_norm``) -> windows of
25 frames (0.5 s) -> per window the Q-Former's learned queries (LayerNorm'd) self-attend, cross-attend to
the window, then the query feed-forward -> ``audio_proj`` to the LLM width. The module tree mirrors the
checkpoint's names (``qformer.bert.encoder.layer.N.crossattention.self.key`` ...), so its weights load by
name. The Q-Former is written here because neither vLLM nor transformers has one with BLIP-2's
query-only layers (``intermediate_query`` / ``output_query``) and a cross-attention width of 1280.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import WhisperConfig

from worker.models.vllm_plugin.salmonn_layout import ENCODER_FRAMES_PER_PIECE, window_frames


def as_dict(config: Any) -> dict[str, Any]:
    """transformers hands unknown sub-configs over as plain dicts, known ones as config objects."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return dict(config)
    return config.to_dict()


class _Attention(nn.Module):
    """BERT attention: ``self.{query,key,value}`` then ``output.{dense,LayerNorm}`` with the residual."""

    def __init__(self, hidden: int, heads: int, kv_width: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.self = nn.Module()
        self.self.query = nn.Linear(hidden, hidden)
        self.self.key = nn.Linear(kv_width, hidden)
        self.self.value = nn.Linear(kv_width, hidden)
        self.output = nn.Module()
        self.output.dense = nn.Linear(hidden, hidden)
        self.output.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, q_len, width = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, t.shape[1], self.heads, width // self.heads).transpose(1, 2)

        q = heads(self.self.query(x))
        k = heads(self.self.key(context))
        v = heads(self.self.value(context))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, q_len, width)
        return self.output.LayerNorm(self.output.dense(out) + x)


class _FeedForward(nn.Module):
    def __init__(self, width_in: int, width_out: int, eps: float | None) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, width_out)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(width_out, eps=eps)


class _QFormerLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int, encoder_width: int, eps: float) -> None:
        super().__init__()
        self.attention = _Attention(hidden, heads, hidden, eps)
        self.crossattention = _Attention(hidden, heads, encoder_width, eps)
        self.intermediate_query = _FeedForward(hidden, ffn, None)
        self.output_query = _FeedForward(ffn, hidden, eps)

    def forward(self, queries: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        queries = self.attention(queries, queries)
        queries = self.crossattention(queries, window)
        hidden = F.gelu(self.intermediate_query.dense(queries))
        return self.output_query.LayerNorm(self.output_query.dense(hidden) + queries)


class WindowQFormer(nn.Module):
    """``qformer.bert``: embeddings.LayerNorm over the queries, then the layers (cross-attention in each)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__()
        hidden = int(config.get("hidden_size", 3072))
        eps = float(config.get("layer_norm_eps", 1e-12))
        if config.get("hidden_act", "gelu") != "gelu" or int(config.get("cross_attention_freq", 1)) != 1:
            raise ValueError("the window Q-Former supports gelu and cross-attention in every layer only")
        self.bert = nn.Module()
        self.bert.embeddings = nn.Module()
        self.bert.embeddings.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.bert.encoder = nn.Module()
        self.bert.encoder.layer = nn.ModuleList(
            _QFormerLayer(
                hidden,
                int(config.get("num_attention_heads", 12)),
                int(config.get("intermediate_size", 12288)),
                int(config.get("encoder_width", 1280)),
                eps,
            )
            for _ in range(int(config.get("num_hidden_layers", 2)))
        )

    def forward(self, queries: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        queries = self.bert.embeddings.LayerNorm(queries)
        for layer in self.bert.encoder.layer:
            queries = layer(queries, windows)
        return queries


class SalmonnAudioTower(nn.Module):
    """``audio.*``: Whisper encoder (vLLM's), Q-Former, ``q_tokens`` and ``audio_proj``."""

    def __init__(self, vllm_config: Any, audio_config: Any, out_hidden_size: int, prefix: str = "audio") -> None:
        super().__init__()
        from vllm.model_executor.models.whisper import WhisperEncoder

        raw = as_dict(audio_config)
        qformer = as_dict(raw.get("qformer_config"))
        whisper = WhisperConfig(**{k: v for k, v in raw.items() if k != "qformer_config"})
        # Learned positions, loaded from the checkpoint (vLLM starts them as sinusoids).
        whisper.pos_embed = "learned"
        self.encoder = WhisperEncoder(vllm_config=vllm_config.with_hf_config(whisper), prefix=prefix)
        self.kernel = window_frames(float(raw.get("second_per_window", 0.5)))
        self.stride = window_frames(float(raw.get("second_stride", 0.5)))
        hidden = int(qformer.get("hidden_size", 3072))
        self.qformer = WindowQFormer(qformer)
        self.q_tokens = nn.Parameter(torch.zeros(1, int(qformer.get("query_length", 1)), hidden))
        self.audio_proj = nn.Linear(hidden, int(qformer.get("out_hidden_size") or out_hidden_size))
        # Steps the original video-SALMONN 2 adds around the same tower (its plugin sets them): a norm over
        # the encoder frames before the windows (``ln_speech``) and a head after ``audio_proj``
        # (``final_linear``). Identities here, without parameters, so 2+ checkpoints load as before.
        self.frames_norm: nn.Module = nn.Identity()
        self.out_head: nn.Module = nn.Identity()

    @property
    def tokens_per_piece(self) -> int:
        return ((ENCODER_FRAMES_PER_PIECE - self.kernel) // self.stride + 1) * self.q_tokens.shape[1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(pieces, 128, 3000) log-mel -> (pieces * tokens_per_piece, out_hidden) audio embeddings."""
        features = features.to(self.q_tokens.dtype)
        frames = self.frames_norm(self.encoder([features]))  # (pieces, 1500, d_model), after the final layer_norm
        width = frames.shape[-1]
        windows = frames.unfold(1, self.kernel, self.stride)  # (pieces, n_windows, width, kernel)
        windows = windows.permute(0, 1, 3, 2).reshape(-1, self.kernel, width)
        queries = self.q_tokens.expand(windows.shape[0], -1, -1)
        out = self.out_head(self.audio_proj(self.qformer(queries, windows)))
        return out.reshape(-1, out.shape[-1])

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Strict: every checkpoint name must map to a parameter (only the Q-Former's saved
        ``embeddings.position_ids`` buffer is skipped). Whisper's separate q/k/v become vLLM's packed
        ``qkv_proj`` (k has no bias: zeros), ``fc1``/``fc2`` live under ``mlp``."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            if name.endswith("embeddings.position_ids"):
                continue
            target, shard = name, None
            if not name.startswith(("qformer.", "q_tokens", "audio_proj.", "frames_norm.", "out_head.")):
                target = "encoder." + name
                for proj, shard_id in (
                    (".self_attn.q_proj.", "q"),
                    (".self_attn.k_proj.", "k"),
                    (".self_attn.v_proj.", "v"),
                ):
                    if proj in target:
                        target, shard = target.replace(proj, ".self_attn.qkv_proj."), shard_id
                target = target.replace(".fc1.", ".mlp.fc1.").replace(".fc2.", ".mlp.fc2.")
            if target not in params:
                raise ValueError(f"audio weight {name!r} matches no parameter of the audio tower")
            param = params[target]
            loader = getattr(param, "weight_loader", None)
            if shard is not None:
                loader(param, tensor, shard)
                if shard == "k" and name.endswith(".weight"):
                    bias_name = target[: -len("weight")] + "bias"
                    bias = params[bias_name]
                    bias.weight_loader(bias, torch.zeros(tensor.shape[0], dtype=tensor.dtype), "k")
                    loaded.add(bias_name)
            elif loader is not None:
                loader(param, tensor)
            else:
                if param.shape != tensor.shape:
                    raise ValueError(
                        f"audio weight {name!r} has shape {tuple(tensor.shape)}, want {tuple(param.shape)}"
                    )
                with torch.no_grad():
                    param.copy_(tensor)
            loaded.add(target)
        return loaded
