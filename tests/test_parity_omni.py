"""Qwen2.5-Omni thinker parity (issue 17, worker/devtools/parity/omni.py): a tiny Qwen2.5-Omni folder with
seeded float32 weights, jobs through the worker end to end (CaptionService, PyAV, the adapter, vLLM with the
worker's plugin) against transformers' thinker given the worker's frames, their true timing and its sound.
Video with its sound interleaved (``use_audio_in_video``), video without sound and an image: prompt ids,
grid, TMRoPE positions and the first 24 greedy ids equal. The same engine then runs the case that killed
vLLM 0.26's engine (two jobs in flight, same frames, different sound), the sound appended after the frames
(the old layout, which must differ from the reference) and the interleaved layout at five sampling rates.
One engine start, in a process of its own."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.conftest import KV_CACHE_GIB
from tests.engine_script import run_script
from worker.media.audio import AudioClip
from worker.media.frames import DecodedFrames
from worker.media.probe import Probe
from worker.models.adapters.base import MediaLimits
from worker.models.adapters.qwen2_5_omni import Qwen25OmniAdapter


@pytest.fixture(scope="module")
def omni_parity(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("parity-omni")
    out = work / "result.json"
    args = ["worker.devtools.parity.omni", str(out), "--work", str(work), "--kv-cache-gib", KV_CACHE_GIB]
    return run_script(args, out, timeout=1100)


@pytest.mark.engine
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("case", ["omni video + sound", "omni video + other sound", "omni video", "omni image"])
def test_worker_equals_transformers_thinker(omni_parity: dict[str, Any], case: str) -> None:
    report = next(r for r in omni_parity["reports"] if r["name"] == case)
    assert report["prompt_ids_equal"], (report["first_prompt_difference"], report["placeholders"])
    assert report["grid_equal"] and report["values_equal"], (report["grids"], report["values"])
    assert report["pixels_max_difference"] == 0.0
    assert report["positions_equal"] is True, report["first_position_difference"]
    assert report["tokens_compared"] >= 16 and report["tokens_equal"], report["divergence"]
    if "sound" in case:
        # The sound is inside the video's block: <|AUDIO|> tokens, no <|audio_bos|>...<|AUDIO|> item of its own.
        assert report["placeholders"]["<|AUDIO|>"][0] > 0


@pytest.mark.engine
@pytest.mark.timeout(1200)
def test_same_frames_different_sound_in_flight_together(omni_parity: dict[str, Any]) -> None:
    together = omni_parity["in_flight_together"]
    assert together["errors"] == [None, None] and together["engine_alive"] is True
    # Each job got its own layout (4 s and 2 s of sound: 100 and 76 tokens), not the other's.
    assert together["prompt_ids_as_alone"] == [True, True] and together["ids_as_alone"] == [True, True]
    assert together["prompt_lengths"][0] - together["prompt_lengths"][1] == 24


@pytest.mark.engine
@pytest.mark.timeout(1200)
def test_sound_appended_after_the_frames_is_not_the_reference(omni_parity: dict[str, Any]) -> None:
    control = omni_parity["control"]
    assert not control["prompt_ids_equal"] and control["positions_equal"] is False
    assert not control["tokens_equal"]


@pytest.mark.engine
@pytest.mark.timeout(1200)
def test_interleaved_layout_at_every_rate(omni_parity: dict[str, Any]) -> None:
    rates = omni_parity["rates"]
    assert [r["fps"] for r in rates] == [0.5, 0.625, 1.0, 2.5, 4.0]
    for rate in rates:
        assert rate["prompt_ids_equal"] and rate["positions_equal"], rate


def test_video_with_sound_is_interleaved() -> None:
    stamps = [0.25 + 0.5 * i for i in range(4)]
    frames = DecodedFrames(np.zeros((4, 56, 56, 3), dtype=np.uint8), stamps, [2, 7, 12, 17])
    probe = Probe(2.0, 56, 56, 10.0, 0, "h264", 0.0, True, 2.0)
    clip = AudioClip(np.zeros(32_000, dtype=np.float32), start=0.0)
    inputs = Qwen25OmniAdapter().video_inputs("p", frames, probe, 2.0, clip)
    assert inputs["multi_modal_data"]["audio"][1] == 16_000
    kwargs = inputs["mm_processor_kwargs"]
    assert kwargs["use_audio_in_video"] is True and kwargs["fps"] == 2.0
    # vLLM lays the chunks out by this (1 s per frame pair when missing): the same rate as ``fps``.
    assert kwargs["second_per_grid_ts"] == [1.0]
    silent = Qwen25OmniAdapter().video_inputs("p", frames, probe, 0.5, None)["mm_processor_kwargs"]
    assert "use_audio_in_video" not in silent and "second_per_grid_ts" not in silent
    limits = MediaLimits(max_frames=8, video_max_pixels=448 * 448, image_max_pixels=448 * 448)
    assert Qwen25OmniAdapter().engine_kwargs(limits)["mm_processor_cache_gb"] == 0


def test_interleaved_prompt_has_no_sound_item() -> None:
    from worker.devtools.dummy_model import QWEN2_5_OMNI_CHAT_TEMPLATE

    class Template:
        def apply_chat_template(self, messages: list[Any], **kwargs: object) -> str:
            import jinja2

            return jinja2.Template(QWEN2_5_OMNI_CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)

    prompt = Qwen25OmniAdapter().build_prompt(Template(), "Describe.", "video", with_audio=True)
    assert "<|vision_bos|><|VIDEO|><|vision_eos|>Describe." in prompt and "<|AUDIO|>" not in prompt
