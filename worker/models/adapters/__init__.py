"""One adapter per model family, chosen from the model config's ``architectures``."""

from __future__ import annotations

from collections.abc import Sequence

from worker.models.adapters.base import MediaLimits, ModelAdapter
from worker.models.adapters.qwen2_5_omni import Qwen25OmniAdapter
from worker.models.adapters.qwen2_5_vl import Qwen25VLAdapter
from worker.models.adapters.qwen2_vl import Qwen2VLAdapter
from worker.models.adapters.qwen3_vl import Qwen3VLAdapter
from worker.models.adapters.tarsier2 import Tarsier2Adapter
from worker.models.adapters.video_salmonn2 import VideoSalmonn2Adapter
from worker.models.adapters.video_salmonn2_plus import VideoSalmonn2PlusAdapter
from worker.api.errors import EngineError

ADAPTERS: tuple[type[ModelAdapter], ...] = (
    Qwen25VLAdapter,
    Qwen2VLAdapter,
    Qwen3VLAdapter,
    Qwen25OmniAdapter,
    VideoSalmonn2PlusAdapter,
    Tarsier2Adapter,
    VideoSalmonn2Adapter,
)


def adapter_for(architectures: Sequence[str] | None) -> ModelAdapter:
    for cls in ADAPTERS:
        if any(arch in cls.architectures for arch in architectures or ()):
            return cls()
    supported = sorted(arch for cls in ADAPTERS for arch in cls.architectures)
    raise EngineError(f"model architectures {list(architectures or [])} are not supported; supported: {supported}")


__all__ = ["ADAPTERS", "MediaLimits", "ModelAdapter", "adapter_for"]
