"""The original video-SALMONN 2 (tsinghua-ee/video-SALMONN-2) on vLLM: LLaVA-OneVision's SigLIP tower,
projector and Qwen2 (vLLM's SigLIP and Qwen2 classes), the video laid out as the authors'
``VideoSALMONN2ForCausalLM`` does (bytedance/video-SALMONN-2, ``llava/``), and the audio tower shared with
video-SALMONN 2+.

The whole video is one placeholder that becomes one run of embeddings: per frame its 13 rows of 13
max-pooled patches, each row closed by ``image_newline``, followed either by that frame's time tokens
(no sound; zero-padded to the longest) or by its share of the audio tokens (sound: no time tokens, as in
the authors' code), then the sound past the video's end. The sound rides in the video item's metadata
(``"audio"``, 16 kHz mono) with the span it belongs to (``"duration"``), so the item's cache key covers both.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BatchFeature, WhisperFeatureExtractor
from vllm.config import VllmConfig
from vllm.model_executor.models.interfaces import SupportsMultiModal, SupportsPP
from vllm.model_executor.models.siglip import SiglipVisionModel
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    StageMissingLayer,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.sequence import IntermediateTensors
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
)

from worker.models.vllm_plugin.salmonn_audio import SalmonnAudioTower
from worker.models.vllm_plugin.salmonn_layout import (
    AUDIO_SAMPLE_RATE,
    MAX_AUDIO_SECONDS,
    MIN_AUDIO_SAMPLES,
    PIECE_SAMPLES,
)
from worker.models.vllm_plugin.video_salmonn2_config import VideoSalmonn2Config
from worker.models.vllm_plugin.video_salmonn2_layout import (
    MAX_AUDIO_PIECES,
    PLACEHOLDER,
    SECOND_PER_WINDOW,
    audio_pieces,
    audio_split,
    audio_tokens_per_piece,
    frame_tokens,
    time_strings,
    tokenize_prompt,
    video_token_count,
    vllm_weight_name,
)

_DEFAULT_FRAMES = 32


def siglip_pixels(frames: np.ndarray, size: int) -> torch.Tensor:
    """(frames, 3, size, size): the authors' SigLipImageProcessor (bicubic resize, 1/255, mean/std 0.5), with
    the same transformers functions they call, so the pixels are theirs to the bit."""
    from transformers.image_transforms import normalize, rescale, resize
    from transformers.image_utils import ChannelDimension, PILImageResampling

    first = ChannelDimension.FIRST
    out = []
    for frame in np.asarray(frames):
        x = resize(frame, size=(size, size), resample=PILImageResampling.BICUBIC, data_format=first)
        x = normalize(rescale(x, scale=1 / 255, data_format=first), mean=(0.5,) * 3, std=(0.5,) * 3, data_format=first)
        out.append(x)
    return torch.from_numpy(np.stack(out)).float()


class VideoSalmonn2ProcessingInfo(BaseProcessingInfo):
    def get_hf_config(self) -> VideoSalmonn2Config:
        return self.ctx.get_hf_config(VideoSalmonn2Config)

    def get_data_parser(self) -> MultiModalDataParser:
        return MultiModalDataParser(video_needs_metadata=True, expected_hidden_size=self._get_expected_hidden_size())

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"video": 1}

    @property
    def placeholder_id(self) -> int:
        return int(self.get_hf_config().image_token_index)

    @property
    def per_frame(self) -> int:
        vision = self.get_hf_config().vision_config
        return frame_tokens(vision.image_size, vision.patch_size)

    def max_frames(self, mm_options: Mapping[str, Any] | None = None) -> int:
        option = (mm_options or {}).get("video")
        return int(getattr(option, "num_frames", None) or _DEFAULT_FRAMES)

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        frames = self.max_frames(self.ctx.get_mm_config().limit_per_prompt)
        # Time tokens are at most 6 ("9999.9"); the sound is at most MAX_AUDIO_SECONDS.
        sound = audio_pieces(int(MAX_AUDIO_SECONDS * AUDIO_SAMPLE_RATE)) * audio_tokens_per_piece()
        return {"video": min(seq_len, frames * (self.per_frame + 6) + sound + frames)}

    def mel_pieces(self, samples: np.ndarray, real_time: float) -> torch.Tensor:
        """The authors' loader: padded to 1 s, cut at the video's length, Whisper-large-v3 features per 30 s."""
        sound = np.asarray(samples, dtype=np.float32).reshape(-1)
        if len(sound) < MIN_AUDIO_SAMPLES:
            sound = np.pad(sound, (0, MIN_AUDIO_SAMPLES - len(sound)))
        sound = sound[: round(AUDIO_SAMPLE_RATE * real_time)]
        pieces = [sound[k : k + PIECE_SAMPLES] for k in range(0, len(sound), PIECE_SAMPLES)]
        features = self.feature_extractor(pieces, sampling_rate=AUDIO_SAMPLE_RATE, return_tensors="pt")
        return features["input_features"]

    @cached_property
    def feature_extractor(self) -> WhisperFeatureExtractor:
        # Whisper-large-v3's front end, as the authors' loader builds it: 128 bins, 30 s pieces.
        bins = int(self.get_hf_config().whisper()["num_mel_bins"])
        return WhisperFeatureExtractor(
            feature_size=bins, sampling_rate=AUDIO_SAMPLE_RATE, hop_length=160, chunk_length=30
        )


class VideoSalmonn2DummyInputsBuilder(BaseDummyInputsBuilder[VideoSalmonn2ProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return PLACEHOLDER * mm_counts.get("video", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Mapping[str, Any]) -> Any:
        if not mm_counts.get("video"):
            return {}
        frames = self.info.max_frames(mm_options)
        size = self.info.get_hf_config().vision_config.image_size
        video = np.zeros((frames, size, size, 3), dtype=np.uint8)
        seconds = min(float(frames), MAX_AUDIO_SECONDS)
        sound = np.zeros(int(seconds * AUDIO_SAMPLE_RATE), dtype=np.float32)
        return {"video": [(video, {"duration": seconds, "audio": sound})] * mm_counts["video"]}


class VideoSalmonn2MultiModalProcessor(BaseMultiModalProcessor[VideoSalmonn2ProcessingInfo]):
    def _call_hf_processor(
        self,
        prompt: str,
        mm_data: Mapping[str, object],
        mm_kwargs: Mapping[str, object],
        tok_kwargs: Mapping[str, object],
    ) -> BatchFeature:
        tokenizer = self.info.get_tokenizer()
        ids = tokenize_prompt(tokenizer, prompt, self.info.placeholder_id)
        out: dict[str, Any] = {"input_ids": torch.tensor([ids])}
        videos = list(mm_data.get("videos") or [])  # type: ignore[call-overload]
        if not videos:
            return BatchFeature(out)
        size = self.info.get_hf_config().vision_config.image_size
        pixels, times, seconds, pieces, mels = [], [], [], [], []
        for frames, metadata in videos:
            metadata = metadata or {}
            count = len(frames)
            real_time = float(metadata.get("duration") or count)
            pixels.append(siglip_pixels(frames, size))
            seconds.append(real_time)
            sound = metadata.get("audio")
            if sound is not None and len(sound):
                mel = self.info.mel_pieces(sound, real_time)
                mels.append(mel)
                pieces.append(int(mel.shape[0]))
                times.append(torch.full((count, 0), -1, dtype=torch.long))
            else:
                pieces.append(0)
                ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in time_strings(real_time, count)]
                padded = torch.full((count, max(map(len, ids))), -1, dtype=torch.long)
                for k, row in enumerate(ids):
                    padded[k, : len(row)] = torch.tensor(row)
                times.append(padded)
        bins = int(self.info.get_hf_config().whisper()["num_mel_bins"])
        out |= {
            "pixel_values_videos": pixels,
            "video_time_ids": times,
            "video_seconds": torch.tensor(seconds, dtype=torch.float64),
            "audio_pieces": torch.tensor(pieces),
            "audio_features": torch.cat(mels) if mels else torch.zeros(0, bins, 3000),
        }
        return BatchFeature(out)

    def _hf_processor_applies_updates(self, *args: Any, **kwargs: Any) -> bool:
        return False

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        pieces = hf_inputs.get("audio_pieces", torch.zeros(0, dtype=torch.long))
        return {
            "pixel_values_videos": MultiModalFieldConfig.batched("video"),
            "video_time_ids": MultiModalFieldConfig.batched("video", keep_on_cpu=True),
            "video_seconds": MultiModalFieldConfig.batched("video", keep_on_cpu=True),
            "audio_pieces": MultiModalFieldConfig.batched("video", keep_on_cpu=True),
            "audio_features": MultiModalFieldConfig.flat_from_sizes("video", pieces),
        }

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, Any],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        placeholder, per_frame, per_piece = self.info.placeholder_id, self.info.per_frame, audio_tokens_per_piece()

        def video_tokens(item_idx: int) -> list[int]:
            item = out_mm_kwargs["video"][item_idx]
            times = item["video_time_ids"].data
            count = int(item["pixel_values_videos"].data.shape[0])
            lengths = [int((row >= 0).sum()) for row in times]
            audio = int(item["audio_pieces"].data) * per_piece
            seconds = float(item["video_seconds"].data)
            return [placeholder] * video_token_count(count, seconds, audio, lengths, per_frame)

        return [PromptReplacement(modality="video", target=[placeholder], replacement=video_tokens)]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return list(value.reshape(-1)) if value.ndim <= 1 else list(value)
    return [v for part in value for v in _as_list(part)] if isinstance(value, (list, tuple)) else [value]


def _piece_positions(pieces: int, width: int) -> torch.Tensor:
    """The authors' sinusoidal_position rows 0..pieces-1 (row 0 all zeros; row k: sin/cos of k - 1)."""
    position = torch.arange(0, MAX_AUDIO_PIECES, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * -(torch.log(torch.tensor(10000.0)) / width))
    table = torch.zeros((MAX_AUDIO_PIECES + 1, width))
    table[1:, 0::2] = torch.sin(position * div)
    table[1:, 1::2] = torch.cos(position * div)
    return table[:pieces]


