"""Fakes for unit tests that run the job pipeline without the vLLM engine.

Everything up to the engine is real (validation, fetching, PyAV decoding, frame planning, the Qwen2.5-VL
adapter and the model's own tokenizer and chat template); only ``generate`` is replaced. Tests that use
these say so in their names ("fake_engine").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from worker.models.adapters import adapter_for
from worker.models.adapters.qwen2_5_vl import Qwen25VLAdapter
from worker.engine import Engine, Generation, MediaPixels, PixelLimits
from worker.api.errors import ValidationError


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

    def warm_up(self) -> bool:
        return True

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


@dataclass
class FakeRequest:
    inputs: dict[str, Any]
    request_id: str
    json_schema: dict[str, Any] | None
    cancelled: bool = False

    @property
    def prompt(self) -> str:
        return self.inputs["prompt"]

    @property
    def video(self) -> tuple[Any, dict[str, Any]] | None:
        return self.inputs.get("multi_modal_data", {}).get("video")


class RecordingFakeEngine(Engine):
    """The real ``Engine`` class with the adapter and tokenizer of a model folder (any family); ``generate``
    records each request, waits for ``gate`` (when set: tests hold requests back to see what the pipeline
    does meanwhile) and answers ``answer(request)``."""

    def __init__(self, model_dir: Path, *, max_model_len: int = 4096) -> None:
        config = json.loads((model_dir / "config.json").read_text())
        llm = SimpleNamespace(
            vllm_config=SimpleNamespace(
                model_config=SimpleNamespace(max_model_len=max_model_len, get_diff_sampling_param=dict)
            ),
            errored=False,
        )
        pixels = MediaPixels(video=PixelLimits(56 * 56, 448 * 448), image=PixelLimits(56 * 56, 1280 * 28 * 28))
        tokenizer = load_tokenizer(model_dir)
        super().__init__(llm, adapter_for(config["architectures"]), tokenizer, "fake/" + model_dir.name, pixels)
        self.requests: list[FakeRequest] = []
        self.gate: Callable[[FakeRequest], Awaitable[None]] | None = None
        self.answer: Callable[[FakeRequest], str] | None = None
        self.finish_reason = "stop"

    async def generate(
        self,
        inputs: dict[str, Any],
        sampling: dict[str, Any],
        request_id: str,
        json_schema: dict[str, Any] | None = None,
    ) -> Generation:
        request = FakeRequest(inputs, request_id, json_schema)
        self.requests.append(request)
        try:
            if self.gate is not None:
                await self.gate(request)
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            request.cancelled = True
            raise
        text = self.answer(request) if self.answer else f"caption of request {len(self.requests)}"
        return Generation(
            text=text,
            prompt_tokens=count_tokens(self, request.prompt),
            completion_tokens=count_tokens(self, text),
            finish_reason=self.finish_reason,
            sampling=dict(sampling),
        )

    def check_json_schema(self, schema: dict[str, Any]) -> None:
        if "x-uncompilable" in schema:
            raise ValidationError("invalid input: json_schema: the engine cannot use this schema: fake")


def count_tokens(engine: Any, text: str) -> int:
    return len(engine.tokenizer.encode(text, add_special_tokens=False))
