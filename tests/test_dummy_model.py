"""worker/devtools/dummy_model.py: the offline model folder loads with transformers as a real Qwen2.5-VL would.

No vLLM engine here (that takes minutes on a CPU); these check every file vLLM reads at start-up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoProcessor, AutoTokenizer

from worker.devtools.dummy_model import (
    FAMILIES,
    QWEN2_5_ADDED_TOKENS,
    QWEN2_BASE_VOCAB_SIZE,
    build_dummy_model,
    byte_level_alphabet,
    cached_dummy_model,
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


def test_cached_dummy_model_keeps_one_path_per_family_and_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Benchmarks start engines on it: vLLM's torch.compile cache is keyed by the model path."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # tempfile caches the folder it found first
    first = cached_dummy_model("qwen2_5_vl", "tiny")
    assert first == cached_dummy_model("qwen2_5_vl", "tiny") == tmp_path / "dummy-models" / "qwen2_5_vl-tiny"
    assert (first / "config.json").is_file() and cached_dummy_model("qwen2_vl", "tiny") != first


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


# --- other families: Qwen2-VL, Qwen3-VL, Qwen2.5-Omni -----------------------------------------------
#
# Each folder must go through the same transformers parsing as the hub checkpoint it imitates: the config
# class, the tokenizer with the real special ids, the processor classes and numbers, the chat template.


@dataclass(frozen=True)
class FamilySpec:
    big: str  # the published size
    config_class: str
    architectures: list[str]
    processor_class: str
    subprocessors: dict[str, str]  # processor attribute -> class name
    tokenizer_len: int
    special_ids: dict[str, int]
    video_prompt: str  # chat template output for VIDEO_MESSAGES


_QWEN2_VL_IDS = {k: v for k, v in SPECIAL_IDS.items() if v <= 151656}
_QWEN3_IDS = {
    **SPECIAL_IDS,
    "<tool_response>": 151665,
    "</tool_response>": 151666,
    "<think>": 151667,
    "</think>": 151668,
}
_OMNI_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|AUDIO|>": 151646,
    "<|audio_bos|>": 151647,
    "<|audio_eos|>": 151648,
    "<|box_end|>": 151649,
    "<|quad_start|>": 151650,
    "<|quad_end|>": 151651,
    "<|vision_bos|>": 151652,
    "<|vision_eos|>": 151653,
    "<|vision_pad|>": 151654,
    "<|IMAGE|>": 151655,
    "<|VIDEO|>": 151656,
    "<tool_call>": 151657,
    "<|file_sep|>": 151664,
}

SPECS: dict[str, FamilySpec] = {
    "qwen2_vl": FamilySpec(
        big="7b",
        config_class="Qwen2VLConfig",
        architectures=["Qwen2VLForConditionalGeneration"],
        processor_class="Qwen2VLProcessor",
        subprocessors={"image_processor": "Qwen2VLImageProcessor", "video_processor": "Qwen2VLVideoProcessor"},
        tokenizer_len=151657,
        special_ids=_QWEN2_VL_IDS,
        video_prompt=VIDEO_PROMPT,
    ),
    "qwen3_vl": FamilySpec(
        big="8b",
        config_class="Qwen3VLConfig",
        architectures=["Qwen3VLForConditionalGeneration"],
        processor_class="Qwen3VLProcessor",
        subprocessors={"image_processor": "Qwen2VLImageProcessor", "video_processor": "Qwen3VLVideoProcessor"},
        tokenizer_len=151669,
        special_ids=_QWEN3_IDS,
        # No default system message in Qwen3-VL's template.
        video_prompt=(
            "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Describe this video.<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
    ),
    "qwen2_5_omni": FamilySpec(
        big="7b",
        config_class="Qwen2_5OmniConfig",
        architectures=["Qwen2_5OmniModel"],
        processor_class="Qwen2_5OmniProcessor",
        subprocessors={
            "image_processor": "Qwen2VLImageProcessor",
            "video_processor": "Qwen2VLVideoProcessor",
            "feature_extractor": "WhisperFeatureExtractor",
        },
        tokenizer_len=151665,
        special_ids=_OMNI_IDS,
        video_prompt=(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\n<|vision_bos|><|VIDEO|><|vision_eos|>Describe this video.<|im_end|>\n"
            "<|im_start|>assistant\n"
        ),
    ),
}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("families")
    return {
        (family, size): build_dummy_model(root / f"{family}-{size}", family, size)
        for family, spec in SPECS.items()
        for size in ("tiny", spec.big)
    }


@pytest.fixture(scope="module")
def family_processors(family_dirs: dict[tuple[str, str], Path]) -> dict[str, Any]:
    return {family: AutoProcessor.from_pretrained(family_dirs[family, "tiny"]) for family in SPECS}


def _config(family_dirs: dict[tuple[str, str], Path], family: str, size: str) -> Any:
    return AutoConfig.from_pretrained(family_dirs[family, size])


def test_registry_has_every_family_and_size() -> None:
    assert {name: FAMILIES[name].sizes for name in SPECS} == {
        "qwen2_vl": ("7b", "tiny"),
        "qwen3_vl": ("8b", "tiny"),
        "qwen2_5_omni": ("7b", "tiny"),
    }


@pytest.mark.parametrize("family", SPECS)
@pytest.mark.parametrize("size", ["tiny", "big"])
def test_family_folder_has_every_file_and_parses(
    family: str, size: str, family_dirs: dict[tuple[str, str], Path]
) -> None:
    spec = SPECS[family]
    folder = family_dirs[family, spec.big if size == "big" else "tiny"]
    assert {p.name for p in folder.iterdir()} == EXPECTED_FILES
    assert sum(p.stat().st_size for p in folder.iterdir()) < 8 * 1024**2
    cfg = AutoConfig.from_pretrained(folder)
    assert type(cfg).__name__ == spec.config_class
    assert cfg.model_type == family
    assert cfg.architectures == spec.architectures


@pytest.mark.parametrize("family", SPECS)
def test_family_tokenizer_has_real_special_ids(family: str, family_dirs: dict[tuple[str, str], Path]) -> None:
    spec = SPECS[family]
    tok = AutoTokenizer.from_pretrained(family_dirs[family, "tiny"])
    assert len(tok) == spec.tokenizer_len
    for token, token_id in spec.special_ids.items():
        assert tok.convert_tokens_to_ids(token) == token_id, token
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    text = "Two cats on a sofa.\n"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # Placeholder tokens stay whole, as the processors' prompt expansion needs.
    placeholders = [t for t in spec.special_ids if t in ("<|video_pad|>", "<|VIDEO|>", "<|AUDIO|>")]
    for token in placeholders:
        assert tok(token, add_special_tokens=False)["input_ids"] == [spec.special_ids[token]]


@pytest.mark.parametrize("family", SPECS)
def test_family_processor_classes_and_chat_template(
    family: str, family_dirs: dict[tuple[str, str], Path], family_processors: dict[str, Any]
) -> None:
    spec = SPECS[family]
    processor = family_processors[family]
    assert type(processor).__name__ == spec.processor_class
    for attribute, cls in spec.subprocessors.items():
        assert type(getattr(processor, attribute)).__name__ == cls, attribute
    prompt = processor.apply_chat_template(VIDEO_MESSAGES, add_generation_prompt=True, tokenize=False)
    assert prompt == spec.video_prompt
    tok = AutoTokenizer.from_pretrained(family_dirs[family, "tiny"])
    assert tok.apply_chat_template(VIDEO_MESSAGES, add_generation_prompt=True, tokenize=False) == prompt


@pytest.mark.parametrize("family", SPECS)
def test_family_tiny_config_keeps_the_structural_constraints(
    family: str, family_dirs: dict[tuple[str, str], Path]
) -> None:
    cfg = _config(family_dirs, family, "tiny")
    thinker = cfg.thinker_config if family == "qwen2_5_omni" else cfg
    text, vision = thinker.text_config, thinker.vision_config
    assert text.hidden_size <= 256 and text.num_hidden_layers <= 2
    assert vision.depth <= 2
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    assert head_dim == 64  # a head size vLLM's CPU attention supports
    assert head_dim == 2 * sum(text.rope_parameters["mrope_section"])
    assert text.num_attention_heads % text.num_key_value_heads == 0
    # The vision merger projects to the text width.
    merged_width = vision.hidden_size if family == "qwen2_vl" else vision.out_hidden_size
    assert merged_width == text.hidden_size
    assert text.vocab_size >= SPECS[family].tokenizer_len


def test_qwen2_vl_7b_has_the_real_numbers(family_dirs: dict[tuple[str, str], Path]) -> None:
    raw = json.loads((family_dirs["qwen2_vl", "7b"] / "config.json").read_text())
    assert raw["rope_scaling"] == {"type": "mrope", "mrope_section": [16, 24, 24]}
    cfg = _config(family_dirs, "qwen2_vl", "7b")
    text, vision = cfg.text_config, cfg.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (3584, 18944, 28)
    assert (text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (28, 4, 152064)
    assert text.max_position_embeddings == 32768
    assert text.rope_parameters["rope_theta"] == 1000000.0
    assert (vision.depth, vision.embed_dim, vision.mlp_ratio, vision.num_heads) == (32, 1280, 4, 16)
    assert (vision.hidden_size, vision.patch_size, vision.spatial_merge_size) == (3584, 14, 2)
    assert vision.hidden_act == "quick_gelu"
    gen = json.loads((family_dirs["qwen2_vl", "7b"] / "generation_config.json").read_text())
    assert (gen["eos_token_id"], gen["top_k"]) == ([151645, 151643], 1)


def test_qwen3_vl_8b_has_the_real_numbers(family_dirs: dict[tuple[str, str], Path]) -> None:
    cfg = _config(family_dirs, "qwen3_vl", "8b")
    text, vision = cfg.text_config, cfg.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (4096, 12288, 36)
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (32, 8, 128)
    assert (text.vocab_size, text.max_position_embeddings) == (151936, 262144)
    assert text.rope_parameters["rope_theta"] == 5000000
    assert text.rope_parameters["mrope_section"] == [24, 20, 20]
    assert text.rope_parameters["mrope_interleaved"] is True
    assert cfg.tie_word_embeddings is False
    assert type(vision).__name__ == "Qwen3VLVisionConfig"  # hub's "qwen3_vl" model_type was remapped
    assert (vision.depth, vision.hidden_size, vision.intermediate_size, vision.num_heads) == (27, 1152, 4304, 16)
    assert list(vision.deepstack_visual_indexes) == [8, 16, 24]
    assert (vision.out_hidden_size, vision.patch_size, vision.num_position_embeddings) == (4096, 16, 2304)
    assert vision.hidden_act == "gelu_pytorch_tanh"


def test_qwen3_vl_tiny_deepstack_fits_both_towers(family_dirs: dict[tuple[str, str], Path]) -> None:
    cfg = _config(family_dirs, "qwen3_vl", "tiny")
    indexes = list(cfg.vision_config.deepstack_visual_indexes)
    assert len(indexes) >= 2  # several deepstack levels, as in the real model
    assert all(0 <= i < cfg.vision_config.depth for i in indexes)
    assert len(indexes) <= cfg.text_config.num_hidden_layers
    assert cfg.text_config.rope_parameters["mrope_interleaved"] is True


def test_qwen3_vl_processors_use_patch_16_and_its_frame_rules(family_processors: dict[str, Any]) -> None:
    processor = family_processors["qwen3_vl"]
    video = processor.video_processor
    assert (video.patch_size, video.merge_size, video.temporal_patch_size) == (16, 2, 2)
    assert (video.fps, video.min_frames, video.max_frames) == (2, 4, 768)
    assert (video.size["shortest_edge"], video.size["longest_edge"]) == (4096, 25165824)
    assert list(video.image_mean) == list(video.image_std) == [0.5, 0.5, 0.5]
    image = processor.image_processor
    assert (image.patch_size, image.merge_size) == (16, 2)
    assert (image.size["shortest_edge"], image.size["longest_edge"]) == (65536, 16777216)


def test_qwen3_vl_processor_expands_video_with_timestamps(family_processors: dict[str, Any]) -> None:
    from transformers.video_utils import VideoMetadata

    processor = family_processors["qwen3_vl"]
    prompt = SPECS["qwen3_vl"].video_prompt
    # 4 frames of 128x128 at 2 fps: 2 temporal groups of 8x8 patches merged 2x2 -> 2 x 16 tokens.
    frames = np.zeros((4, 128, 128, 3), dtype=np.uint8)
    metadata = VideoMetadata(total_num_frames=4, fps=2.0, frames_indices=[0, 1, 2, 3], duration=2.0)
    out = processor(
        text=[prompt],
        videos=[frames],
        video_metadata=[metadata],
        do_sample_frames=False,
        do_resize=False,
        return_tensors="np",
    )
    assert out["video_grid_thw"].tolist() == [[2, 8, 8]]
    assert int((out["input_ids"][0] == 151656).sum()) == 32
    # Qwen3-VL writes each temporal group's time into the prompt as text.
    assert "<0.2 seconds>" in processor.tokenizer.decode(out["input_ids"][0])


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_omni"])
def test_qwen2_vision_processors_expand_video_pad(family: str, family_processors: dict[str, Any]) -> None:
    processor = family_processors[family]
    video_token = 151656
    # 4 frames of 112x112 (do_resize off: Omni's processor otherwise upsizes video to >= 128*28*28 pixels).
    frames = np.zeros((4, 112, 112, 3), dtype=np.uint8)
    out = processor(text=[SPECS[family].video_prompt], videos=[frames], do_resize=False, return_tensors="np")
    assert out["video_grid_thw"].tolist() == [[2, 8, 8]]
    assert int((out["input_ids"][0] == video_token).sum()) == 32


def test_qwen2_5_omni_7b_has_the_real_numbers(family_dirs: dict[tuple[str, str], Path]) -> None:
    cfg = _config(family_dirs, "qwen2_5_omni", "7b")
    assert cfg.enable_audio_output is True
    thinker = cfg.thinker_config
    assert (thinker.audio_token_id, thinker.image_token_id, thinker.video_token_id) == (151646, 151655, 151656)
    assert (thinker.audio_start_token_id, thinker.audio_end_token_id) == (151647, 151648)
    assert (thinker.position_id_per_seconds, thinker.seconds_per_chunk, thinker.user_token_id) == (25, 2, 872)
    text, vision, audio = thinker.text_config, thinker.vision_config, thinker.audio_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (3584, 18944, 28)
    assert (text.num_attention_heads, text.num_key_value_heads, text.vocab_size) == (28, 4, 152064)
    assert text.max_position_embeddings == 32768
    assert text.rope_parameters["mrope_section"] == [16, 24, 24]
    assert text.tie_word_embeddings is False  # the class default is True; the checkpoint has its own lm_head
    assert (vision.depth, vision.hidden_size, vision.intermediate_size, vision.num_heads) == (32, 1280, 3420, 16)
    assert list(vision.fullatt_block_indexes) == [7, 15, 23, 31]
    assert (vision.out_hidden_size, vision.window_size, vision.tokens_per_second) == (3584, 112, 25)
    assert (audio.d_model, audio.encoder_layers, audio.encoder_attention_heads) == (1280, 32, 20)
    assert (audio.encoder_ffn_dim, audio.num_mel_bins, audio.output_dim) == (5120, 128, 3584)
    assert (audio.max_source_positions, audio.n_window) == (1500, 100)
    talker = cfg.talker_config
    assert (talker.hidden_size, talker.num_hidden_layers, talker.vocab_size, talker.embedding_size) == (
        896,
        24,
        8448,
        3584,
    )
    token2wav = cfg.token2wav_config
    assert (token2wav.dit_config.num_hidden_layers, token2wav.dit_config.num_embeds) == (22, 8193)
    assert list(token2wav.bigvgan_config.upsample_rates) == [5, 3, 2, 2, 2, 2]


def test_qwen2_5_omni_tiny_widths_line_up(family_dirs: dict[tuple[str, str], Path]) -> None:
    cfg = _config(family_dirs, "qwen2_5_omni", "tiny")
    thinker = cfg.thinker_config
    width = thinker.text_config.hidden_size
    assert thinker.vision_config.out_hidden_size == thinker.audio_config.output_dim == width
    assert cfg.talker_config.embedding_size == width
    assert thinker.audio_config.d_model % thinker.audio_config.encoder_attention_heads == 0
    assert thinker.audio_config.num_mel_bins == 128


def test_qwen2_5_omni_tiny_builds_the_whole_transformers_model(family_dirs: dict[tuple[str, str], Path]) -> None:
    """Talker and token2wav are never served, but their tiny numbers must still make a consistent model."""
    import torch
    from transformers import Qwen2_5OmniForConditionalGeneration

    cfg = _config(family_dirs, "qwen2_5_omni", "tiny")
    with torch.device("meta"):
        model = Qwen2_5OmniForConditionalGeneration(cfg)
    assert {"thinker", "talker", "token2wav"} <= {name for name, _ in model.named_children()}
    assert sum(p.numel() for p in model.thinker.parameters()) < 60_000_000


def test_qwen2_5_omni_tokenizer_names_its_media_tokens(family_dirs: dict[tuple[str, str], Path]) -> None:
    tok = AutoTokenizer.from_pretrained(family_dirs["qwen2_5_omni", "tiny"])
    assert (tok.audio_token, tok.image_token, tok.video_token) == ("<|AUDIO|>", "<|IMAGE|>", "<|VIDEO|>")
    assert (tok.audio_bos_token, tok.audio_eos_token) == ("<|audio_bos|>", "<|audio_eos|>")
    assert (tok.vision_bos_token, tok.vision_eos_token) == ("<|vision_bos|>", "<|vision_eos|>")


def test_qwen2_5_omni_feature_extractor_is_whisper_128_mel(family_processors: dict[str, Any]) -> None:
    fe = family_processors["qwen2_5_omni"].feature_extractor
    assert (fe.feature_size, fe.sampling_rate, fe.hop_length, fe.n_fft) == (128, 16000, 160, 400)
    assert (fe.chunk_length, fe.n_samples, fe.nb_max_frames) == (300, 4_800_000, 30_000)


@pytest.mark.parametrize("seconds", [2, 8])
def test_qwen2_5_omni_processor_turns_16khz_audio_into_audio_tokens(
    seconds: int, family_processors: dict[str, Any]
) -> None:
    processor = family_processors["qwen2_5_omni"]
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "What is heard?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "<|audio_bos|><|AUDIO|><|audio_eos|>" in prompt
    t = np.arange(16000 * seconds, dtype=np.float32) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out = processor(text=[prompt], audio=[wave], return_tensors="np")
    assert out["input_features"].shape[:2] == (1, 128)
    # 100 mel frames per second; the encoder's stride-2 conv and 2x pooling leave 25 tokens per second.
    assert int(out["feature_attention_mask"].sum()) == 100 * seconds
    assert int((out["input_ids"][0] == 151646).sum()) == 25 * seconds
    assert float(np.abs(out["input_features"]).sum()) > 0


def test_qwen2_5_omni_use_audio_in_video_interleaves_audio_into_the_video(family_processors: dict[str, Any]) -> None:
    processor = family_processors["qwen2_5_omni"]
    prompt = SPECS["qwen2_5_omni"].video_prompt
    frames = np.zeros((8, 112, 112, 3), dtype=np.uint8)
    counts = {}
    for seconds in (2, 4):
        out = processor(
            text=[prompt],
            videos=[frames],
            audio=[np.zeros(16000 * seconds, dtype=np.float32)],
            use_audio_in_video=True,
            fps=2.0,
            do_resize=False,
            return_tensors="np",
        )
        ids = out["input_ids"][0]
        counts[seconds] = (int((ids == 151656).sum()), int((ids == 151646).sum()), len(ids))
    # 8 frames -> 4 temporal groups x 16 merged patches of video; 25 audio tokens per second.
    assert counts[2][:2] == (64, 50)
    assert counts[4][:2] == (64, 100)
    assert counts[4][2] - counts[2][2] == 50
