"""The original video-SALMONN 2's pipeline (bytedance/video-SALMONN-2, ``llava/``), ported minimally to what
transformers 5 runs, for tests/test_video_salmonn2_engine.py. Their code pins transformers 4.4x, flash
attention and decord and cannot be imported here; what it does at test time is ported as written:

- the prompt: ``preprocess_qwen`` (dataset/preprocess_utils.py) on ``"<image>\\n" + question`` with the
  default system turn, the empty answer cut by ``[:, :-2]`` (dataset/av_dataset.py);
- the pixels: ``SigLipImageProcessor.preprocess`` (384 x 384 bicubic, mean/std 0.5);
- the sound: channel 0, padded to 1 s, cut at the video's length, Whisper-large-v3's features per 30 s;
- the model: ``VideoSALMONN2ForCausalLM`` (language_model/video_salmonn_2.py, llava_arch.py): SigLIP without
  its last layer, ``mm_projector`` (mlp2x_gelu), max-pool 2 after it, a newline per row (``grid``), then
  time tokens (no sound) or the audio tokens spread over the frames (sound): Whisper encoder, ``ln_speech``,
  the window Q-Former (one query per 0.5 s), ``speech_llama_proj``, ``final_linear`` and the sinusoidal
  piece positions; the language model is Qwen2. Greedy decoding, float32, sdpa.

The SigLIP tower, Whisper encoder and Qwen2 are transformers' classes (the authors' are copies of them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.nn.utils.rnn import pad_sequence

IMAGE_TOKEN_INDEX = -200
SYSTEM = "You are a helpful assistant."


def prompt_ids(tokenizer: Any, question: str) -> list[int]:
    """preprocess_qwen for [human: "<image>\\n" + question, gpt: ""], then the test-time cut of 2 tokens."""
    # transformers 4's additional_special_tokens_ids, which transformers 5 no longer has: these two.
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    nl = tokenizer("\n").input_ids
    ids = [im_start] + tokenizer("system").input_ids + nl + tokenizer(SYSTEM).input_ids + [im_end] + nl
    value = "<image>\n" + question.strip()
    ids += tokenizer("<|im_start|>user").input_ids + nl + [IMAGE_TOKEN_INDEX] + nl
    ids += tokenizer(value[len("<image>") :]).input_ids + [im_end] + nl
    ids += tokenizer("<|im_start|>assistant").input_ids + nl + tokenizer("").input_ids + [im_end] + nl
    return ids[:-2]


def pixels(frames: np.ndarray) -> torch.Tensor:
    """SigLipImageProcessor.preprocess of siglip_encoder_flash.py."""
    from transformers.image_transforms import normalize, rescale, resize, to_channel_dimension_format
    from transformers.image_utils import ChannelDimension, PILImageResampling

    first = ChannelDimension.FIRST
    out = []
    for frame in frames:
        x = resize(np.asarray(frame), size=(384, 384), resample=PILImageResampling.BICUBIC, data_format=first)
        x = rescale(x, scale=1 / 255, data_format=first)
        x = normalize(x, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), data_format=first)
        out.append(to_channel_dimension_format(x, first, input_channel_dim=first))
    return torch.from_numpy(np.stack(out)).float()


def spectrogram(samples: np.ndarray, real_time: float) -> torch.Tensor:
    from transformers import WhisperFeatureExtractor

    sr = 16_000
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=sr, hop_length=160, chunk_length=30)
    audio = np.asarray(samples, dtype=np.float64)
    if audio.ndim == 2:
        audio = audio[:, 0]
    if len(audio) < sr:
        audio = np.concatenate((audio, np.zeros(sr - len(audio))))
    audio = audio[: round(sr * real_time)]
    pieces = [audio[k : k + 30 * sr] for k in range(0, len(audio), 30 * sr)]
    mels = [extractor(a, sampling_rate=sr, return_tensors="pt")["input_features"].squeeze() for a in pieces]
    return torch.stack(mels)


def _bert_attention(x: torch.Tensor, ctx: torch.Tensor, w: dict[str, torch.Tensor], p: str, heads: int) -> torch.Tensor:
    b, n, width = x.shape
    d = width // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, t.shape[1], heads, d).permute(0, 2, 1, 3)

    q, k, v = (split(F.linear(src, w[f"{p}.self.{n_}.weight"], w[f"{p}.self.{n_}.bias"])) for n_, src in
               (("query", x), ("key", ctx), ("value", ctx)))
    out = (torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ v).permute(0, 2, 1, 3).reshape(b, n, width)
    out = F.linear(out, w[f"{p}.output.dense.weight"], w[f"{p}.output.dense.bias"]) + x
    return F.layer_norm(out, (width,), w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"], 1e-12)


class Reference:
    def __init__(self, model_dir: Path) -> None:
        from transformers import (
            AutoTokenizer,
            Qwen2Config,
            Qwen2ForCausalLM,
            SiglipVisionConfig,
            SiglipVisionModel,
            WhisperConfig,
        )
        from transformers.models.whisper.modeling_whisper import WhisperEncoder

        from worker.models.vllm_plugin.video_salmonn2_layout import QFORMER_BERT_BASE, SIGLIP_SO400M, WHISPER_LARGE_V3

        torch.set_default_dtype(torch.float32)
        self.config = config = json.loads((model_dir / "config.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        files = sorted(model_dir.glob("model*.safetensors"))
        w = {k: v.float() for f in files for k, v in load_file(f).items()}
        used: set[str] = set()

        def take(prefix: str) -> dict[str, torch.Tensor]:
            part = {k[len(prefix) :]: v for k, v in w.items() if k.startswith(prefix)}
            used.update(prefix + k for k in part)
            return part

        vision = SIGLIP_SO400M | config.get("vision_config", {})
        vision = vision | {"num_hidden_layers": vision["num_hidden_layers"] - 1, "vision_use_head": False}
        self.vision = SiglipVisionModel(SiglipVisionConfig(**vision)).eval()
        tower = take("model.vision_tower.vision_tower.vision_model.")
        missing, unexpected = self.vision.load_state_dict(tower, strict=False)
        not_text = ("architectures", "model_type", "vision_config", "whisper_config")
        text = {k: v for k, v in config.items() if k not in not_text}
        self.lm = Qwen2ForCausalLM(Qwen2Config(**text)).eval()
        not_lm = ("vision_tower.", "mm_projector.", "image_newline")
        lm_state = {k: v for k, v in take("model.").items() if not k.startswith(not_lm)}
        lm_state["lm_head.weight"] = take("lm_head.")["weight"]
        lm_state = {("model." + k if not k.startswith("lm_head") else k): v for k, v in lm_state.items()}
        m2, u2 = self.lm.load_state_dict(lm_state, strict=False)
        self.projector = take("model.mm_projector.")
        self.newline = w["model.image_newline"]
        used.add("model.image_newline")
        whisper = WHISPER_LARGE_V3 | config.get("whisper_config", {})
        self.whisper = WhisperEncoder(WhisperConfig(**whisper)).eval()
        m3, u3 = self.whisper.load_state_dict(take("speech_encoder."), strict=False)
        audio = ("speech_Qformer", "speech_query", "speech_llama", "ln_speech", "final_linear")
        self.q = {k: v for k, v in w.items() if k.startswith(audio)}
        used.update(self.q)
        self.qcfg = QFORMER_BERT_BASE | config.get("qformer_config", {})
        # Only these are allowed to be missing from the transformers classes: buffers and Whisper's k bias.
        missing_all = [*missing, *m2, *[m for m in m3 if not m.endswith("k_proj.bias")]]
        missing_all += [m for m in ("lm_head.weight",) if m not in lm_state]
        self.load = {
            "tensors": len(w),
            "missing": sorted(missing_all),
            "unexpected": sorted([*unexpected, *u2, *u3, *(set(w) - used)]),
        }

    # ---- encode_images / get_2dPool / grid newline -----------------------------------------------------
    def frames(self, pix: torch.Tensor) -> torch.Tensor:
        feats = self.vision(pix, output_hidden_states=True).hidden_states[-1]
        p = self.projector
        feats = F.linear(F.gelu(F.linear(feats, p["0.weight"], p["0.bias"])), p["2.weight"], p["2.bias"])
        n, tokens, dim = feats.shape
        side = int(math.isqrt(tokens))
        feats = feats.view(n, side, side, -1).permute(0, 3, 1, 2)
        feats = F.max_pool2d(feats, 2).permute(0, 2, 3, 1).reshape(n, -1, dim)
        h = int(math.sqrt(feats.shape[1]))
        x = feats.view(n, 1, h, h, -1).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)
        x = torch.cat((x, self.newline[:, None, None].expand(*x.shape[:-1], 1)), dim=-1)
        return x.flatten(1, 2).transpose(0, 1)  # (frames * h * (h + 1), dim)

    def speech(self, mel: torch.Tensor) -> torch.Tensor:
        q, cfg = self.q, self.qcfg
        x = self.whisper(mel).last_hidden_state
        x = F.layer_norm(x, x.shape[-1:], q["ln_speech.weight"], q["ln_speech.bias"])
        b, t, c = x.shape
        kernel = round(1500 * 0.5 / 30.0)
        x = F.unfold(x.transpose(1, 2).unsqueeze(2), kernel_size=(1, kernel), stride=(1, kernel))
        x = x.view(b, -1, kernel, x.shape[-1]).permute(0, 3, 2, 1).reshape(-1, kernel, c)
        pre = "speech_Qformer.bert"
        h = q["speech_query_tokens"].expand(x.shape[0], -1, -1)
        def lin(x: torch.Tensor, name: str) -> torch.Tensor:
            return F.linear(x, q[f"{name}.weight"], q[f"{name}.bias"])

        def norm(x: torch.Tensor, name: str) -> torch.Tensor:
            return F.layer_norm(x, x.shape[-1:], q[f"{name}.weight"], q[f"{name}.bias"], 1e-12)

        h = norm(h, f"{pre}.embeddings.LayerNorm")
        heads = cfg["num_attention_heads"]
        for i in range(cfg["num_hidden_layers"]):
            lp = f"{pre}.encoder.layer.{i}"
            h = _bert_attention(h, h, q, f"{lp}.attention", heads)
            h = _bert_attention(h, x, q, f"{lp}.crossattention", heads)
            mid = F.gelu(lin(h, f"{lp}.intermediate_query.dense"))
            h = norm(lin(mid, f"{lp}.output_query.dense") + h, f"{lp}.output_query.LayerNorm")
        h = lin(h, "speech_llama_proj")
        h = lin(F.gelu(lin(h, "final_linear.0")), "final_linear.2")
        h = h.view(b, -1, h.shape[-1])
        d = h.shape[-1]
        position = torch.arange(0, 200, dtype=torch.float32).unsqueeze(1)
        div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / d))
        seg = torch.zeros((201, d))
        seg[1:, 0::2] = torch.sin(position * div)
        seg[1:, 1::2] = torch.cos(position * div)
        return (h + seg[:b].unsqueeze(1)).view(-1, d)

    def media(self, pix: torch.Tensor, real_time: float, mel: torch.Tensor | None) -> torch.Tensor:
        num_frames = pix.shape[0]
        feature = self.frames(pix)
        per_frame = feature.view(num_frames, -1, feature.shape[-1])
        if mel is None:
            step = real_time / num_frames
            times = [str(round(step * k, 1)) for k in range(1, num_frames + 1)]
            embed = self.lm.get_input_embeddings()
            time_embeds = [embed(self.tokenizer(t, return_tensors="pt")["input_ids"]).squeeze() for t in times]
            padded = pad_sequence(time_embeds, batch_first=True)
            return torch.cat((per_frame, padded), dim=1).view(-1, feature.shape[-1])
        speech = self.speech(mel)
        front_num = round(real_time * 50)
        front, back = speech[:front_num], speech[front_num:]
        if (delta := front.size(0) % num_frames) != 0:
            size = front.size(0) + num_frames - delta
            front = F.interpolate(front.unsqueeze(0).transpose(1, 2), size=size, mode="nearest")
            front = front.transpose(1, 2).squeeze()
        front = front.view(num_frames, -1, front.size(-1))
        return torch.cat([torch.cat([per_frame, front], dim=1).view(-1, front.size(-1)), back], dim=0)

    @torch.no_grad()
    def run(
        self, frames: np.ndarray, question: str, real_time: float, sound: np.ndarray | None, max_tokens: int
    ) -> dict[str, Any]:
        ids = prompt_ids(self.tokenizer, question)
        pix = pixels(frames)
        mel = None if sound is None else spectrogram(sound, real_time)
        media = self.media(pix, real_time, mel)
        at = ids.index(IMAGE_TOKEN_INDEX)
        embed = self.lm.get_input_embeddings()
        embeds = torch.cat([embed(torch.tensor(ids[:at])), media, embed(torch.tensor(ids[at + 1 :]))])[None]
        out = self.lm(inputs_embeds=embeds, use_cache=True)
        tokens: list[int] = []
        margins: list[float] = []
        past = out.past_key_values
        logits = out.logits[0, -1]
        for _ in range(max_tokens):
            top = torch.topk(logits, 2)
            token = int(top.indices[0])
            tokens.append(token)
            margins.append(float(top.values[0] - top.values[1]))
            if token in (151643, 151645):
                break
            out = self.lm(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[0, -1]
        return {
            "prompt_ids": ids,
            "media_tokens": int(media.shape[0]),
            "token_ids": tokens,
            "margins": margins,
            "load": self.load,
            "pixels": pix.numpy(),
        }
