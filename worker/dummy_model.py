"""Offline model folders that vLLM can serve with ``load_format="dummy"`` (random weights).

Tests, CI and smoke runs have no Hugging Face access, yet vLLM needs a model folder to read the
architecture, the tokenizer and the processor from. This module writes such a folder from scratch:
the real config layout, special token ids and processor numbers of the family, with a synthetic
byte-level BPE vocabulary in place of the real one (so the folder stays a few MB and nothing is
downloaded). No weight files are written; ``load_format="dummy"`` fills the parameters randomly.

    python -m worker.dummy_model /tmp/qwen-tiny --family qwen2_5_vl --size tiny

Families are registered in ``FAMILIES``; a new one (qwen2_vl, qwen3_vl, qwen2_5_omni, ...) is one
builder function plus one registry entry.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Qwen2 tokenizer family (Qwen2, Qwen2.5, Qwen2-VL, Qwen2.5-VL share the base vocabulary layout)
# --------------------------------------------------------------------------------------------------

# Size of the real Qwen2 byte-level BPE vocabulary: ids 0..151642; added tokens start right after.
QWEN2_BASE_VOCAB_SIZE = 151643

# Same regex as transformers' Qwen2Tokenizer. transformers 5 rebuilds the pre-tokenizer from code and
# keeps only vocab and merges from tokenizer.json, so writing the same one keeps a raw
# `tokenizers.Tokenizer.from_file` and AutoTokenizer splitting text identically.
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# (content, special) in id order from 151643, as in Qwen2.5(-VL)'s tokenizer_config.json. The tool
# and FIM tokens are not "special" there, so skip_special_tokens keeps them; copied for fidelity.
QWEN2_5_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),  # 151643
    ("<|im_start|>", True),  # 151644
    ("<|im_end|>", True),  # 151645
    ("<|object_ref_start|>", True),  # 151646
    ("<|object_ref_end|>", True),  # 151647
    ("<|box_start|>", True),  # 151648
    ("<|box_end|>", True),  # 151649
    ("<|quad_start|>", True),  # 151650
    ("<|quad_end|>", True),  # 151651
    ("<|vision_start|>", True),  # 151652
    ("<|vision_end|>", True),  # 151653
    ("<|vision_pad|>", True),  # 151654
    ("<|image_pad|>", True),  # 151655
    ("<|video_pad|>", True),  # 151656
    ("<tool_call>", False),  # 151657
    ("</tool_call>", False),  # 151658
    ("<|fim_prefix|>", False),  # 151659
    ("<|fim_middle|>", False),  # 151660
    ("<|fim_suffix|>", False),  # 151661
    ("<|fim_pad|>", False),  # 151662
    ("<|repo_name|>", False),  # 151663
    ("<|file_sep|>", False),  # 151664
)

# Verbatim from Qwen/Qwen2.5-VL-7B-Instruct (chat_template.json and tokenizer_config.json).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# OpenAI CLIP normalisation, which every Qwen VL image/video processor uses.
_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def byte_level_alphabet() -> list[str]:
    """The 256 byte stand-in characters of GPT-2 style byte-level BPE, in vocabulary order.

    Printable bytes map to themselves, the rest to U+0100 onward. Listing them in this order gives
    the same ids 0..255 as the real Qwen2 vocabulary ("!" is 0, "\\n" is 198, " " is 220).
    """
    # "!".."~", "¡".."¬", "®".."ÿ"
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars: dict[int, str] = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + shifted)
            shifted += 1
    # Vocabulary order is by stand-in code point, which is printable bytes first, then the shifted.
    return sorted(chars.values(), key=ord)


def _filler_tokens(count: int, space: str) -> Iterator[tuple[str, str, str]]:
    """``count`` synthetic multi-byte tokens as (token, left, right) merge triples.

    Dummy weights give near-uniform logits, so generation samples ids from the whole vocabulary and
    filler must decode to readable text: lowercase letter runs, with and without a leading space,
    like real BPE word pieces. Shorter pieces come first
    and every piece's prefix is an earlier piece, so each one is reachable by a merge and encoding
    ordinary English yields a few tokens per word instead of one per byte.
    """
    letters = string.ascii_lowercase
    produced = 0

    def take(candidates: Iterator[str]) -> Iterator[tuple[str, str, str]]:
        nonlocal produced
        for token in candidates:
            if produced >= count:
                return
            produced += 1
            yield token, token[:-1], token[-1]

    # " a" .. " z": prefixes of the space-led pieces below.
    yield from take(space + c for c in letters)
    for length in itertools.count(2):
        if produced >= count:
            return
        for prefix in (space, ""):
            yield from take(prefix + "".join(p) for p in itertools.product(letters, repeat=length))


def build_qwen2_tokenizer(added_tokens: tuple[tuple[str, bool], ...]) -> Tokenizer:
    """A Qwen2-layout byte-level BPE tokenizer: real byte ids, filler up to 151642, added tokens after."""
    alphabet = byte_level_alphabet()
    vocab: dict[str, int] = {ch: i for i, ch in enumerate(alphabet)}
    merges: list[tuple[str, str]] = []
    space = alphabet[220]
    for token, left, right in _filler_tokens(QWEN2_BASE_VOCAB_SIZE - len(alphabet), space):
        vocab[token] = len(vocab)
        merges.append((left, right))
    if len(vocab) != QWEN2_BASE_VOCAB_SIZE:
        raise AssertionError(f"filler vocabulary has {len(vocab)} entries, want {QWEN2_BASE_VOCAB_SIZE}")

    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, fuse_unk=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.decoder = decoders.ByteLevel()
    # One call per token, in order: each added token takes the next free id, which is what puts
    # them at their real ids (151643...).
    for content, special in added_tokens:
        token = AddedToken(content, special=special, normalized=False, lstrip=False, rstrip=False)
        if special:
            tokenizer.add_special_tokens([token])
        else:
            tokenizer.add_tokens([token])
    for offset, (content, _) in enumerate(added_tokens):
        if tokenizer.token_to_id(content) != QWEN2_BASE_VOCAB_SIZE + offset:
            raise AssertionError(f"{content} landed at {tokenizer.token_to_id(content)}")
    return tokenizer


def _qwen2_tokenizer_config(
    added_tokens: tuple[tuple[str, bool], ...],
    *,
    eos_token: str,
    pad_token: str,
    model_max_length: int,
) -> dict[str, Any]:
    """tokenizer_config.json in the layout the Qwen hub repos ship (transformers 4 style, which 5 reads)."""
    decoder = {
        str(QWEN2_BASE_VOCAB_SIZE + i): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for i, (content, special) in enumerate(added_tokens)
    }
    # Hub repos list every special token except <|endoftext|> here.
    extra = [content for content, special in added_tokens if special and content != "<|endoftext|>"]
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": extra,
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": eos_token,
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": pad_token,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_qwen2_tokenizer_files(
    out_dir: Path,
    added_tokens: tuple[tuple[str, bool], ...],
    *,
    chat_template: str,
    eos_token: str = "<|im_end|>",
    pad_token: str = "<|endoftext|>",
    model_max_length: int = 131072,
) -> None:
    tokenizer = build_qwen2_tokenizer(added_tokens)
    # Not pretty-printed: one line per vocabulary entry and merge part would add several MB.
    tokenizer.save(str(out_dir / "tokenizer.json"), pretty=False)
    _write_json(
        out_dir / "tokenizer_config.json",
        _qwen2_tokenizer_config(
            added_tokens, eos_token=eos_token, pad_token=pad_token, model_max_length=model_max_length
        ),
    )
    # The .jinja file is what transformers 5 reads for both the tokenizer and the processor, so one
    # template serves AutoTokenizer, AutoProcessor and vLLM's chat template resolution.
    (out_dir / "chat_template.jinja").write_text(chat_template, encoding="utf-8")


# --------------------------------------------------------------------------------------------------
# Qwen2.5-VL
# --------------------------------------------------------------------------------------------------

# Text and vision numbers per size. "7b" is Qwen/Qwen2.5-VL-7B-Instruct's config.json; "tiny" keeps
# every structural constraint (head_dim = 2 * sum(mrope_section), out_hidden_size == hidden_size,
# window_size a multiple of patch_size * spatial_merge_size, full-attention blocks inside the
# depth) with widths small enough that weights and forward passes cost next to nothing on a 2-core
# CPU (engine start-up is then dominated by vLLM itself).
_QWEN2_5_VL_SIZES: dict[str, dict[str, Any]] = {
    "7b": {
        "text": {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "max_window_layers": 28,
            "vocab_size": 152064,
            "mrope_section": [16, 24, 24],
            "torch_dtype": "bfloat16",
        },
        "vision": {
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
    },
    "tiny": {
        "text": {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            # head_dim 64: a size vLLM's CPU attention supports; 2 query heads share 1 KV head so
            # grouped-query attention is exercised as in the real model.
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_window_layers": 2,
            # Same padded vocabulary as 7B, so ids past the tokenizer (151665..152063) can be
            # sampled just as in production.
            "vocab_size": 152064,
            "mrope_section": [8, 12, 12],
            "torch_dtype": "bfloat16",
        },
        "vision": {
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            # Last block full attention, the others windowed, like 7B's every-8th pattern.
            "fullatt_block_indexes": [1],
        },
    },
}


def qwen2_5_vl_config(size: str) -> dict[str, Any]:
    """config.json of Qwen2.5-VL in the flat layout of the hub repos.

    Text fields sit at the top level (no ``text_config``) and ``rope_scaling`` uses ``type: mrope``,
    exactly like Qwen/Qwen2.5-VL-7B-Instruct: transformers 5 moves them into ``text_config`` on
    load, so the dummy goes through the same parsing as the production checkpoint.
    """
    dims = _QWEN2_5_VL_SIZES[size]
    text, vision = dims["text"], dims["vision"]
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "vision_start_token_id": 151652,
        "vision_end_token_id": 151653,
        "vision_token_id": 151654,
        "image_token_id": 151655,
        "video_token_id": 151656,
        "hidden_act": "silu",
        "hidden_size": text["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": text["intermediate_size"],
        "max_position_embeddings": 128000,
        "max_window_layers": text["max_window_layers"],
        "model_type": "qwen2_5_vl",
        "num_attention_heads": text["num_attention_heads"],
        "num_hidden_layers": text["num_hidden_layers"],
        "num_key_value_heads": text["num_key_value_heads"],
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": False,
        "torch_dtype": text["torch_dtype"],
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": vision["depth"],
            "hidden_act": "silu",
            "hidden_size": vision["hidden_size"],
            "intermediate_size": vision["intermediate_size"],
            "num_heads": vision["num_heads"],
            "in_chans": 3,
            "out_hidden_size": text["hidden_size"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "window_size": 112,
            "fullatt_block_indexes": vision["fullatt_block_indexes"],
            "tokens_per_second": 2,
            "temporal_patch_size": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": text["mrope_section"]},
        "vocab_size": text["vocab_size"],
    }


def _qwen_vl_processor_numbers() -> dict[str, Any]:
    # min_pixels 56*56 and max_pixels 14*14*4*16384, as in the Qwen2.5-VL hub repos.
    return {
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": _CLIP_MEAN,
        "image_std": _CLIP_STD,
    }


def _build_qwen2_5_vl(out_dir: Path, size: str) -> None:
    _write_json(out_dir / "config.json", qwen2_5_vl_config(size))
    # Qwen2.5-VL-7B-Instruct's generation_config.json: vLLM applies it as the default sampling
    # parameters (near-greedy), so requests without explicit sampling behave as in production.
    _write_json(
        out_dir / "generation_config.json",
        {
            "bos_token_id": 151643,
            "pad_token_id": 151643,
            "do_sample": True,
            "eos_token_id": [151645, 151643],
            "repetition_penalty": 1.05,
            "temperature": 0.1,
            "top_p": 0.001,
            "top_k": 1,
            "transformers_version": "4.37.0",
        },
    )
    _write_json(
        out_dir / "preprocessor_config.json",
        {
            **_qwen_vl_processor_numbers(),
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
        },
    )
    # The hub repo has no video processor file, so transformers builds the video processor from
    # preprocessor_config.json; writing the same numbers explicitly gives the identical processor.
    _write_json(
        out_dir / "video_preprocessor_config.json",
        {
            **_qwen_vl_processor_numbers(),
            "video_processor_type": "Qwen2VLVideoProcessor",
            "processor_class": "Qwen2_5_VLProcessor",
        },
    )
    _write_qwen2_tokenizer_files(out_dir, QWEN2_5_ADDED_TOKENS, chat_template=QWEN2_5_VL_CHAT_TEMPLATE)


# --------------------------------------------------------------------------------------------------
# Registry and entry points
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    build: Callable[[Path, str], None]  # writes every file into an existing directory
    sizes: tuple[str, ...]


FAMILIES: dict[str, Family] = {
    "qwen2_5_vl": Family(build=_build_qwen2_5_vl, sizes=tuple(_QWEN2_5_VL_SIZES)),
}


def build_dummy_model(out_dir: Path, family: str = "qwen2_5_vl", size: str = "tiny") -> Path:
    """Write a weightless model folder of ``family``/``size`` into ``out_dir`` and return its path.

    Existing files of the same names are overwritten, so rebuilding into a cached folder is safe.
    Serve it with vLLM's ``load_format="dummy"``.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    spec = FAMILIES[family]
    if size not in spec.sizes:
        raise ValueError(f"unknown size {size!r} for {family}; known: {', '.join(spec.sizes)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec.build(out_dir, size)
    log.info("wrote dummy %s (%s) model folder to %s", family, size, out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.dummy_model",
        description="Write an offline model folder (config, tokenizer, processor; no weights) for "
        'vLLM\'s load_format="dummy".',
    )
    parser.add_argument("out_dir", type=Path, help="directory to write (created if missing)")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="qwen2_5_vl")
    all_sizes = sorted({s for f in FAMILIES.values() for s in f.sizes})
    parser.add_argument("--size", choices=all_sizes, default="tiny")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = build_dummy_model(args.out_dir, args.family, args.size)
    except ValueError as exc:
        parser.error(str(exc))
    print(path.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
