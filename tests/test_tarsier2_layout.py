"""Tarsier2 without an engine: the tiny folder laid out like the authors' release, its config and processor
read the way vLLM's Qwen2-VL needs, the tensor names mapped strictly, and the adapter's prompt, frames and
engine arguments as the authors run the model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from worker.api.schema import ChatMessage
from worker.devtools.dummy_model import build_dummy_model
from worker.devtools.families.tarsier2 import tarsier2_config, tarsier2_weight_shapes
from worker.media.frame_plan import video_tokens
from worker.media.frames import DecodedFrames
from worker.media.probe import Probe
from worker.models.adapters import adapter_for
from worker.models.adapters.base import MediaLimits
from worker.models.adapters.tarsier2 import CAPTION_PROMPT, Tarsier2Adapter
from worker.models.vllm_plugin.tarsier2_config import (
    WEIGHT_PREFIXES,
    normalise_pixel_range,
    qwen2_vl_config,
    raw_config,
    tarsier2_hf_overrides,
    vllm_weight_name,
)

RELEASE_FILES = {
    "config.json",
    "generation_config.json",
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors.index.json",
    "model-00001-of-00002.safetensors",
    "model-00002-of-00002.safetensors",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dummy_model(tmp_path_factory.mktemp("models") / "tiny-tarsier2", "tarsier2", "tiny")


def test_tiny_folder_has_the_release_layout(tiny: Path) -> None:
    assert {p.name for p in tiny.iterdir()} == RELEASE_FILES
    config = json.loads((tiny / "config.json").read_text())
    assert config["architectures"] == ["TarsierForConditionalGeneration"] and config["model_type"] == "llava"
    assert config["text_config"]["model_type"] == config["vision_config"]["model_type"] == "qwen2_vl"
    assert config["image_token_index"] == config["text_config"]["image_token_id"] == 151655
    processor = json.loads((tiny / "preprocessor_config.json").read_text())
    assert processor["processor_class"] == "TarsierProcessor"
    assert processor["size"] == {"max_pixels": processor["max_pixels"], "min_pixels": processor["min_pixels"]}
    assert json.loads((tiny / "tokenizer_config.json").read_text())["processor_class"] == "TarsierProcessor"
    assert json.loads((tiny / "processor_config.json").read_text())["image_token"] == "<|image_pad|>"


def test_tiny_weights_cover_every_tensor_under_the_release_names(tiny: Path) -> None:
    index = json.loads((tiny / "model.safetensors.index.json").read_text())["weight_map"]
    shapes = tarsier2_weight_shapes(tarsier2_config("tiny"))
    assert set(index) == set(shapes)
    for shard in set(index.values()):
        with safe_open(tiny / shard, "pt") as f:
            for name in f.keys():
                assert index[name] == shard and tuple(f.get_slice(name).get_shape()) == shapes[name]
                assert str(f.get_slice(name).get_dtype()) == "BF16"
    assert {index[n] for n in index if n.startswith("vision_tower.")} == {"model-00001-of-00002.safetensors"}
    # Qwen2-VL's projector is the vision tower's merger, stored with it.
    assert {"vision_tower.merger.mlp.0.weight", "vision_tower.merger.mlp.2.weight"} <= set(index)


def test_weight_names_map_strictly(tiny: Path) -> None:
    index = json.loads((tiny / "model.safetensors.index.json").read_text())["weight_map"]
    mapped = {vllm_weight_name(name) for name in index}
    assert len(mapped) == len(index)
    assert all(name.startswith(("visual.", "language_model.model.", "language_model.lm_head.")) for name in mapped)
    assert vllm_weight_name("vision_tower.blocks.0.attn.qkv.weight") == "visual.blocks.0.attn.qkv.weight"
    for stray in ("multi_modal_projector.linear_1.weight", "model.embed_tokens.weight", "lm_head.weight"):
        with pytest.raises(ValueError, match="unexpected tensor"):
            vllm_weight_name(stray)
    assert set(WEIGHT_PREFIXES) == {"vision_tower.", "language_model.model.", "language_model.lm_head."}


def test_llava_wrapper_is_read_as_qwen2_vl(tiny: Path) -> None:
    from transformers import AutoConfig, PretrainedConfig, Qwen2VLConfig

    wrapper = AutoConfig.from_pretrained(tiny)
    assert type(wrapper).__name__ == "LlavaConfig"  # what vLLM would get without the override
    config = tarsier2_hf_overrides(wrapper)
    assert isinstance(config, Qwen2VLConfig) and config.architectures == ["Tarsier2ForConditionalGeneration"]
    raw = json.loads((tiny / "config.json").read_text())
    text, vision = config.get_text_config(), config.vision_config
    assert (text.hidden_size, text.num_attention_heads, text.num_key_value_heads) == (128, 2, 1)
    assert (vision.depth, vision.embed_dim, vision.num_heads, vision.hidden_size) == (2, 64, 2, 128)
    assert config.image_token_id == 151655 and config.video_token_id == 151656
    assert text.rope_parameters["mrope_section"] == raw["text_config"]["rope_scaling"]["mrope_section"]
    assert str(config.dtype).endswith("bfloat16") and config._name_or_path == str(tiny)
    # Not a LLaVA wrapper, or vLLM's probe with a dummy config: unchanged.
    dummy = PretrainedConfig(architectures=[""], model_type="dummy_llava")
    assert tarsier2_hf_overrides(dummy) is dummy


def test_7b_config_has_the_published_sizes(tmp_path: Path) -> None:
    folder = build_dummy_model(tmp_path / "tarsier2-7b", "tarsier2", "7b")
    assert not list(folder.glob("*.safetensors"))
    config = qwen2_vl_config(raw_config(str(folder)))
    text, vision = config.get_text_config(), config.vision_config
    sizes = (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.vocab_size)
    assert sizes == (3584, 28, 28, 152064)
    assert (vision.depth, vision.embed_dim, vision.num_heads, vision.hidden_size) == (32, 1280, 16, 3584)


def test_tarsier_v1_is_refused_clearly() -> None:
    v1 = {
        "model_type": "llava",
        "architectures": ["TarsierForConditionalGeneration"],
        "text_config": {"model_type": "llama"},
        "vision_config": {"model_type": "clip_vision_model"},
    }
    with pytest.raises(ValueError, match="Tarsier v1"):
        qwen2_vl_config(v1)


@pytest.mark.parametrize("keys", ["size only", "top level and size"])
def test_pixel_range_is_normalised_for_transformers_5(tiny: Path, tmp_path: Path, keys: str) -> None:
    from transformers import AutoImageProcessor, AutoVideoProcessor

    folder = tmp_path / "processor"
    folder.mkdir()
    saved = json.loads((tiny / "preprocessor_config.json").read_text())
    if keys == "size only":  # how a 4.4x processor may hold the range: only in ``size``
        del saved["min_pixels"], saved["max_pixels"]
    (folder / "preprocessor_config.json").write_text(json.dumps(saved))
    frames = np.zeros((4, 56, 84, 3), dtype=np.uint8)
    for loader, inputs in ((AutoImageProcessor, {"images": [frames[0]]}), (AutoVideoProcessor, {"videos": [frames]})):
        processor = normalise_pixel_range(loader.from_pretrained(folder))
        assert (processor.size.shortest_edge, processor.size.longest_edge) == (3136, 12845056)
        out = processor(**inputs, return_tensors="pt")  # transformers 5 resizes by these keys
        assert next(v for k, v in out.items() if k.endswith("grid_thw")).tolist()[0][1:] == [4, 6]


def test_adapter_is_chosen_for_both_names() -> None:
    for arch in ("TarsierForConditionalGeneration", "Tarsier2ForConditionalGeneration"):
        assert isinstance(adapter_for([arch]), Tarsier2Adapter)


def test_prompt_is_the_authors_layout() -> None:
    adapter = Tarsier2Adapter()
    assert adapter.default_video_prompt == CAPTION_PROMPT == "Describe the video in detail."
    assert adapter.build_prompt(None, "What happens?", "video") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What happens?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    image = adapter.build_prompt(None, "Describe.", "image", with_audio=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>" in image and "audio" not in image
    turns = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="First?"),
        ChatMessage(role="assistant", content="A."),
        ChatMessage(role="user", content="Then?"),
    ]
    chat = adapter.build_prompt(None, turns, "video")
    assert chat.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|vision_start|>")
    assert chat.count("<|video_pad|>") == 1
    assert chat.endswith("<|im_start|>user\nThen?<|im_end|>\n<|im_start|>assistant\n")
    assert "<|vision" not in adapter.build_prompt(None, "Hi", None)


def test_each_frame_is_shown_twice() -> None:
    adapter = Tarsier2Adapter()
    pixels = np.arange(3 * 28 * 28 * 3, dtype=np.uint8).reshape(3, 28, 28, 3)
    frames = DecodedFrames(frames=pixels, timestamps=[0.25, 0.75, 1.25], indices=[6, 18, 30])
    probe = Probe(
        duration=1.5, width=28, height=28, fps=24.0, rotation=0, codec="h264", start_time=0.0,
        has_audio=False, audio_seconds=0.0,
    )
    inputs = adapter.video_inputs("p", frames, probe, 2.0, None)
    sent, metadata = inputs["multi_modal_data"]["video"]
    assert sent.shape == (6, 28, 28, 3) and (sent[0::2] == pixels).all() and (sent[1::2] == pixels).all()
    assert metadata["frames_indices"] == [6, 6, 18, 18, 30, 30] and metadata["do_sample_frames"] is False
    assert set(inputs["multi_modal_data"]) == {"video"}
    # One temporal patch (one group of visual tokens) per sampled frame, which the planner budgets.
    assert video_tokens(3, 56, 84, adapter.geometry) == 3 * 2 * 3
    assert adapter.frame_multiple == 1


def test_engine_arguments_profile_the_doubled_frames() -> None:
    limits = MediaLimits(max_frames=100, video_max_pixels=448 * 448, image_max_pixels=1280 * 784)
    kwargs = Tarsier2Adapter().engine_kwargs(limits)
    assert kwargs["limit_mm_per_prompt"]["video"]["num_frames"] == 200
    assert kwargs["hf_overrides"] is tarsier2_hf_overrides


def test_rebuilding_into_the_same_folder_keeps_the_layout(tiny: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny, tmp_path / "again"))
    build_dummy_model(copy, "tarsier2", "tiny")
    assert {p.name for p in copy.iterdir()} == RELEASE_FILES
