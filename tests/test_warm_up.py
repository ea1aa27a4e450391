"""The engine's warm-up at cold start (vLLM's own renderer warm-up: the HF processor and chat template
built before the first job). A failure there must leave the worker serving; here the renderer is a fake
that raises, the rest of ``Engine`` and ``EngineSlot`` real. ENGINE_WARM_UP "early" starts it while the
engine core starts (worker/engine_warmup.py): vLLM's real renderer factory builds that renderer, without an
engine. That the real engine warms up is checked on the worker's log in test_local_api.py."""

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


class EarlyFakeRenderer(FakeRenderer):
    """What worker.engine_warmup.EarlyWarmRenderer offers the engine: a warm-up already under way."""

    warm_up_seconds = 1.5

    def wait_warm(self) -> bool:
        self.calls.append("waited")
        return not self.fail


@pytest.mark.parametrize("mode,calls", [("early", ["waited"]), ("after", ["waited"]), ("off", [])])
def test_an_early_warm_up_is_waited_for_and_off_skips_it_fake_renderer(mode: str, calls: list[str]) -> None:
    engine = engine_with_fake_renderer(fail=False)
    engine.llm.renderer = EarlyFakeRenderer(fail=False)
    engine.warm_up_mode = mode
    # A renderer warming up already is only waited for (never warmed twice); "off" leaves it to the first job.
    assert engine.warm_up() is (mode != "off") and engine.llm.renderer.calls == calls


def test_vllm_builds_the_early_renderer_only_inside_the_block_and_it_warms_up_after_the_fork(
    tiny_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM's own renderer factory and warm-up on the tiny model's real configuration (no engine core).
    Where vLLM forks its engine core (on a GPU), the warm-up starts once this process has forked."""
    import multiprocessing
    import os

    import worker.engine_warmup
    from vllm import AsyncEngineArgs
    from vllm.renderers.hf import HfRenderer
    from vllm.renderers.registry import RENDERER_REGISTRY, renderer_from_config
    from vllm.usage.usage_lib import UsageContext

    from worker.engine_warmup import EarlyWarmRenderer, early_warm_up

    args = AsyncEngineArgs(model=str(tiny_model), load_format="dummy", max_model_len=4096, enforce_eager=True)
    config = args.create_engine_config(UsageContext.ENGINE_CONTEXT)
    monkeypatch.setattr(worker.engine_warmup, "get_mp_context", lambda: multiprocessing.get_context("fork"))
    with early_warm_up():
        renderer = renderer_from_config(config)
    assert isinstance(renderer, EarlyWarmRenderer)
    try:
        assert not renderer.started  # not before the fork
        if (child := os.fork()) == 0:  # what vLLM does next: start its engine core
            os._exit(0)
        os.waitpid(child, 0)
        assert renderer.started
        assert renderer.wait_warm() and renderer.warm_up_seconds is not None
    finally:
        renderer.shutdown()
    with early_warm_up(enabled=False):
        assert RENDERER_REGISTRY.load_renderer_cls("hf") is HfRenderer
    assert RENDERER_REGISTRY.load_renderer_cls("hf") is HfRenderer  # other engines of the process keep vLLM's
