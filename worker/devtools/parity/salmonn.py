"""video-SALMONN 2+ reference for parity (issue 17): the authors' model code (bytedance/video-SALMONN-2,
``video_SALMONN2_plus``), ported to what transformers 5.17 can run. Their code pins transformers 4.51 and
cannot be imported here; it is Qwen2.5-VL's with three additions, and only those are ported:

- the prompt (``qwenvl/data/dataset.py``: ``generate_id_target``, ``split_into_groups``): their plain chat
  template with the default system turn, ``<video>`` replaced by ``<|vision_start|>``, then per temporal
  step its ``<|video_pad|>`` tokens followed by that step's ``<|audio_pad|>`` tokens, ``<|vision_end|>``;
  the prompt ends with the assistant's ``<|im_start|>assistant\\n`` (their run_test cut: the assistant
  turn's first 3 tokens with Qwen's tokenizer);
- the audio tower (``qwenvl/model/modeling_whisper.py``): Whisper's encoder over 30 s pieces, then a window
  Q-Former (one query per 0.5 s window) and a projection;
- the M-RoPE positions (``video_SALMONN2_plus.get_rope_index``): frame step t at ``int(t * s * 2)``, audio
  token k at (k, 0, k), the text after the block from the block's largest *time* index + 1, and the decode
  steps at prompt length + (largest index + 1 - prompt length).

The vision tower and the language model are transformers 5.17's Qwen2.5-VL (the authors' are copies of
4.51's), in float32 with sdpa instead of their bfloat16 and flash-attention. ``positions="published"``
computes the positions as their inference.py really runs: it drops ``audio_lengths`` and
``second_per_grid_ts`` before ``generate``, so the model places the interleaved block as a plain video at
1 s per frame pair (docs/correctness.md).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from worker.devtools.parity.records import Media, SideRun, Step
from worker.devtools.parity.reference import REFERENCES, Reference

FAMILY = "video_salmonn2_plus"
SYSTEM = "You are a helpful assistant."
PIECE = 30 * 16_000


# ---- the audio tower (modeling_whisper.py's WhisperEncoder.forward with its Q-Former) -------------------


def _layer_norm(x: torch.Tensor, w: dict[str, torch.Tensor], name: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], eps)


def _linear(x: torch.Tensor, w: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def _attention(
    q_in: torch.Tensor, kv_in: torch.Tensor, w: dict[str, torch.Tensor], name: str, heads: int, eps: float
) -> torch.Tensor:
    """BERT attention with explicit softmax(QK^T / sqrt(d)) V, then dense + residual + LayerNorm."""
    b, n, width = q_in.shape
    d = width // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, t.shape[1], heads, d).permute(0, 2, 1, 3)

    q = split(_linear(q_in, w, f"{name}.self.query"))
    k = split(_linear(kv_in, w, f"{name}.self.key"))
    v = split(_linear(kv_in, w, f"{name}.self.value"))
    probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    ctx = (probs @ v).permute(0, 2, 1, 3).reshape(b, n, width)
    return _layer_norm(_linear(ctx, w, f"{name}.output.dense") + q_in, w, f"{name}.output.LayerNorm", eps)


def audio_tower(mel: torch.Tensor, weights: dict[str, torch.Tensor], audio_config: dict[str, Any]) -> torch.Tensor:
    """(pieces x windows, LLM width) audio embeddings of (pieces, mel bins, 3000) log-mel: transformers'
    WhisperEncoder (the authors' encoder layers are Whisper's), then the window Q-Former written out."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    qcfg = audio_config["qformer_config"]
    whisper = WhisperEncoder(WhisperConfig(**{k: v for k, v in audio_config.items() if k != "qformer_config"}))
    encoder = {k[6:]: v for k, v in weights.items() if k.startswith("audio.")}
    encoder = {k: v for k, v in encoder.items() if not k.startswith(("qformer", "q_tokens", "audio_proj"))}
    missing, unexpected = whisper.load_state_dict(encoder, strict=False)
    assert not unexpected and all("k_proj.bias" in m for m in missing), (missing, unexpected)
    whisper.eval()
    frames = whisper(mel).last_hidden_state  # (pieces, 1500, d_model), after the encoder's layer_norm
    kernel = round(1500 * audio_config["second_per_window"] / 30)
    windows = frames.reshape(frames.shape[0] * (1500 // kernel), kernel, frames.shape[-1])
    eps, heads = qcfg["layer_norm_eps"], qcfg["num_attention_heads"]
    queries = weights["audio.q_tokens"].expand(windows.shape[0], -1, -1)
    queries = _layer_norm(queries, weights, "audio.qformer.bert.embeddings.LayerNorm", eps)
    for i in range(qcfg["num_hidden_layers"]):
        p = f"audio.qformer.bert.encoder.layer.{i}"
        queries = _attention(queries, queries, weights, f"{p}.attention", heads, eps)
        queries = _attention(queries, windows, weights, f"{p}.crossattention", heads, eps)
        hidden = F.gelu(_linear(queries, weights, f"{p}.intermediate_query.dense"))
        queries = _layer_norm(
            _linear(hidden, weights, f"{p}.output_query.dense") + queries, weights, f"{p}.output_query.LayerNorm", eps
        )
    out = _linear(queries, weights, "audio.audio_proj")
    return out.reshape(-1, out.shape[-1])


def audio_mel(samples: np.ndarray) -> tuple[torch.Tensor, int]:
    """dataset.py's process_audio: padded to 1 s, cut into 30 s pieces, each through Whisper-large-v3's
    feature extractor; and the audio length they give the model, 60 tokens per started piece."""
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16_000, hop_length=160, chunk_length=30)
    sound = np.asarray(samples, dtype=np.float32)
    if len(sound) < 16_000:
        sound = np.pad(sound, (0, 16_000 - len(sound)))
    pieces = [sound[k : k + PIECE] for k in range(0, len(sound), PIECE)]
    mel = [extractor(p, sampling_rate=16_000, return_tensors="pt")["input_features"].squeeze() for p in pieces]
    return torch.stack(mel, dim=0), math.ceil(len(sound) / PIECE) * 60


# ---- the prompt (dataset.py) ------------------------------------------------------------------------------


def split_into_groups(count: int, steps: int, second_per_grid: float) -> list[int]:
    """dataset.py's ``split_into_groups`` for one video with its second_per_grid_ts."""
    frame_idx = (torch.arange(steps) * second_per_grid * 2).long()
    groups = torch.diff(frame_idx).tolist()
    return [*groups, count - sum(groups)]


def prompt_text(prompt: str, media: str | None, grid: list[int] | None, audio_len: int | None, spg: float) -> str:
    """generate_id_target's conversation for ``"<video>\\n" + prompt`` (or ``<image>``), pads expanded."""
    content = prompt
    if media == "image" and grid is not None:
        content = "<|vision_start|>" + "<|image_pad|>" * (int(np.prod(grid)) // 4) + "<|vision_end|>\n" + prompt
    elif media == "video" and grid is not None:
        t, h, w = grid
        per_step = h * w // 4
        if audio_len is None:
            block = "<|video_pad|>" * (t * per_step)
        else:
            groups = split_into_groups(audio_len, t, spg)
            block = "".join("<|video_pad|>" * per_step + "<|audio_pad|>" * n for n in groups)
        content = "<|vision_start|>" + block + "<|vision_end|>\n" + prompt
    turns = [("system", SYSTEM), ("user", content)]
    return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns) + "<|im_start|>assistant\n"


# ---- the positions (video_SALMONN2_plus.get_rope_index) ---------------------------------------------------


def rope_index(
    ids: list[int],
    config: dict[str, Any],
    grid: list[int] | None,
    kind: str | None,
    spg: float | None,
    audio_len: int | None,
) -> tuple[np.ndarray, int]:
    """(3, len(ids)) positions and the decode delta, for a prompt with at most one image or video. With
    ``audio_len`` the audio-visual branch; else Qwen2.5-VL's (``spg`` None: 1 s per frame pair)."""
    ids_t = torch.tensor(ids)
    video_id, image_id, audio_id = config["video_token_id"], config["image_token_id"], config["audio_token_id"]
    n = len(ids)
    if grid is None:
        positions = torch.arange(n).view(1, -1).expand(3, -1)
        return positions.numpy(), 0
    ed = ids.index(video_id if kind == "video" else image_id)
    t, h, w = grid[0], grid[1] // 2, grid[2] // 2
    per_grid = (spg if spg is not None else 1.0) if kind == "video" else 0
    times = (torch.arange(t).view(-1, 1).expand(-1, h * w) * per_grid * 2).long().flatten()
    h_index = torch.arange(h).view(1, -1, 1).expand(t, -1, w).flatten()
    w_index = torch.arange(w).view(1, 1, -1).expand(t, h, -1).flatten()
    text = torch.arange(ed).view(1, -1).expand(3, -1)
    visual = torch.stack([times, h_index, w_index]) + ed
    if audio_len is not None and kind == "video":
        k = torch.arange(audio_len)
        sound = torch.stack([k, torch.zeros_like(k), k]) + ed
        st = ed + t * h * w + audio_len
        block = torch.zeros(3, st - ed, dtype=torch.long)
        block[:, ids_t[ed:st] == audio_id] = sound
        block[:, ids_t[ed:st] == video_id] = visual
        next_idx = int(block[0].max()) + 1  # the authors' rule: the time axis only
    else:
        block, st = visual, ed + t * h * w
        next_idx = int(block.max()) + 1
    tail = torch.arange(n - st).view(1, -1).expand(3, -1) + next_idx
    positions = torch.cat([text, block, tail], dim=1)
    return positions.numpy().astype(np.int64), int(positions.max()) + 1 - n


class SalmonnReference(Reference):
    """The port above around transformers' Qwen2.5-VL, greedy, with the checkpoint's repetition penalty
    (its generation_config.json, which their ``generate`` applies too)."""

    families: ClassVar[tuple[str, ...]] = (FAMILY,)
    positions_mode = "trained"  # or "published" (see the module docstring)

    def load_model(self, transformers: Any) -> torch.nn.Module:
        from safetensors.torch import load_file

        self.config = json.loads((self.folder / "config.json").read_text())
        files = sorted(self.folder.glob("model*.safetensors"))
        self.weights = {k: v.float() for file in files for k, v in load_file(str(file)).items()}
        self.weights.pop("audio.qformer.bert.embeddings.position_ids", None)
        generation = json.loads((self.folder / "generation_config.json").read_text())
        self.penalty = float(generation.get("repetition_penalty", 1.0))
        self.eos = set(generation.get("eos_token_id") or [])
        qwen = transformers.Qwen2_5_VLConfig.from_pretrained(self.folder)
        model = transformers.Qwen2_5_VLForConditionalGeneration._from_config(qwen, dtype=torch.float32)

        def renamed(name: str) -> str:
            if name.startswith("visual."):
                return "model." + name
            return "model.language_model." + name[6:] if name.startswith("model.") else name

        state = {renamed(k): v for k, v in self.weights.items() if not k.startswith("audio.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = {"lm_head.weight"} if qwen.tie_word_embeddings else set()
        if unexpected or set(missing) - tied:
            raise ValueError(f"weights do not fit Qwen2.5-VL: missing {missing}, unexpected {unexpected}")
        return model

    def run(
        self,
        prompt: str,
        media: Media | None,
        max_new_tokens: int,
        processor_overrides: dict[str, Any] | None = None,
        qwen_positions: bool = False,
    ) -> SideRun:
        side = SideRun(prompt_token_ids=[], token_ids=[])
        grid = spg = audio_len = None
        embeds_by_id: dict[int, torch.Tensor] = {}
        with torch.no_grad():
            if media is not None and media.kind == "video":
                meta = media.metadata or {}
                # dataset.py: fps = frames / video length; second_per_grid_ts = temporal patch / fps.
                fps = len(meta["frames_indices"]) / float(meta["total_num_frames"]) * float(meta["fps"])
                spg = 2 / fps
                processed = self.processor.video_processor(videos=[media.pixels], do_resize=False, return_tensors="pt")
                pixels, grid_t = processed["pixel_values_videos"], processed["video_grid_thw"]
                embeds_by_id[self.config["video_token_id"]] = self._visual(pixels, grid_t, video=True)
                side.pixels["pixel_values_videos"] = pixels.numpy()
                side.grids["video_grid_thw"] = grid_t.tolist()
                side.mm_values["second_per_grid_ts"] = [round(spg, 6)]
                grid = grid_t[0].tolist()
                if media.audio is not None:
                    mel, audio_len = audio_mel(media.audio)
                    sound = audio_tower(mel, self.weights, self.config["audio_config"])
                    embeds_by_id[self.config["audio_token_id"]] = sound
            elif media is not None:
                processed = self.processor.image_processor(images=[media.pixels], do_resize=False, return_tensors="pt")
                pixels, grid_t = processed["pixel_values"], processed["image_grid_thw"]
                embeds_by_id[self.config["image_token_id"]] = self._visual(pixels, grid_t, video=False)
                side.pixels["pixel_values"] = pixels.numpy()
                side.grids["image_grid_thw"] = grid_t.tolist()
                grid = grid_t[0].tolist()
            kind = media.kind if media is not None else None
            text = prompt_text(prompt, kind, grid, audio_len, spg or 1.0)
            ids = self.processor.tokenizer.encode(text, add_special_tokens=False)
            if self.positions_mode == "published":  # inference.py: no audio_lengths, no second_per_grid_ts
                positions, delta = rope_index(ids, self.config, grid, kind, None, None)
            else:
                positions, delta = rope_index(ids, self.config, grid, kind, spg, audio_len)
            side.prompt_token_ids, side.positions = ids, positions
            self._greedy(side, ids, embeds_by_id, positions, delta, max_new_tokens)
        side.text = self.processor.tokenizer.decode(side.token_ids, skip_special_tokens=True)
        return side

    def _visual(self, pixels: torch.Tensor, grid: torch.Tensor, video: bool) -> torch.Tensor:
        visual = self.model.model.visual
        out = visual(pixels, grid_thw=grid)
        return out.pooler_output if hasattr(out, "pooler_output") else out

    def _greedy(
        self,
        side: SideRun,
        ids: list[int],
        embeds_by_id: dict[int, torch.Tensor],
        positions: np.ndarray,
        delta: int,
        max_new_tokens: int,
    ) -> None:
        lm, head = self.model.model.language_model, self.model.lm_head
        ids_t = torch.tensor(ids)
        embeds = lm.embed_tokens(ids_t)
        for token_id, values in embeds_by_id.items():
            mask = ids_t == token_id
            if int(mask.sum()) != values.shape[0]:
                raise ValueError(f"{int(mask.sum())} placeholders of {token_id} for {values.shape[0]} embeddings")
            embeds[mask] = values.to(embeds.dtype)
        out = lm(inputs_embeds=embeds[None], position_ids=torch.from_numpy(positions)[:, None, :], use_cache=True)
        seen = list(ids)
        for step in range(max_new_tokens):
            raw = head(out.last_hidden_state[0, -1]).float()
            scores = raw.clone()
            if self.penalty != 1.0:
                prior = torch.tensor(sorted(set(seen)))
                picked = scores[prior]
                scores[prior] = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
            side.steps.append(_top2(scores))
            side.raw_steps.append(_top2(raw))
            token = int(scores.argmax())
            side.token_ids.append(token)
            seen.append(token)
            if token in self.eos:
                break
            position = torch.full((3, 1, 1), len(ids) + step + delta)
            out = lm(
                inputs_embeds=lm.embed_tokens(torch.tensor([[token]])),
                position_ids=position,
                past_key_values=out.past_key_values,
                use_cache=True,
            )


def _top2(scores: torch.Tensor) -> Step:
    values, ids = torch.topk(scores, 2)
    return Step(int(ids[0]), float(values[0]), int(ids[1]), float(values[1]))


class PublishedSalmonnReference(SalmonnReference):
    positions_mode = "published"


REFERENCES[FAMILY] = SalmonnReference


def write_weights(folder: Path, seed: int = 0, std: float = 0.2) -> None:
    """float32 seeded weights under the authors' names (worker.devtools.parity.weights' widths and norm
    scales; the tiny folder's own are bfloat16 at the 0.02 init)."""
    from safetensors.torch import save_file

    from worker.devtools.families.video_salmonn2_plus import salmonn_weight_shapes
    from worker.devtools.parity.weights import NORM_JITTER

    config = json.loads((folder / "config.json").read_text())
    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in salmonn_weight_shapes(config).items():
        noise = torch.randn(shape, generator=generator)
        is_scale = ("norm" in name.lower() or "LayerNorm" in name) and name.endswith(".weight")
        tensors[name] = 1.0 + NORM_JITTER * noise if is_scale else std * noise
    positions = config["audio_config"]["qformer_config"]["max_position_embeddings"]
    tensors["audio.qformer.bert.embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
