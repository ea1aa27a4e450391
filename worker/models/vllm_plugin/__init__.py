"""vLLM model plugins of this worker, registered through the ``vllm.general_plugins`` entry point
(pyproject.toml), which vLLM loads in every process it starts: front end, engine core and workers.

Written against vLLM 0.26.0's internal model APIs (multimodal processor, SupportsMRoPE); they change
between releases, so the plugin is pinned to that release like the rest of the worker."""

from __future__ import annotations

ARCHITECTURES = {
    "video_SALMONN2_plus": "worker.models.vllm_plugin.video_salmonn2_plus:VideoSalmonn2PlusForConditionalGeneration",
    "Tarsier2ForConditionalGeneration": "worker.models.vllm_plugin.tarsier2:Tarsier2ForConditionalGeneration",
    "VideoSALMONN2ForCausalLM": "worker.models.vllm_plugin.video_salmonn2:VideoSalmonn2ForCausalLM",
    "Qwen2_5OmniModel": "worker.models.vllm_plugin.qwen2_5_omni_thinker:Qwen25OmniThinker",
    "Qwen2_5OmniForConditionalGeneration": "worker.models.vllm_plugin.qwen2_5_omni_thinker:Qwen25OmniThinker",
}
# Architectures vLLM serves itself that the worker's class (vLLM's own, put right) replaces.
REPLACED = frozenset({"Qwen2_5OmniModel", "Qwen2_5OmniForConditionalGeneration"})
# pyproject.toml's entry point: vLLM's spawned processes find the plugins only through it.
ENTRY_POINT = "worker.models.vllm_plugin:register"
NOT_REGISTERED = (
    "the worker's vLLM model plugins are not registered in this Python environment, so vLLM's processes "
    "cannot load {what}: install the project once (`pip install --no-deps --no-build-isolation -e .` in the "
    "repository, as the Dockerfile and setup_test_env.sh do)"
)


def registered() -> bool:
    """Whether this environment carries the entry point, so that every process vLLM starts registers the
    plugins. Without it a plugin's model fails to start, or, for Qwen2.5-Omni, quietly runs vLLM's own class."""
    from importlib.metadata import entry_points

    return any(ep.value == ENTRY_POINT for ep in entry_points(group="vllm.general_plugins"))


def served_by_plugin(architectures: list[str] | None) -> list[str]:
    """The architectures among ``architectures`` that only this worker's plugins serve (or serve right)."""
    return [arch for arch in architectures or [] if arch in ARCHITECTURES]


def register() -> None:
    """Map each architecture to its class, lazily: the module is imported only when a model needs it; and
    teach transformers the original video-SALMONN 2's config type, which vLLM reads before any model."""
    from transformers import AutoConfig
    from vllm import ModelRegistry

    from worker.models.vllm_plugin.video_salmonn2_config import VideoSalmonn2Config
    from worker.models.vllm_plugin.video_salmonn2_layout import MODEL_TYPE

    AutoConfig.register(MODEL_TYPE, VideoSalmonn2Config, exist_ok=True)

    supported = set(ModelRegistry.get_supported_archs())
    for arch, target in ARCHITECTURES.items():
        if arch not in supported or arch in REPLACED:
            ModelRegistry.register_model(arch, target)
