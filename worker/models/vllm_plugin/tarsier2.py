"""Tarsier2 (omni-research/Tarsier2-Recap-7b, bytedance/tarsier) on vLLM: Qwen2-VL under a LLaVA-style
wrapper, served until vLLM 0.23 as ``Tarsier2ForConditionalGeneration`` and ported here to 0.26's APIs.

The model is Qwen2-VL unchanged (vision tower with its merger as the projector, language model, M-RoPE);
what differs is how the release is stored. Its config is read through ``tarsier2_hf_overrides``
(worker.models.vllm_plugin.tarsier2_config, passed by the worker's adapter as vLLM's ``hf_overrides``), its
processor's pixel range is normalised at load, and its tensors are mapped name by name: ``vision_tower.*``
to ``visual.*`` and ``language_model.{model,lm_head}.*`` as they are, anything else refused, every
parameter required.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from transformers import Qwen2VLConfig
from vllm.config import VllmConfig
from vllm.model_executor.models.qwen2_vl import (
    Qwen2VLDummyInputsBuilder,
    Qwen2VLForConditionalGeneration,
    Qwen2VLMultiModalProcessor,
    Qwen2VLProcessingInfo,
)
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper
from vllm.multimodal import MULTIMODAL_REGISTRY

from worker.models.vllm_plugin.tarsier2_config import (
    ARCHITECTURE,
    WEIGHT_PREFIXES,
    normalise_pixel_range,
    vllm_weight_name,
)


class Tarsier2ProcessingInfo(Qwen2VLProcessingInfo):
    def get_hf_processor(self, **kwargs: object) -> Any:
        """Qwen2-VL's processor from the release's files, its pixel range under transformers 5's keys."""
        processor = super().get_hf_processor(**kwargs)
        normalise_pixel_range(processor.image_processor)
        normalise_pixel_range(processor.video_processor)
        return processor


@MULTIMODAL_REGISTRY.register_processor(
    Qwen2VLMultiModalProcessor, info=Tarsier2ProcessingInfo, dummy_inputs=Qwen2VLDummyInputsBuilder
)
class Tarsier2ForConditionalGeneration(Qwen2VLForConditionalGeneration):
    """Qwen2-VL with the release's tensor names mapped strictly."""

    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix=dict(WEIGHT_PREFIXES))

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        config = vllm_config.model_config.hf_config
        if not isinstance(config, Qwen2VLConfig):
            raise ValueError(
                f"{ARCHITECTURE} needs the release's config read as Qwen2-VL: pass "
                "hf_overrides=worker.models.vllm_plugin.tarsier2_config.tarsier2_hf_overrides "
                f"(got {type(config).__name__})"
            )
        super().__init__(vllm_config=vllm_config, prefix=prefix)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        def checked() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in weights:
                vllm_weight_name(name)  # refuses names outside the release's layout
                yield name, tensor

        loaded = AutoWeightsLoader(self).load_weights(checked(), mapper=self.hf_to_vllm_mapper)
        missing = {name for name, _ in self.named_parameters()} - set(loaded)
        if missing:
            raise ValueError(f"Tarsier2 checkpoint lacks {len(missing)} tensors, e.g. {sorted(missing)[:5]}")
        return loaded


__all__ = ["Tarsier2ForConditionalGeneration"]
