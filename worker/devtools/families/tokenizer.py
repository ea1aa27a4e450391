"""The Qwen2-layout byte-level BPE tokenizer every family uses, built offline: real byte ids and added-token
ids with a synthetic filler vocabulary, so a folder stays a few MB and encodes text like the real one."""

from __future__ import annotations

import itertools
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from worker.devtools.families.common import write_json

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

# Qwen2-VL predates the tool and FIM tokens: its tokenizer stops at <|video_pad|> (151656).
QWEN2_VL_ADDED_TOKENS: tuple[tuple[str, bool], ...] = QWEN2_5_ADDED_TOKENS[:14]

# Qwen3 (and Qwen3-VL) append the tool-response and thinking tags to the Qwen2.5 list; none of the four
# is "special", so they survive skip_special_tokens like the tool tokens before them.
QWEN3_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    *QWEN2_5_ADDED_TOKENS,
    ("<tool_response>", False),  # 151665
    ("</tool_response>", False),  # 151666
    ("<think>", False),  # 151667
    ("</think>", False),  # 151668
)

# Qwen2.5-Omni re-purposes ids 151646..151648 for audio and renames the vision markers: the audio
# tokens take the slots of <|object_ref_start|>, <|object_ref_end|> and <|box_start|>, and the
# image/video placeholders are upper-case words. Ids 151649..151664 keep their Qwen2.5 contents.
QWEN2_5_OMNI_ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),  # 151643
    ("<|im_start|>", True),  # 151644
    ("<|im_end|>", True),  # 151645
    ("<|AUDIO|>", True),  # 151646
    ("<|audio_bos|>", True),  # 151647
    ("<|audio_eos|>", True),  # 151648
    ("<|box_end|>", True),  # 151649
    ("<|quad_start|>", True),  # 151650
    ("<|quad_end|>", True),  # 151651
    ("<|vision_bos|>", True),  # 151652
    ("<|vision_eos|>", True),  # 151653
    ("<|vision_pad|>", True),  # 151654
    ("<|IMAGE|>", True),  # 151655
    ("<|VIDEO|>", True),  # 151656
    *QWEN2_5_ADDED_TOKENS[14:],  # <tool_call> 151657 .. <|file_sep|> 151664
)


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
    named_tokens: dict[str, str] | None = None,
) -> dict[str, Any]:
    """tokenizer_config.json in the layout the Qwen hub repos ship (transformers 4 style, which 5 reads).

    ``named_tokens`` are model-specific ``*_token`` keys (Qwen2.5-Omni's ``audio_token`` and the like):
    transformers 5 turns them into tokenizer attributes, which some processors read instead of
    hard-coding the token strings.
    """
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
        **(named_tokens or {}),
    }


def write_qwen2_tokenizer_files(
    out_dir: Path,
    added_tokens: tuple[tuple[str, bool], ...],
    *,
    chat_template: str,
    eos_token: str = "<|im_end|>",
    pad_token: str = "<|endoftext|>",
    model_max_length: int = 131072,
    named_tokens: dict[str, str] | None = None,
) -> None:
    """tokenizer.json, tokenizer_config.json and chat_template.jinja of a Qwen2-layout tokenizer."""
    tokenizer = build_qwen2_tokenizer(added_tokens)
    # Not pretty-printed: one line per vocabulary entry and merge part would add several MB.
    tokenizer.save(str(out_dir / "tokenizer.json"), pretty=False)
    write_json(
        out_dir / "tokenizer_config.json",
        _qwen2_tokenizer_config(
            added_tokens,
            eos_token=eos_token,
            pad_token=pad_token,
            model_max_length=model_max_length,
            named_tokens=named_tokens,
        ),
    )
    # The .jinja file is what transformers 5 reads for both the tokenizer and the processor, so one
    # template serves AutoTokenizer, AutoProcessor and vLLM's chat template resolution.
    (out_dir / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
