"""vLLM model plugins of this worker, registered through the ``vllm.general_plugins`` entry point
(pyproject.toml), which vLLM loads in every process it starts: front end, engine core and workers.

Written against vLLM 0.26.0's internal model APIs (multimodal processor, SupportsMRoPE); they change
between releases, so the plugin is pinned to that release like the rest of the worker."""

from __future__ import annotations

ARCHITECTURES = {
    "video_SALMONN2_plus": "worker.models.vllm_plugin.video_salmonn2_plus:VideoSalmonn2PlusForConditionalGeneration",
    "Tarsier2ForConditionalGeneration": "worker.models.vllm_plugin.tarsier2:Tarsier2ForConditionalGeneration",
    "Qwen2_5OmniModel": "worker.models.vllm_plugin.qwen2_5_omni_thinker:Qwen25OmniThinker",
    "Qwen2_5OmniForConditionalGeneration": "worker.models.vllm_plugin.qwen2_5_omni_thinker:Qwen25OmniThinker",
}
# Architectures vLLM serves itself that the worker's class (vLLM's own, put right) replaces.
REPLACED = frozenset({"Qwen2_5OmniModel", "Qwen2_5OmniForConditionalGeneration"})


def register() -> None:
    """Map each architecture to its class, lazily: the module is imported only when a model needs it."""
    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    for arch, target in ARCHITECTURES.items():
        if arch not in supported or arch in REPLACED:
            ModelRegistry.register_model(arch, target)
