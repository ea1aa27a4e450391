"""worker/dummy_model.py: the offline model folder loads with transformers as a real Qwen2.5-VL would.

No vLLM engine here (that takes minutes on a CPU); these check every file vLLM reads at start-up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoProcessor, AutoTokenizer

from worker.dummy_model import (
    FAMILIES,
    QWEN2_5_ADDED_TOKENS,
    QWEN2_BASE_VOCAB_SIZE,
    build_dummy_model,
    byte_level_alphabet,
    main,
)

EXPECTED_FILES = {
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "preprocessor_config.json",
    "video_preprocessor_config.json",
    "chat_template.jinja",
}

# Real Qwen2.5 ids; the worker and vLLM's Qwen2.5-VL code key on them.
SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|object_ref_start|>": 151646,
    "<|object_ref_end|>": 151647,
    "<|box_start|>": 151648,
    "<|box_end|>": 151649,
    "<|quad_start|>": 151650,
    "<|quad_end|>": 151651,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
    "<tool_call>": 151657,
    "</tool_call>": 151658,
    "<|fim_prefix|>": 151659,
    "<|fim_middle|>": 151660,
    "<|fim_suffix|>": 151661,
    "<|fim_pad|>": 151662,
    "<|repo_name|>": 151663,
    "<|file_sep|>": 151664,
}

VIDEO_MESSAGES: list[dict[str, Any]] = [
    {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Describe this video."}]}
]
VIDEO_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Describe this video.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dummy_model(tmp_path_factory.mktemp("tiny"), "qwen2_5_vl", "tiny")


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_dummy_model(tmp_path_factory.mktemp("7b"), "qwen2_5_vl", "7b")


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_dir)


@pytest.fixture(scope="module")
def processor(tiny_dir: Path) -> Any:
    return AutoProcessor.from_pretrained(tiny_dir)


# --- folder --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["tiny", "7b"])
def test_folder_has_every_file_and_no_weights(size: str, tiny_dir: Path, big_dir: Path) -> None:
    folder = tiny_dir if size == "tiny" else big_dir
    names = {p.name for p in folder.iterdir()}
    assert names == EXPECTED_FILES
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert total < 8 * 1024**2, f"{total} bytes: the folder should stay a few MB"


def test_rebuild_into_same_folder_is_idempotent(tmp_path: Path) -> None:
    first = build_dummy_model(tmp_path, "qwen2_5_vl", "tiny")
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    build_dummy_model(tmp_path, "qwen2_5_vl", "tiny")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_unknown_family_or_size_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown family"):
        build_dummy_model(tmp_path, "llama", "tiny")
    with pytest.raises(ValueError, match="unknown size"):
        build_dummy_model(tmp_path, "qwen2_5_vl", "72b")
    assert "qwen2_5_vl" in FAMILIES


def test_cli_writes_folder_and_prints_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nested" / "model"
    assert main([str(out), "--family", "qwen2_5_vl", "--size", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == str(out.resolve())
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES


# --- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["tiny", "7b"])
def test_config_loads_and_is_self_consistent(size: str, tiny_dir: Path, big_dir: Path) -> None:
    cfg = AutoConfig.from_pretrained(tiny_dir if size == "tiny" else big_dir)
    assert type(cfg).__name__ == "Qwen2_5_VLConfig"
    assert cfg.model_type == "qwen2_5_vl"
    assert cfg.architectures == ["Qwen2_5_VLForConditionalGeneration"]
    assert (cfg.vision_start_token_id, cfg.vision_end_token_id) == (151652, 151653)
    assert (cfg.image_token_id, cfg.video_token_id) == (151655, 151656)
    text, vision = cfg.text_config, cfg.vision_config
    assert text.vocab_size >= len(SPECIAL_IDS) + QWEN2_BASE_VOCAB_SIZE
    assert (text.bos_token_id, text.eos_token_id) == (151643, 151645)
    # Constraints vLLM's Qwen2.5-VL code relies on.
    head_dim = text.hidden_size // text.num_attention_heads
    assert head_dim == 2 * sum(text.rope_parameters["mrope_section"])
    assert text.num_attention_heads % text.num_key_value_heads == 0
    assert vision.out_hidden_size == text.hidden_size
    assert vision.hidden_size % vision.num_heads == 0
    assert all(0 <= i < vision.depth for i in vision.fullatt_block_indexes)
    assert vision.window_size % (vision.patch_size * vision.spatial_merge_size) == 0


def test_7b_config_has_the_real_numbers(big_dir: Path) -> None:
    raw = json.loads((big_dir / "config.json").read_text())
    assert raw["torch_dtype"] == "bfloat16"
    assert raw["rope_scaling"] == {"type": "mrope", "mrope_section": [16, 24, 24]}
    cfg = AutoConfig.from_pretrained(big_dir)
    text, vision = cfg.text_config, cfg.vision_config
    assert (text.hidden_size, text.intermediate_size) == (3584, 18944)
    assert (text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (28, 28, 4)
    assert text.vocab_size == 152064
    assert text.max_position_embeddings == 128000
    assert text.rms_norm_eps == 1e-6
    assert text.rope_parameters["rope_theta"] == 1000000.0
    assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert cfg.tie_word_embeddings is False
    assert (vision.depth, vision.hidden_size) == (32, 1280)
    assert (vision.intermediate_size, vision.num_heads) == (3420, 16)
    assert vision.out_hidden_size == 3584
    assert list(vision.fullatt_block_indexes) == [7, 15, 23, 31]
    assert (vision.window_size, vision.patch_size, vision.spatial_merge_size) == (112, 14, 2)
    assert (vision.temporal_patch_size, vision.tokens_per_second) == (2, 2)


def test_tiny_config_is_tiny(tiny_dir: Path) -> None:
    cfg = AutoConfig.from_pretrained(tiny_dir)
    assert cfg.text_config.hidden_size <= 256
    assert cfg.text_config.num_hidden_layers <= 2
    assert cfg.vision_config.depth <= 2


def test_generation_config_matches_qwen(tiny_dir: Path) -> None:
    gen = json.loads((tiny_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [151645, 151643]
    assert gen["pad_token_id"] == 151643


# --- tokenizer -----------------------------------------------------------------------------------


def test_tokenizer_class_and_special_tokens(tokenizer: Any) -> None:
    assert type(tokenizer).__name__ == "Qwen2Tokenizer"
    assert len(tokenizer) == QWEN2_BASE_VOCAB_SIZE + len(QWEN2_5_ADDED_TOKENS) == 151665
    for token, token_id in SPECIAL_IDS.items():
        assert tokenizer.convert_tokens_to_ids(token) == token_id, token
        assert tokenizer.convert_ids_to_tokens(token_id) == token
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|im_end|>", 151645)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<|endoftext|>", 151643)
    assert tokenizer.bos_token is None


def test_special_tokens_encode_as_one_id(tokenizer: Any) -> None:
    ids = tokenizer("<|vision_start|><|video_pad|><|vision_end|>", add_special_tokens=False)["input_ids"]
    assert ids == [151652, 151656, 151653]


@pytest.mark.parametrize(
    "text",
    [
        "Describe this video in detail.",
        "Line one\nline two\t\ttabbed  double  spaced",
        "Ünïcödé: 日本語の字幕, emoji 🎬, numbers 12345.",
        "<|im_start|>user\nhi<|im_end|>",
    ],
)
def test_tokenizer_round_trips_text(tokenizer: Any, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_every_base_id_decodes(tokenizer: Any) -> None:
    tokens = tokenizer.convert_ids_to_tokens(list(range(QWEN2_BASE_VOCAB_SIZE)))
    assert None not in tokens
    assert len(set(tokens)) == QWEN2_BASE_VOCAB_SIZE
    # Random weights sample arbitrary ids; they must decode to text, not raise.
    assert isinstance(tokenizer.decode(list(range(0, QWEN2_BASE_VOCAB_SIZE, 997))), str)


def test_byte_ids_match_real_qwen(tokenizer: Any) -> None:
    alphabet = byte_level_alphabet()
    assert len(set(alphabet)) == 256
    assert tokenizer.convert_tokens_to_ids(alphabet) == list(range(256))
    assert tokenizer("!", add_special_tokens=False)["input_ids"] == [0]
    assert tokenizer("\n", add_special_tokens=False)["input_ids"] == [198]
    assert tokenizer(" ", add_special_tokens=False)["input_ids"] == [220]


def test_merges_shorten_plain_words(tokenizer: Any) -> None:
    ids = tokenizer(" describe the video", add_special_tokens=False)["input_ids"]
    assert len(ids) < len(" describe the video") // 2


def test_raw_tokenizers_file_agrees_with_transformers(tiny_dir: Path, tokenizer: Any) -> None:
    raw = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    text = "A cat jumps over 3 dogs.\n<|im_end|>"
    assert raw.encode(text).ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert raw.get_vocab_size() == 151665


# --- processor and chat template -----------------------------------------------------------------


def test_processor_classes_and_numbers(processor: Any) -> None:
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    for sub, cls in (
        (processor.image_processor, "Qwen2VLImageProcessor"),
        (processor.video_processor, "Qwen2VLVideoProcessor"),
    ):
        assert type(sub).__name__ == cls
        assert (sub.patch_size, sub.temporal_patch_size, sub.merge_size) == (14, 2, 2)
        assert (sub.size["shortest_edge"], sub.size["longest_edge"]) == (3136, 12845056)
        assert list(sub.image_mean) == pytest.approx([0.48145466, 0.4578275, 0.40821073])
        assert list(sub.image_std) == pytest.approx([0.26862954, 0.26130258, 0.27577711])


def test_chat_template_renders_video(processor: Any, tokenizer: Any) -> None:
    prompt = processor.apply_chat_template(VIDEO_MESSAGES, add_generation_prompt=True, tokenize=False)
    assert prompt == VIDEO_PROMPT
    assert "<|vision_start|><|video_pad|><|vision_end|>" in prompt
    # vLLM may take the template from either object; both must agree.
    assert tokenizer.apply_chat_template(VIDEO_MESSAGES, add_generation_prompt=True, tokenize=False) == prompt


def test_chat_template_image_system_and_no_generation_prompt(processor: Any) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n"
    )


def test_processor_expands_video_pad_for_frames(processor: Any) -> None:
    # 4 frames of 112x112: 2 temporal patches x 8x8 spatial patches, merged 2x2 -> 32 tokens.
    frames = np.zeros((4, 112, 112, 3), dtype=np.uint8)
    out = processor(text=[VIDEO_PROMPT], videos=[frames], return_tensors="np")
    assert out["video_grid_thw"].tolist() == [[2, 8, 8]]
    assert int((out["input_ids"][0] == 151656).sum()) == 32
