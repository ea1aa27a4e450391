"""video-SALMONN 2+ (tsinghua-ee/video-SALMONN2_plus_{3B,7B,72B}_full) on vLLM: Qwen2.5-VL plus an audio
tower whose tokens are interleaved with the video's.

A video and its sound are one multimodal item: the sound rides in the video's metadata (``"audio"``: 16 kHz
mono float32), so the item's cache key covers both and two jobs with the same frames and different sound
never share a processed item. Without sound the item is exactly Qwen2.5-VL's (layout, positions,
embeddings). Layout and positions follow worker.models.vllm_plugin.salmonn_layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature, WhisperFeatureExtractor
from vllm.config import VllmConfig
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen2_vl import Qwen2VLMultiModalDataParser
from vllm.model_executor.models.utils import StageMissingLayer
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFeatureSpec, MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems
from vllm.multimodal.processing import PromptReplacement, PromptUpdate, PromptUpdateDetails

from worker.models.vllm_plugin.salmonn_audio import SalmonnAudioTower, as_dict
from worker.models.vllm_plugin.salmonn_layout import (
    AUDIO_SAMPLE_RATE,
    MAX_AUDIO_SECONDS,
    MIN_AUDIO_SAMPLES,
    PIECE_SAMPLES,
    audio_pieces,
    audio_split,
    av_block_positions,
    interleaved_tokens,
    mrope_positions,
    tokens_per_piece,
)

DEFAULT_AUDIO_TOKEN_ID = 151665


class SalmonnProcessingInfo(Qwen2_5_VLProcessingInfo):
    def get_data_parser(self) -> Qwen2VLMultiModalDataParser:
        # Keep each video's metadata: the sound travels in it.
        return Qwen2VLMultiModalDataParser(
            self.get_hf_config().vision_config.spatial_merge_size,
            video_needs_metadata=True,
            expected_hidden_size=self._get_expected_hidden_size(),
        )

    @cached_property
    def audio_config(self) -> dict[str, Any]:
        return as_dict(getattr(self.get_hf_config(), "audio_config", None))

    @property
    def audio_token_id(self) -> int:
        return int(getattr(self.get_hf_config(), "audio_token_id", DEFAULT_AUDIO_TOKEN_ID))

    @property
    def tokens_per_piece(self) -> int:
        cfg = self.audio_config
        query_length = int(as_dict(cfg.get("qformer_config")).get("query_length", 1))
        windows = tokens_per_piece(float(cfg.get("second_per_window", 0.5)), float(cfg.get("second_stride", 0.5)))
        return windows * query_length

    @cached_property
    def feature_extractor(self) -> WhisperFeatureExtractor:
        # Whisper-large-v3's front end, as the authors build it: 128 bins, 30 s pieces.
        return WhisperFeatureExtractor(
            feature_size=int(self.audio_config.get("num_mel_bins", 128)),
            sampling_rate=AUDIO_SAMPLE_RATE,
            hop_length=160,
            chunk_length=30,
        )

    def max_audio_pieces(self) -> int:
        return audio_pieces(int(MAX_AUDIO_SECONDS * AUDIO_SAMPLE_RATE))

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        tokens = dict(super().get_mm_max_tokens_per_item(seq_len, mm_counts))
        tokens["video"] = min(seq_len, tokens["video"] + self.max_audio_pieces() * self.tokens_per_piece)
        return tokens

    def mel_pieces(self, samples: np.ndarray) -> torch.Tensor:
        """(pieces, mel bins, 3000) log-mel of each 30 s piece (the last one zero-padded by the extractor)."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        if len(samples) < MIN_AUDIO_SAMPLES:
            samples = np.pad(samples, (0, MIN_AUDIO_SAMPLES - len(samples)))
        pieces = [samples[k : k + PIECE_SAMPLES] for k in range(0, len(samples), PIECE_SAMPLES)]
        mel = self.feature_extractor(pieces, sampling_rate=AUDIO_SAMPLE_RATE, return_tensors="pt")
        return mel["input_features"]