class _Projector(nn.Module):
    """``mm_projector`` (mlp2x_gelu): Linear, GELU, Linear, under vLLM's LLaVA names."""

    def __init__(self, vision_hidden: int, hidden: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden, hidden)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


@MULTIMODAL_REGISTRY.register_processor(
    VideoSalmonn2MultiModalProcessor, info=VideoSalmonn2ProcessingInfo, dummy_inputs=VideoSalmonn2DummyInputsBuilder
)
class VideoSalmonn2ForCausalLM(nn.Module, SupportsMultiModal, SupportsPP):
    """LLaVA-OneVision's parts as vLLM's LlavaOnevisionForConditionalGeneration builds them (SigLIP up to the
    feature layer without post-layernorm, ``multi_modal_projector``, ``image_newline``, Qwen2 as
    ``language_model``), plus ``audio``: Whisper encoder, ``ln_speech``, window Q-Former,
    ``speech_llama_proj`` and ``final_linear``. Not a subclass of vLLM's class: importing
    vllm.model_executor.models.llava_onevision fails with this worker's transformers (its llava module
    imports a Pixtral class transformers 5 renamed)."""

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("video"):
            return PLACEHOLDER
        raise ValueError("video-SALMONN 2 takes videos only (the authors' model has no single-image path)")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config: VideoSalmonn2Config = vllm_config.model_config.hf_config
        self.config = config
        hidden = config.text_config.hidden_size
        whisper = config.whisper()
        audio_config = whisper | {
            "second_per_window": SECOND_PER_WINDOW,
            "second_stride": SECOND_PER_WINDOW,
            "qformer_config": config.qformer() | {"encoder_width": whisper["d_model"], "out_hidden_size": hidden},
        }
        vision = config.vision_config
        with self._mark_tower_model(vllm_config, "video"):
            # The authors drop SigLIP's last layer and read the last remaining one, before the post-layernorm.
            self.vision_tower = SiglipVisionModel(
                vision,
                quant_config=vllm_config.quant_config,
                num_hidden_layers_override=vision.num_hidden_layers - 1,
                require_post_norm=False,
                prefix=maybe_prefix(prefix, "vision_tower"),
            )
            self.multi_modal_projector = _Projector(vision.hidden_size, hidden)
            self.image_newline = nn.Parameter(torch.empty(hidden))
            self.audio = SalmonnAudioTower(vllm_config, audio_config, hidden, prefix=maybe_prefix(prefix, "audio"))
        if not isinstance(self.audio, StageMissingLayer):
            self.audio.frames_norm = nn.LayerNorm(whisper["d_model"])
            self.audio.out_head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=config.text_config, prefix=maybe_prefix(prefix, "language_model")
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def _frames(self, pixels: torch.Tensor) -> torch.Tensor:
        """(frames, rows * (side + 1), hidden): tower, projector, max-pool 2, a newline after every row."""
        features = self.vision_tower(pixels.to(self.image_newline.dtype), feature_select_strategy="full")
        features = self.multi_modal_projector(features)
        count, tokens, width = features.shape
        side = int(round(tokens**0.5))
        grid = F.max_pool2d(features.view(count, side, side, width).permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
        rows = grid.shape[1]
        newline = self.image_newline.to(grid.dtype).expand(count, rows, 1, width)
        return torch.cat([grid, newline], dim=2).reshape(count, -1, width)

    def _spread_sound(self, frames: torch.Tensor, sound: torch.Tensor, real_time: float) -> torch.Tensor:
        count = frames.shape[0]
        front_len, per_frame, _ = audio_split(count, real_time, sound.shape[0])
        front, back = sound[:front_len], sound[front_len:]
        if front_len % count:
            front = F.interpolate(front.T[None], size=per_frame * count, mode="nearest")[0].T
        front = front.reshape(count, per_frame, -1)
        return torch.cat([torch.cat([frames, front], dim=1).reshape(-1, frames.shape[-1]), back])

    def embed_multimodal(self, **kwargs: object) -> Any:
        videos = _as_list(kwargs.get("pixel_values_videos"))
        if not videos:
            return []
        times = _as_list(kwargs.get("video_time_ids"))
        seconds = [float(s) for s in _as_list(kwargs.get("video_seconds"))]
        pieces = [int(p) for p in _as_list(kwargs.get("audio_pieces"))]
        features = kwargs.get("audio_features")
        if isinstance(features, (list, tuple)):
            features = [f.reshape(-1, *f.shape[-2:]) for f in features if f.numel()]
            features = torch.cat(features) if features else None
        sounds: list[torch.Tensor | None] = [None] * len(videos)
        if any(pieces) and features is not None:
            flat = self.audio(features)
            per_piece = self.audio.tokens_per_piece
            width = flat.shape[-1]
            for i, part in enumerate(flat.split([p * per_piece for p in pieces])):
                if pieces[i]:
                    rows = part.view(pieces[i], per_piece, width) + _piece_positions(pieces[i], width).to(part)[:, None]
                    sounds[i] = rows.reshape(-1, width)
        embed = self.get_language_model().embed_input_ids
        out = []
        for pixels, time_ids, real_time, sound in zip(videos, times, seconds, sounds, strict=True):
            frames = self._frames(pixels)
            if sound is not None:
                out.append(self._spread_sound(frames, sound.to(frames.dtype), real_time))
                continue
            ids = time_ids.to(frames.device)
            stamps = embed(ids.clamp(min=0)).to(frames.dtype) * (ids >= 0).unsqueeze(-1)
            out.append(torch.cat([frames, stamps], dim=1).reshape(-1, frames.shape[-1]))
        return tuple(out)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Strict: every name of the release maps to a parameter (the SigLIP post-layernorm, which the
        authors save but never apply, and the Q-Former's position_ids buffer are read and dropped)."""
        audio: list[tuple[str, torch.Tensor]] = []

        def others() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                target = vllm_weight_name(name)
                if target.startswith("audio."):
                    audio.append((target.removeprefix("audio."), tensor))
                else:
                    yield target, tensor

        loaded = set(AutoWeightsLoader(self, skip_prefixes=["audio."]).load_weights(others()))
        if isinstance(self.audio, StageMissingLayer):
            return loaded
        return loaded | {f"audio.{name}" for name in self.audio.load_weights(audio)}


__all__ = ["VideoSalmonn2ForCausalLM"]
