"""Fakes for unit tests that run the job pipeline without the vLLM engine.

Everything up to the engine is real (validation, fetching, PyAV decoding, frame planning, the Qwen2.5-VL
adapter and the model's own tokenizer and chat template); only ``generate`` is replaced. Tests that use
these say so in their names ("fake_engine").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from worker.adapters.qwen2_5_vl import Qwen25VLAdapter
from worker.engine import Generation, MediaPixels, PixelLimits


class FakeEngine:
    """Answers every request with a fixed caption after checking it is what vLLM would be given."""

    def __init__(self, tokenizer: Any, *, max_model_len: int = 4096, fail_with: BaseException | None = None) -> None:
        self.adapter = Qwen25VLAdapter()
        self.tokenizer = tokenizer
        self.model = "fake-engine"
        self.pixels = MediaPixels(video=PixelLimits(56 * 56, 448 * 448), image=PixelLimits(56 * 56, 1280 * 28 * 28))
        self.max_model_len = max_model_len
        self.healthy = True
        self.fail_with = fail_with
        self.requests = 0
        self.on_death: Any = None
        self.shut_down = False

    def shutdown(self) -> None:
        self.shut_down = True

    async def generate(self, inputs: dict[str, Any], sampling: dict[str, Any], request_id: str) -> Generation:
        self.requests += 1
        if self.fail_with is not None:
            raise self.fail_with
        data = inputs["multi_modal_data"]
        if "video" in data:
            frames, metadata = data["video"]
            assert frames.shape[0] == len(metadata["frames_indices"]) >= 1
        else:
            frames = data["image"][None]
        assert isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4, frames
        assert frames.shape[1] % 28 == 0 and frames.shape[2] % 28 == 0
        prompt_tokens = len(self.tokenizer(inputs["prompt"])["input_ids"])
        return Generation(
            text="a fake caption",
            prompt_tokens=prompt_tokens,
            completion_tokens=3,
            finish_reason="stop",
            sampling=dict(sampling),
        )


class FakeEngineSlot:
    """Stands in for worker.engine.EngineSlot: always the same healthy fake engine."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    def get(self) -> FakeEngine:
        return self.engine

    async def acquire(self) -> FakeEngine:
        return self.engine


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)