class SalmonnDummyInputsBuilder(Qwen2_5_VLDummyInputsBuilder):
    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int], mm_options: Mapping[str, Any]) -> Any:
        data = super().get_dummy_mm_data(seq_len, mm_counts, mm_options)
        info: SalmonnProcessingInfo = self.info  # type: ignore[assignment]
        # The longest sound that still fits beside the largest video, so profiling sees the audio tower.
        visual = Qwen2_5_VLProcessingInfo.get_mm_max_tokens_per_item(info, seq_len, mm_counts)["video"]
        pieces = max(0, min(info.max_audio_pieces(), (seq_len - visual) // info.tokens_per_piece))
        sound = np.zeros(pieces * PIECE_SAMPLES, dtype=np.float32)
        videos = data.get("video") or []
        data["video"] = [(video, {"audio": sound} if pieces else {}) for video in videos]
        return data


def _item_fps(metadata: Mapping[str, Any] | None) -> float:
    """Rate the frames were sampled at, from transformers-style video metadata (2 fps if unknown)."""
    if not metadata:
        return 2.0
    if metadata.get("sampled_fps"):
        return float(metadata["sampled_fps"])
    indices, total, fps = metadata.get("frames_indices"), metadata.get("total_num_frames"), metadata.get("fps")
    if indices is not None and total and fps:
        return float(fps) * len(indices) / float(total)
    return 2.0


class SalmonnMultiModalProcessor(Qwen2_5_VLMultiModalProcessor):
    info: SalmonnProcessingInfo

    def _call_hf_processor(
        self,
        prompt: str,
        mm_data: Mapping[str, object],
        mm_kwargs: Mapping[str, object],
        tok_kwargs: Mapping[str, object],
    ) -> BatchFeature:
        data = dict(mm_data)
        videos = list(data.pop("videos", None) or [])
        frames = [video for video, _ in videos]
        metadata = [meta or {} for _, meta in videos]
        if frames:
            data["videos"] = frames
        processed = super()._call_hf_processor(prompt, data, mm_kwargs, tok_kwargs)
        # The prompt stays unexpanded: _get_prompt_updates builds the interleaved layout.
        tokenizer = self.info.get_tokenizer()
        processed["input_ids"] = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
        if frames:
            temporal = self.info.get_hf_processor(**mm_kwargs).video_processor.temporal_patch_size
            processed["second_per_grid_ts"] = torch.tensor([temporal / _item_fps(m) for m in metadata])
            mels = [self.info.mel_pieces(m["audio"]) for m in metadata if m.get("audio") is not None]
            processed["audio_pieces"] = torch.tensor(
                [audio_pieces(len(m["audio"])) if m.get("audio") is not None else 0 for m in metadata]
            )
            bins = self.info.feature_extractor.feature_size
            frames_per_piece = self.info.feature_extractor.nb_max_frames
            processed["audio_features"] = (
                torch.cat(mels) if mels else torch.zeros(0, bins, frames_per_piece, dtype=torch.float32)
            )
        return processed

    def _hf_processor_applies_updates(self, *args: Any, **kwargs: Any) -> bool:
        return False

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        if "audio_pieces" in hf_inputs:
            fields["audio_pieces"] = MultiModalFieldConfig.batched("video", keep_on_cpu=True)
            fields["audio_features"] = MultiModalFieldConfig.flat_from_sizes("video", hf_inputs["audio_pieces"])
        return fields

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, Any],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        hf_processor = self.info.get_hf_processor(**hf_processor_mm_kwargs)
        vocab = self.info.get_tokenizer().get_vocab()
        image_id, video_id = vocab[hf_processor.image_token], vocab[hf_processor.video_token]
        audio_id = self.info.audio_token_id
        merge = self.info.get_hf_config().vision_config.spatial_merge_size
        per_piece = self.info.tokens_per_piece

        def image_tokens(item_idx: int) -> list[int]:
            grid = out_mm_kwargs["image"][item_idx]["image_grid_thw"].data
            return [image_id] * (int(grid.prod()) // merge**2)

        def video_tokens(item_idx: int) -> Any:
            item = out_mm_kwargs["video"][item_idx]
            t, h, w = (int(x) for x in item["video_grid_thw"].data)
            per_step = h * w // merge**2
            pieces = int(item["audio_pieces"].data) if "audio_pieces" in item else 0
            if not pieces:
                return [video_id] * (t * per_step)
            split = audio_split(t, float(item["second_per_grid_ts"].data), pieces * per_piece)
            seq = interleaved_tokens(t, per_step, split, video_id, audio_id)
            return PromptUpdateDetails.select_token_ids(seq, [video_id, audio_id])

        return [
            PromptReplacement(modality="image", target=[image_id], replacement=image_tokens),
            PromptReplacement(modality="video", target=[video_id], replacement=video_tokens),
        ]


@MULTIMODAL_REGISTRY.register_processor(
    SalmonnMultiModalProcessor, info=SalmonnProcessingInfo, dummy_inputs=SalmonnDummyInputsBuilder
)
class VideoSalmonn2PlusForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL (vision tower, language model, M-RoPE) with ``audio``: Whisper encoder + window Q-Former."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        if self.is_multimodal_pruning_enabled:
            raise ValueError("video_SALMONN2_plus does not support video_pruning_rate (EVS)")
        config = self.config
        self.audio_token_id = int(getattr(config, "audio_token_id", DEFAULT_AUDIO_TOKEN_ID))
        with self._mark_tower_model(vllm_config, "video"):
            self.audio = SalmonnAudioTower(
                vllm_config,
                getattr(config, "audio_config", None),
                config.get_text_config().hidden_size,
                prefix=f"{prefix}.audio" if prefix else "audio",
            )

    def _video_embeddings(self, video_input: Any, kwargs: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
        visual = self._process_video_input(video_input)
        pieces = kwargs.get("audio_pieces")
        if pieces is None:
            return tuple(visual)
        pieces = [
            int(p)
            for p in (
                torch.cat([torch.as_tensor(p).reshape(-1) for p in pieces])
                if isinstance(pieces, list)
                else pieces.reshape(-1)
            )
        ]
        if not any(pieces):
            return tuple(visual)
        features = kwargs["audio_features"]
        if isinstance(features, list):
            features = torch.cat([f.reshape(-1, *f.shape[-2:]) for f in features if f.numel()])
        per_piece = self.audio.tokens_per_piece
        sound = self.audio(features).to(visual[0].dtype).split([p * per_piece for p in pieces])
        grids = video_input["video_grid_thw"].tolist()
        seconds = video_input["second_per_grid_ts"]
        merge = self.visual.spatial_merge_size
        out = []
        for i, (emb, (t, h, w)) in enumerate(zip(visual, grids)):
            if not pieces[i]:
                out.append(emb)
                continue
            split = audio_split(t, float(seconds[i]), pieces[i] * per_piece)
            steps = emb.view(t, h * w // merge**2, -1)
            audio_steps = sound[i].split(split)
            out.append(torch.cat([part for t_i in range(t) for part in (steps[t_i], audio_steps[t_i])]))
        return tuple(out)

    def embed_multimodal(self, **kwargs: object) -> Any:
        by_modality = self._parse_and_validate_multimodal_inputs(**kwargs)
        embeddings: tuple[torch.Tensor, ...] = ()
        for modality, modality_input in by_modality.items():
            if modality == "image":
                embeddings += tuple(self._process_image_input(modality_input))
            elif modality == "video":
                embeddings += self._video_embeddings(modality_input, kwargs)
        return embeddings

    def get_mrope_input_positions(
        self, input_tokens: list[int], mm_features: list[MultiModalFeatureSpec]
    ) -> tuple[torch.Tensor, int]:
        def pieces(feature: MultiModalFeatureSpec) -> int:
            field = feature.data.get("audio_pieces") if feature.modality == "video" else None
            return int(field.data) if field is not None else 0

        if not any(pieces(f) for f in mm_features):
            return super().get_mrope_input_positions(input_tokens, mm_features)
        merge = self.config.vision_config.spatial_merge_size
        tokens_per_second = getattr(self.config.vision_config, "tokens_per_second", 2)
        blocks = []
        for feature in mm_features:
            offset = feature.mm_position.offset
            if feature.modality == "image":
                _, h, w = feature.data["image_grid_thw"].data.tolist()
                blocks.append((offset, np.indices((1, h // merge, w // merge)).reshape(3, -1), False))
                continue
            t, h, w = feature.data["video_grid_thw"].data.tolist()
            h, w = h // merge, w // merge
            seconds = float(feature.data["second_per_grid_ts"].data)
            if n := pieces(feature):
                split = audio_split(t, seconds, n * self.audio.tokens_per_piece)
                blocks.append((offset, av_block_positions(t, h, w, seconds, split), True))
            else:
                grid = np.indices((t, h, w))
                grid[0] = (grid[0] * seconds * tokens_per_second).astype(np.int64)
                blocks.append((offset, grid.reshape(3, -1), False))
        positions, delta = mrope_positions(len(input_tokens), blocks)
        return torch.from_numpy(positions), delta

    def get_encoder_cudagraph_config(self) -> Any:
        # The captured graphs run the vision tower alone; a video item also needs its sound interleaved.
        config = super().get_encoder_cudagraph_config()
        return dataclasses.replace(config, modalities=[m for m in config.modalities if m != "video"])

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        audio: list[tuple[str, torch.Tensor]] = []

        def others() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                if name.startswith("audio."):
                    audio.append((name.removeprefix("audio."), tensor))
                else:
                    yield name, tensor

        loaded = set(super().load_weights(others()))
        if isinstance(self.audio, StageMissingLayer):
            return loaded  # video limited to 0 per prompt: the tower is not built, its weights are not needed
        return loaded | {f"audio.{name}" for name in self.audio.load_weights(audio)}


__all__ = ["VideoSalmonn2PlusForConditionalGeneration"]
