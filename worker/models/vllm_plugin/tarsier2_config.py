"""Tarsier2's released files (omni-research/Tarsier2-Recap-7b) read the way vLLM's Qwen2-VL classes need.

The authors save a LLaVA-style wrapper around Qwen2-VL (model_type "llava", architecture
"TarsierForConditionalGeneration", a Qwen2-VL ``text_config`` and ``vision_config``), which transformers 5
parses into two nested Qwen2VLConfigs that vLLM cannot size; and an image processor saved with
transformers 4.4x, whose ``size`` may hold ``min_pixels``/``max_pixels``, keys transformers 5 refuses when it
resizes. Both are normalised here, at load, with transformers alone (no vLLM import), so the adapter can
hand ``tarsier2_hf_overrides`` to the engine arguments.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

# The architecture this worker's plugin serves (the name vLLM <= 0.23 used) and the one the release declares.
ARCHITECTURE = "Tarsier2ForConditionalGeneration"
RELEASED_ARCHITECTURE = "TarsierForConditionalGeneration"

# Qwen2-VL's special token ids, which the release keeps in its text_config.
_TOKEN_IDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
# Keys of the wrapper's sub-configs that describe the authors' classes, not the model.
_NOT_MODEL = ("architectures", "auto_map", "_name_or_path", "attn_implementation", "vision_config", "text_config")


# The release's tensor names (the authors' TarsierForConditionalGeneration: ``vision_tower`` is Qwen2-VL's
# vision transformer with its merger, the projector; ``language_model`` their Qwen2VLForCausalLM) and vLLM's.
WEIGHT_PREFIXES: dict[str, str] = {
    "vision_tower.": "visual.",
    "language_model.model.": "language_model.model.",
    "language_model.lm_head.": "language_model.lm_head.",
}


def vllm_weight_name(name: str) -> str:
    """vLLM's name for the release's tensor ``name``; ValueError for a name outside the release's layout."""
    for source, target in WEIGHT_PREFIXES.items():
        if name.startswith(source):
            return target + name[len(source) :]
    raise ValueError(
        f"unexpected tensor {name!r} in a Tarsier2 checkpoint: its tensors are "
        + ", ".join(f"{prefix}*" for prefix in WEIGHT_PREFIXES)
    )


def raw_config(name_or_path: str, revision: str | None = None) -> dict[str, Any]:
    """config.json of a local folder or hub repo, as written (no config class applied)."""
    from transformers import PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(name_or_path, revision=revision)
    return config


def qwen2_vl_config(raw: dict[str, Any]) -> Any:
    """The Qwen2VLConfig (transformers 5 layout) the wrapper ``raw`` describes, under ``ARCHITECTURE``.

    Raises ValueError for a wrapper that is not Tarsier2's (Tarsier v1 pairs a CLIP tower with a Llama)."""
    from transformers import Qwen2VLConfig

    text, vision = raw.get("text_config") or {}, raw.get("vision_config") or {}
    types = (raw.get("model_type"), text.get("model_type"), vision.get("model_type"))
    if types != ("llava", "qwen2_vl", "qwen2_vl"):
        raise ValueError(
            "not a Tarsier2 checkpoint: expected a LLaVA wrapper (model_type 'llava') around Qwen2-VL "
            f"(text and vision model_type 'qwen2_vl'), got model_type {raw.get('model_type')!r} with "
            f"text {text.get('model_type')!r} and vision {vision.get('model_type')!r}; Tarsier v1 "
            "(omni-research/Tarsier-7b/34b, CLIP + Llama) is not served by this worker"
        )
    text_fields = {k: v for k, v in text.items() if k not in _NOT_MODEL}
    vision_fields = {k: v for k, v in vision.items() if k not in _NOT_MODEL}
    if vision_fields.get("hidden_size") not in (None, text_fields.get("hidden_size")):
        raise ValueError(
            f"Tarsier2 vision_config.hidden_size {vision_fields['hidden_size']} is not the text width "
            f"{text_fields.get('hidden_size')}: the merger must project into the language model"
        )
    config = Qwen2VLConfig(
        text_config=text_fields,
        vision_config=vision_fields,
        architectures=[ARCHITECTURE],
        tie_word_embeddings=bool(text_fields.get("tie_word_embeddings", False)),
        **{name: text_fields[name] for name in _TOKEN_IDS if name in text_fields},
    )
    dtype = raw.get("torch_dtype") or raw.get("dtype") or text_fields.get("torch_dtype")
    if dtype is not None:
        config.dtype = dtype
    return config


def tarsier2_hf_overrides(config: Any) -> Any:
    """vLLM ``hf_overrides``: the release's LLaVA wrapper becomes the Qwen2VLConfig it wraps, re-read from
    config.json (transformers 5 loses the vision sizes when it parses the wrapper). Any other config (and
    the probe vLLM makes with a dummy one) passes unchanged."""
    if getattr(config, "model_type", None) != "llava":
        return config
    source = getattr(config, "_name_or_path", None)
    if not source:
        raise ValueError("a Tarsier2 config without its source path cannot be normalised")
    normalised = qwen2_vl_config(raw_config(source, getattr(config, "_commit_hash", None)))
    normalised._name_or_path = source
    log.info("Tarsier2: LLaVA wrapper of %s read as Qwen2-VL (%s)", source, ARCHITECTURE)
    return normalised


def normalise_pixel_range(processor: Any) -> Any:
    """``processor`` (a Qwen2-VL image or video processor) with its pixel range under the keys transformers 5
    resizes by (``shortest_edge``/``longest_edge``, i.e. min/max pixels), taken from the keys transformers
    4.4x saved (``size.min_pixels``/``max_pixels``, or the top-level ``min_pixels``/``max_pixels``)."""
    size = processor.size

    def first(*names: str) -> int | None:
        for name in names:
            value = size.get(name) if isinstance(size, dict) else getattr(size, name, None)
            if value is None:
                value = getattr(processor, name, None) if name in ("min_pixels", "max_pixels") else None
            if value is not None:
                return int(value)
        return None

    low, high = first("shortest_edge", "min_pixels"), first("longest_edge", "max_pixels")
    current = (
        (size.get("shortest_edge"), size.get("longest_edge"))
        if isinstance(size, dict)
        else (getattr(size, "shortest_edge", None), getattr(size, "longest_edge", None))
    )
    if low is None or high is None or current == (low, high):
        return processor
    from transformers.image_utils import SizeDict

    processor.size = SizeDict(shortest_edge=low, longest_edge=high)
    return processor


__all__ = [
    "ARCHITECTURE",
    "RELEASED_ARCHITECTURE",
    "normalise_pixel_range",
    "qwen2_vl_config",
    "raw_config",
    "tarsier2_hf_overrides",
    "vllm_weight_name",
    "WEIGHT_PREFIXES",
]
