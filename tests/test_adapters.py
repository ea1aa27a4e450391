"""Model-family adapters without an engine: choice by architecture, token arithmetic, vLLM inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.models.adapters import ADAPTERS, MediaLimits, adapter_for
from worker.models.adapters.qwen2_5_omni import Qwen25OmniAdapter
from worker.media.audio import AudioClip
from worker.media.frames import DecodedFrames
from worker.media.probe import Probe
from worker.api.errors import EngineError

LIMITS = MediaLimits(max_frames=64, video_max_pixels=448 * 448, image_max_pixels=1280 * 28 * 28)


@pytest.mark.parametrize(
    "architecture,family",
    [
        ("Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl"),
        ("Qwen2VLForConditionalGeneration", "qwen2_vl"),
        ("Qwen3VLForConditionalGeneration", "qwen3_vl"),
        ("Qwen3VLMoeForConditionalGeneration", "qwen3_vl"),
        ("Qwen2_5OmniModel", "qwen2_5_omni"),
        ("Qwen2_5OmniForConditionalGeneration", "qwen2_5_omni"),
    ],
)
def test_adapter_is_chosen_from_the_architecture(architecture: str, family: str) -> None:
    assert adapter_for([architecture]).family == family


def test_unknown_architecture_names_the_supported_ones() -> None:
    with pytest.raises(EngineError, match="LlavaForConditionalGeneration.*Qwen2VLForConditionalGeneration"):
        adapter_for(["LlavaForConditionalGeneration"])
    with pytest.raises(EngineError):
        adapter_for(None)


def test_every_architecture_has_one_adapter() -> None:
    names = [arch for cls in ADAPTERS for arch in cls.architectures]
    assert len(names) == len(set(names))


def test_profile_limits_follow_the_geometry_and_audio() -> None:
    vl = adapter_for(["Qwen2_5_VLForConditionalGeneration"]).engine_kwargs(LIMITS)["limit_mm_per_prompt"]
    assert vl["video"] == {"count": 1, "num_frames": 64, "width": 448, "height": 448}
    assert vl["image"]["width"] == 980 and "audio" not in vl  # isqrt(1003520) = 1001 -> 35 * 28
    qwen3 = adapter_for(["Qwen3VLForConditionalGeneration"]).engine_kwargs(LIMITS)["limit_mm_per_prompt"]
    assert qwen3["video"]["width"] % 32 == 0 and qwen3["video"]["width"] == 448
    omni = Qwen25OmniAdapter().engine_kwargs(LIMITS)["limit_mm_per_prompt"]
    assert omni["audio"] == {"count": 1, "length": 300 * 16_000}


@given(st.integers(1, 300 * 16_000))
def test_omni_audio_tokens_match_whisper_front_end(samples: int) -> None:
    tokens = Qwen25OmniAdapter().audio_tokens(samples)
    # 25 tokens per second, never more than one over.
    assert abs(tokens - samples / 640) <= 1.01
    assert Qwen25OmniAdapter().audio_tokens(samples + 640) == tokens + 1


@pytest.mark.parametrize("seconds", [0.5, 1.0, 2.0, 7.3, 29.99])
def test_omni_audio_tokens_match_the_real_processor_arithmetic(seconds: float) -> None:
    from transformers import WhisperFeatureExtractor

    samples = round(seconds * 16_000)
    extractor = WhisperFeatureExtractor(feature_size=128)
    features = extractor(
        np.zeros(samples, dtype=np.float32), sampling_rate=16_000, padding="max_length", return_attention_mask=True
    )
    # Qwen2_5OmniProcessor's own formula over the feature extractor's mask.
    mel = int(features["attention_mask"].sum())
    expected = ((mel - 1) // 2 + 1 - 2) // 2 + 1
    assert Qwen25OmniAdapter().audio_tokens(samples) == expected
    assert Qwen25OmniAdapter().audio_tokens(0) == 0


def _sampled(stamps: list[float], seconds: float, height: int = 56, width: int = 84) -> tuple[DecodedFrames, Probe]:
    """Black frames sampled at ``stamps`` from a 30 fps video of ``seconds`` with sound."""
    frames = DecodedFrames(
        frames=np.zeros((len(stamps), height, width, 3), dtype=np.uint8),
        timestamps=stamps,
        indices=[round(t * 30) for t in stamps],
    )
    probe = Probe(
        duration=seconds,
        width=width,
        height=height,
        fps=30.0,
        rotation=0,
        codec="h264",
        start_time=0.0,
        has_audio=True,
        audio_seconds=seconds,
    )
    return frames, probe


def _frames(n: int = 4) -> tuple[DecodedFrames, Probe]:
    return _sampled([0.25 + 0.5 * i for i in range(n)], n * 0.5)


def test_vision_inputs_carry_the_true_timing_and_no_resize() -> None:
    frames, probe = _frames()
    inputs = adapter_for(["Qwen2VLForConditionalGeneration"]).video_inputs("p", frames, probe, 2.0, None)
    video, meta = inputs["multi_modal_data"]["video"]
    assert video.shape == (4, 56, 84, 3)
    assert meta["fps"] == 30.0 and meta["frames_indices"] == [8, 22, 38, 52] and meta["do_sample_frames"] is False
    assert inputs["mm_processor_kwargs"] == {"do_resize": False}


def test_qwen2_5_vl_gets_the_metadata_as_a_processor_argument_too() -> None:
    frames, probe = _frames()
    inputs = adapter_for(["Qwen2_5_VLForConditionalGeneration"]).video_inputs("p", frames, probe, 2.0, None)
    _, meta = inputs["multi_modal_data"]["video"]
    expected = {"fps": 30.0, "duration": 2.0, "total_num_frames": 60, "frames_indices": [8, 22, 38, 52]}
    assert inputs["mm_processor_kwargs"]["video_metadata"] == {**expected, "height": 56, "width": 84}
    assert meta.items() >= expected.items()  # the same timing as the metadata beside the frames


def _processed_video(model: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    """What vLLM's own multimodal processor makes of the adapter's inputs (the engine's first step)."""
    from vllm.config import ModelConfig
    from vllm.multimodal import MULTIMODAL_REGISTRY
    from vllm.multimodal.processing.context import TimingContext
    from vllm.multimodal.processing.inputs import ProcessorInputs

    processor = MULTIMODAL_REGISTRY.create_processor(
        ModelConfig(model=str(model), tokenizer=str(model), limit_mm_per_prompt={"video": 1})
    )
    items = processor.info.get_data_parser().parse_mm_data(inputs["multi_modal_data"])
    request = ProcessorInputs(inputs["prompt"], items, hf_processor_mm_kwargs=inputs["mm_processor_kwargs"])
    return processor.apply(request, TimingContext())["mm_kwargs"].get_data()


@pytest.mark.parametrize(
    ("seconds", "fps_used", "span"), [(8.0, 0.5, None), (2.0, 2.0, None), (60.0, 1.0, (40.0, 48.0))]
)
def test_qwen2_5_vl_temporal_positions_follow_the_true_sampling_rate(
    tiny_model: Path, seconds: float, fps_used: float, span: tuple[float, float] | None
) -> None:
    """second_per_grid_ts (seconds per 2-frame step of Qwen2.5-VL's temporal M-RoPE) as vLLM's processor
    computes it: without the metadata argument it assumed 24 fps, 0.083 s instead of 4 s at 0.5 fps."""
    start, end = span or (0.0, seconds)
    stamps = [start + (i + 0.5) / fps_used for i in range(round((end - start) * fps_used))]
    frames, probe = _sampled(stamps, seconds, height=56, width=56)
    prompt = "<|vision_start|><|video_pad|><|vision_end|>Describe."
    inputs = adapter_for(["Qwen2_5_VLForConditionalGeneration"]).video_inputs(
        prompt, frames, probe, fps_used, None, span
    )
    processed = _processed_video(tiny_model, inputs)
    assert processed["video_grid_thw"].tolist() == [[len(stamps) // 2, 4, 4]]
    assert processed["second_per_grid_ts"].tolist() == [pytest.approx(2 / fps_used, rel=0.01)]


def test_omni_gets_the_sound_and_the_sampling_rate() -> None:
    frames, probe = _frames()
    clip = AudioClip(np.zeros(32_000, dtype=np.float32), start=0.0)
    inputs = Qwen25OmniAdapter(audio_in_video=False).video_inputs("p", frames, probe, 2.0, clip)
    samples, rate = inputs["multi_modal_data"]["audio"]
    assert rate == 16_000 and len(samples) == 32_000
    # Its own item, not interleaved with the frames (the adapter's variant without use_audio_in_video).
    assert inputs["mm_processor_kwargs"] == {"do_resize": False, "fps": 2.0}
    silent = Qwen25OmniAdapter().video_inputs("p", frames, probe, 2.0, None)
    assert "audio" not in silent["multi_modal_data"]


def test_omni_prompt_names_the_sound_after_the_frames() -> None:
    from worker.devtools.dummy_model import QWEN2_5_OMNI_CHAT_TEMPLATE

    class Template:
        def apply_chat_template(self, messages: list, **kwargs: object) -> str:
            import jinja2

            return jinja2.Template(QWEN2_5_OMNI_CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True)

    prompt = Qwen25OmniAdapter(audio_in_video=False).build_prompt(Template(), "Describe.", "video", with_audio=True)
    assert "<|vision_bos|><|VIDEO|><|vision_eos|><|audio_bos|><|AUDIO|><|audio_eos|>Describe." in prompt
    assert "<|AUDIO|>" not in Qwen25OmniAdapter().build_prompt(Template(), "Describe.", "video")
