"""The original video-SALMONN 2's config.json (model_type "video_salmonn_2", a flat Qwen2 config with LLaVA
keys) as the composite config vLLM's classes read; registered with transformers by the plugin entry point
(worker.models.vllm_plugin.register). Sizes the release leaves out: video_salmonn2_layout."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig, Qwen2Config, SiglipVisionConfig

from worker.models.vllm_plugin.video_salmonn2_layout import (
    DEFAULT_PLACEHOLDER_ID,
    MODEL_TYPE,
    QFORMER_BERT_BASE,
    SIGLIP_SO400M,
    WHISPER_LARGE_V3,
)

# Keys that describe the authors' classes or training run, not the language model.
_NOT_TEXT = ("architectures", "auto_map", "_name_or_path", "model_type", "vision_config", "whisper_config")


class VideoSalmonn2Config(PretrainedConfig):
    """The release's flat config as a composite one: ``text_config`` (Qwen2), ``vision_config`` (SigLIP) and
    the LLaVA-OneVision keys vLLM's classes read, the release's own keys kept as they are."""

    model_type = MODEL_TYPE

    def __init__(self, **kwargs: Any) -> None:
        vision = kwargs.pop("vision_config", None)
        text = kwargs.pop("text_config", None)
        super().__init__(**kwargs)
        if isinstance(text, PretrainedConfig):
            self.text_config = text
        else:
            fields = dict(text) if text else {k: v for k, v in kwargs.items() if k not in _NOT_TEXT}
            fields.pop("model_type", None)
            fields["architectures"] = ["Qwen2ForCausalLM"]
            self.text_config = Qwen2Config(**fields)
        if isinstance(vision, PretrainedConfig):
            self.vision_config = vision
        else:
            self.vision_config = SiglipVisionConfig(**(SIGLIP_SO400M | dict(vision or {})))
        # What vLLM's LLaVA-OneVision classes read: the layer before the last, all patches, GELU projector.
        self.vision_feature_layer = -2
        self.vision_feature_select_strategy = "full"
        self.projector_hidden_act = "gelu"
        self.multimodal_projector_bias = True
        self.image_token_index = int(kwargs.get("image_token_index") or DEFAULT_PLACEHOLDER_ID)

    def whisper(self) -> dict[str, Any]:
        return WHISPER_LARGE_V3 | dict(getattr(self, "whisper_config", None) or {})

    def qformer(self) -> dict[str, Any]:
        return QFORMER_BERT_BASE | dict(getattr(self, "qformer_config", None) or {})


__all__ = ["VideoSalmonn2Config"]
