"""The engine's warm-up at cold start (vLLM's own renderer warm-up: the HF processor and chat template
built before the first job). A failure there must leave the worker serving; here the renderer is a fake
that raises, the rest of ``Engine`` and ``EngineSlot`` real. That the real engine warms up is checked on
the worker's log in test_local_api.py."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from worker.config import Settings
from worker.engine import Engine, EngineSlot, MediaPixels, PixelLimits


class FakeRenderer:
    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.calls: list[Any] = []

    def warmup(self, chat_params: Any) -> None:
        self.calls.append(chat_params)
        if self.fail:
            raise RuntimeError("processor download refused")


def engine_with_fake_renderer(fail: bool) -> Engine:
    llm = SimpleNamespace(
        vllm_config=SimpleNamespace(model_config=SimpleNamespace(max_model_len=4096, get_diff_sampling_param=dict)),
        errored=False,
        renderer=FakeRenderer(fail),
        shutdown=lambda: None,  # EngineSlot registers it to run at exit
    )
    pixels = MediaPixels(video=PixelLimits(56 * 56, 448 * 448), image=PixelLimits(56 * 56, 1280 * 28 * 28))
    return Engine(llm, adapter=None, tokenizer=None, model="fake-renderer", pixels=pixels)  # type: ignore[arg-type]


def test_the_slot_warms_the_engine_up_before_serving_fake_renderer(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engine_with_fake_renderer(fail=False)
    monkeypatch.setattr(Engine, "build", staticmethod(lambda settings: engine))
    slot = EngineSlot()
    slot.start(Settings())
    assert slot.get() is engine and len(engine.llm.renderer.calls) == 1


def test_a_failed_warm_up_leaves_the_worker_serving_fake_renderer(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine = engine_with_fake_renderer(fail=True)
    monkeypatch.setattr(Engine, "build", staticmethod(lambda settings: engine))
    slot = EngineSlot()
    with caplog.at_level(logging.WARNING, logger="worker.engine"):
        slot.start(Settings())
    assert slot.get() is engine and engine.healthy  # jobs are served; the first one pays for the set-up
    assert "engine warm-up failed" in caplog.text and "processor download refused" in caplog.text
