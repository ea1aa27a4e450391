"""Offline model folders that vLLM can serve with ``load_format="dummy"`` (random weights).

Tests, CI and smoke runs have no Hugging Face access, yet vLLM needs a model folder to read the
architecture, the tokenizer and the processor from. This module writes such a folder from scratch:
the real config layout, special token ids and processor numbers of the family, with a synthetic
byte-level BPE vocabulary in place of the real one (so the folder stays a few MB and nothing is
downloaded). No weight files are written; ``load_format="dummy"`` fills the parameters randomly.

    python -m worker.devtools.dummy_model /tmp/qwen-tiny --family qwen2_5_vl --size tiny

Families (``FAMILIES``), each with a CPU-cheap ``tiny`` and the published size:

    qwen2_vl      tiny, 7b   Qwen/Qwen2-VL-7B-Instruct (also LiveCC-7B's layout)
    qwen2_5_vl    tiny, 7b   Qwen/Qwen2.5-VL-7B-Instruct
    qwen3_vl      tiny, 8b   Qwen/Qwen3-VL-8B-Instruct
    qwen2_5_omni  tiny, 7b   Qwen/Qwen2.5-Omni-7B (vLLM serves its thinker: audio, image, video in)
    video_salmonn2_plus  tiny, 3b, 7b   tsinghua-ee/video-SALMONN2_plus_{3B,7B}_full (worker.models.vllm_plugin);
                  its tiny folder also has seeded random weights under the authors' names (no dummy load)

A new family is one builder function plus one registry entry.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import string
import tempfile
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

# Qwen2-VL-7B-Instruct ships the very template Qwen2.5-VL later reused.
QWEN2_VL_CHAT_TEMPLATE = QWEN2_5_VL_CHAT_TEMPLATE

# Verbatim from Qwen/Qwen3-VL-8B-Instruct (chat_template.json). Unlike Qwen2(.5)-VL it adds no default
# system message, takes system content as a list of parts, and renders tool calls and responses.
QWEN3_VL_CHAT_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Verbatim from Qwen/Qwen2.5-Omni-7B (chat_template.json). Its default system message is the plain
# "You are a helpful assistant."; the "You are Qwen, a virtual human ..." prompt of the model card is
# something callers pass themselves (the card requires it for speech output, fine-tunes such as AVoCaDO
# were trained with it).
QWEN2_5_OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_bos|><|VIDEO|><|vision_eos|>"
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
    named_tokens: dict[str, str] | None = None,
) -> None:
    tokenizer = build_qwen2_tokenizer(added_tokens)
    # Not pretty-printed: one line per vocabulary entry and merge part would add several MB.
    tokenizer.save(str(out_dir / "tokenizer.json"), pretty=False)
    _write_json(
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


def qwen2_5_vl_config(size: str, dims: dict[str, Any] | None = None) -> dict[str, Any]:
    """config.json of Qwen2.5-VL in the flat layout of the hub repos.

    Text fields sit at the top level (no ``text_config``) and ``rope_scaling`` uses ``type: mrope``,
    exactly like Qwen/Qwen2.5-VL-7B-Instruct: transformers 5 moves them into ``text_config`` on
    load, so the dummy goes through the same parsing as the production checkpoint.
    """
    dims = dims or _QWEN2_5_VL_SIZES[size]
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
        "tie_word_embeddings": text.get("tie_word_embeddings", False),
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


def _qwen_vl_generation_config(temperature: float) -> dict[str, Any]:
    """generation_config.json of the Qwen2-VL and Qwen2.5-VL instruct repos (top_k 1: greedy in effect);
    they differ only in temperature."""
    return {
        "bos_token_id": 151643,
        "pad_token_id": 151643,
        "do_sample": True,
        "eos_token_id": [151645, 151643],
        "repetition_penalty": 1.05,
        "temperature": temperature,
        "top_p": 0.001,
        "top_k": 1,
        "transformers_version": "4.37.0",
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
    _write_qwen2_5_vl_configs(out_dir)
    _write_qwen2_tokenizer_files(out_dir, QWEN2_5_ADDED_TOKENS, chat_template=QWEN2_5_VL_CHAT_TEMPLATE)


def _write_qwen2_5_vl_configs(out_dir: Path) -> None:
    """Generation and processor configs of Qwen2.5-VL, which video-SALMONN 2+ checkpoints share."""
    # Qwen2.5-VL-7B-Instruct's generation_config.json: vLLM applies it as the default sampling
    # parameters (near-greedy), so requests without explicit sampling behave as in production.
    _write_json(out_dir / "generation_config.json", _qwen_vl_generation_config(0.1))
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


# --------------------------------------------------------------------------------------------------
# Qwen2-VL (also the layout of LiveCC-7B and other Qwen2-VL fine-tunes)
# --------------------------------------------------------------------------------------------------

# "7b" is Qwen/Qwen2-VL-7B-Instruct's config.json. Its vision tower is the older design: embed_dim and
# mlp_ratio instead of hidden_size/intermediate_size, LayerNorm and QuickGELU, no windowed attention;
# its vision "hidden_size" is the *text* width the merger projects to. "tiny" keeps head_dim =
# 2 * sum(mrope_section) and vision hidden_size == text hidden_size.
_QWEN2_VL_SIZES: dict[str, dict[str, Any]] = {
    "7b": {
        "text": _QWEN2_5_VL_SIZES["7b"]["text"],
        "vision": {"depth": 32, "embed_dim": 1280, "num_heads": 16},
    },
    "tiny": {
        "text": _QWEN2_5_VL_SIZES["tiny"]["text"],
        "vision": {"depth": 2, "embed_dim": 64, "num_heads": 2},
    },
}


def qwen2_vl_config(size: str) -> dict[str, Any]:
    """config.json of Qwen2-VL in the flat layout of the hub repos (text fields at the top level)."""
    dims = _QWEN2_VL_SIZES[size]
    text, vision = dims["text"], dims["vision"]
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
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
        "max_position_embeddings": 32768,
        "max_window_layers": text["max_window_layers"],
        "model_type": "qwen2_vl",
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
            "embed_dim": vision["embed_dim"],
            "mlp_ratio": 4,
            "num_heads": vision["num_heads"],
            "in_chans": 3,
            "hidden_size": text["hidden_size"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": text["mrope_section"]},
        "vocab_size": text["vocab_size"],
    }


def _build_qwen2_vl(out_dir: Path, size: str) -> None:
    _write_json(out_dir / "config.json", qwen2_vl_config(size))
    _write_json(out_dir / "generation_config.json", _qwen_vl_generation_config(0.01))
    _write_json(
        out_dir / "preprocessor_config.json",
        {
            **_qwen_vl_processor_numbers(),
            "image_processor_type": "Qwen2VLImageProcessor",
            "processor_class": "Qwen2VLProcessor",
        },
    )
    _write_json(
        out_dir / "video_preprocessor_config.json",
        {
            **_qwen_vl_processor_numbers(),
            "video_processor_type": "Qwen2VLVideoProcessor",
            "processor_class": "Qwen2VLProcessor",
        },
    )
    _write_qwen2_tokenizer_files(
        out_dir, QWEN2_VL_ADDED_TOKENS, chat_template=QWEN2_VL_CHAT_TEMPLATE, model_max_length=32768
    )


# --------------------------------------------------------------------------------------------------
# Qwen3-VL
# --------------------------------------------------------------------------------------------------

# "8b" is Qwen/Qwen3-VL-8B-Instruct's config.json. Constraints "tiny" keeps: head_dim (explicit in
# Qwen3) = 2 * sum(mrope_section); out_hidden_size == text hidden_size; every deepstack index is a
# vision block (< depth) and there are no more deepstack levels than text layers, since level i is
# added to the output of text layer i.
_QWEN3_VL_SIZES: dict[str, dict[str, Any]] = {
    "8b": {
        "text": {
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "mrope_section": [24, 20, 20],
        },
        "vision": {
            "depth": 27,
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_heads": 16,
            "deepstack_visual_indexes": [8, 16, 24],
        },
    },
    "tiny": {
        "text": {
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 64,
            "mrope_section": [12, 10, 10],
        },
        "vision": {
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "deepstack_visual_indexes": [0, 1],
        },
    },
}

# Qwen3-VL's processors: patch 16 (factor 32 with the 2x2 merge) and mean/std 0.5 instead of CLIP's.
_QWEN3_VL_PROCESSOR_NUMBERS: dict[str, Any] = {
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}


def qwen3_vl_config(size: str) -> dict[str, Any]:
    """config.json of Qwen3-VL: nested text_config/vision_config, interleaved M-RoPE in ``rope_scaling``."""
    dims = _QWEN3_VL_SIZES[size]
    text, vision = dims["text"], dims["vision"]
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "image_token_id": 151655,
        "model_type": "qwen3_vl",
        "text_config": {
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": 151643,
            "dtype": "bfloat16",
            "eos_token_id": 151645,
            "head_dim": text["head_dim"],
            "hidden_act": "silu",
            "hidden_size": text["hidden_size"],
            "initializer_range": 0.02,
            "intermediate_size": text["intermediate_size"],
            "max_position_embeddings": 262144,
            "model_type": "qwen3_vl_text",
            "num_attention_heads": text["num_attention_heads"],
            "num_hidden_layers": text["num_hidden_layers"],
            "num_key_value_heads": text["num_key_value_heads"],
            "rms_norm_eps": 1e-06,
            "rope_scaling": {
                "mrope_interleaved": True,
                "mrope_section": text["mrope_section"],
                "rope_type": "default",
            },
            "rope_theta": 5000000,
            "use_cache": True,
            "vocab_size": 151936,
        },
        "tie_word_embeddings": False,
        "transformers_version": "4.57.0.dev0",
        "video_token_id": 151656,
        "vision_config": {
            "deepstack_visual_indexes": vision["deepstack_visual_indexes"],
            "depth": vision["depth"],
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_size": vision["hidden_size"],
            "in_channels": 3,
            "initializer_range": 0.02,
            "intermediate_size": vision["intermediate_size"],
            # The hub file says "qwen3_vl" here; transformers rewrites it to "qwen3_vl_vision" on load.
            "model_type": "qwen3_vl",
            "num_heads": vision["num_heads"],
            "num_position_embeddings": 2304,
            "out_hidden_size": text["hidden_size"],
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        "vision_end_token_id": 151653,
        "vision_start_token_id": 151652,
    }


def _build_qwen3_vl(out_dir: Path, size: str) -> None:
    _write_json(out_dir / "config.json", qwen3_vl_config(size))
    _write_json(
        out_dir / "generation_config.json",
        {
            "bos_token_id": 151643,
            "pad_token_id": 151643,
            "do_sample": True,
            "eos_token_id": [151645, 151643],
            "top_k": 20,
            "top_p": 0.8,
            "repetition_penalty": 1.0,
            "temperature": 0.7,
            "transformers_version": "4.56.0",
        },
    )
    # Images: 256..65536 merged tokens (65536 = 256 * 32 * 32 pixels .. 16777216).
    _write_json(
        out_dir / "preprocessor_config.json",
        {
            "size": {"longest_edge": 16777216, "shortest_edge": 65536},
            **_QWEN3_VL_PROCESSOR_NUMBERS,
            "processor_class": "Qwen3VLProcessor",
            "image_processor_type": "Qwen2VLImageProcessorFast",
        },
    )
    # Video: a whole-clip pixel budget (longest_edge) rather than a per-frame one. fps/min/max frames are
    # the Qwen3VLVideoProcessor defaults the hub file relies on, written out so the folder states them.
    _write_json(
        out_dir / "video_preprocessor_config.json",
        {
            "size": {"longest_edge": 25165824, "shortest_edge": 4096},
            **_QWEN3_VL_PROCESSOR_NUMBERS,
            "fps": 2,
            "min_frames": 4,
            "max_frames": 768,
            "do_sample_frames": True,
            "processor_class": "Qwen3VLProcessor",
            "video_processor_type": "Qwen3VLVideoProcessor",
        },
    )
    _write_qwen2_tokenizer_files(
        out_dir, QWEN3_ADDED_TOKENS, chat_template=QWEN3_VL_CHAT_TEMPLATE, model_max_length=262144
    )


# --------------------------------------------------------------------------------------------------
# Qwen2.5-Omni
# --------------------------------------------------------------------------------------------------

# "7b" is Qwen/Qwen2.5-Omni-7B. The thinker (what vLLM serves) is a Qwen2.5-VL vision tower, a
# Whisper-large-v3-style audio encoder and a Qwen2.5-7B decoder; the talker (speech tokens) and
# token2wav (DiT + BigVGAN) are only parsed. "tiny" keeps: head_dim = 2 * sum(mrope_section), vision
# out_hidden_size == audio output_dim == text hidden_size == talker embedding_size, num_mel_bins ==
# the feature extractor's feature_size, and the vision window/full-attention rules of Qwen2.5-VL.
_QWEN2_5_OMNI_SIZES: dict[str, dict[str, Any]] = {
    "7b": {
        "text": {**_QWEN2_5_VL_SIZES["7b"]["text"]},
        "vision": {**_QWEN2_5_VL_SIZES["7b"]["vision"]},
        "audio": {"d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120},
        "talker": {
            "hidden_size": 896,
            "intermediate_size": 18944,
            "num_hidden_layers": 24,
            "num_attention_heads": 12,
            "num_key_value_heads": 4,
            "head_dim": 128,
        },
        "dit": {"hidden_size": 1024, "num_hidden_layers": 22, "num_attention_heads": 16, "head_dim": 64},
        "bigvgan": {"upsample_initial_channel": 1536},
    },
    "tiny": {
        "text": {**_QWEN2_5_VL_SIZES["tiny"]["text"]},
        "vision": {**_QWEN2_5_VL_SIZES["tiny"]["vision"]},
        "audio": {"d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 2, "encoder_ffn_dim": 128},
        "talker": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "num_key_value_heads": 1,
            "head_dim": 64,
        },
        "dit": {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 1, "head_dim": 64},
        "bigvgan": {"upsample_initial_channel": 64},
    },
}

_OMNI_AUDIO_TOKEN_ID = 151646
_OMNI_AUDIO_START_TOKEN_ID = 151647
_OMNI_AUDIO_END_TOKEN_ID = 151648


def _omni_rope_scaling(mrope_section: list[int]) -> dict[str, Any]:
    # Hub spelling for the Omni text/talker configs: "default" rope with an mrope_section.
    return {"mrope_section": mrope_section, "rope_type": "default", "type": "default"}


def qwen2_5_omni_config(size: str) -> dict[str, Any]:
    """config.json of Qwen2.5-Omni: thinker_config (audio/vision/text), talker_config, token2wav_config.

    The hub file is transformers' verbose dump of every config default (about 15 KB); this keeps the keys
    the parsing reads, with the hub's spellings (``*_token_index``, ``rope_scaling`` with ``type``).
    """
    dims = _QWEN2_5_OMNI_SIZES[size]
    text, vision, audio, talker = dims["text"], dims["vision"], dims["audio"], dims["talker"]
    hidden = text["hidden_size"]
    shared_ids = {
        "audio_end_token_id": _OMNI_AUDIO_END_TOKEN_ID,
        "audio_start_token_id": _OMNI_AUDIO_START_TOKEN_ID,
        "audio_token_index": _OMNI_AUDIO_TOKEN_ID,
        "image_token_index": 151655,
        "video_token_index": 151656,
        "vision_end_token_id": 151653,
        "vision_start_token_id": 151652,
        "position_id_per_seconds": 25,
        "seconds_per_chunk": 2,
    }
    thinker = {
        "architectures": ["Qwen2OmniNaViTThinkerForConditionalGeneration"],
        "model_type": "qwen2_5_omni_thinker",
        **shared_ids,
        "vision_token_id": 151654,
        "bos_token_id": 151644,
        "eos_token_id": 151645,
        "pad_token_id": 151643,
        "ignore_index": -100,
        "init_std": 0.02,
        "user_token_id": 872,
        "torch_dtype": "bfloat16",
        "audio_config": {
            "model_type": "qwen2_5_omni_audio_encoder",
            "activation_dropout": 0.0,
            "activation_function": "gelu",
            "attention_dropout": 0.0,
            "d_model": audio["d_model"],
            "dropout": 0.0,
            "encoder_attention_heads": audio["encoder_attention_heads"],
            "encoder_ffn_dim": audio["encoder_ffn_dim"],
            "encoder_layerdrop": 0.0,
            "encoder_layers": audio["encoder_layers"],
            "init_std": 0.02,
            "max_source_positions": 1500,
            "n_window": 100,
            "num_hidden_layers": audio["encoder_layers"],
            # 128 mel bins, the WhisperFeatureExtractor's feature_size below.
            "num_mel_bins": 128,
            "output_dim": hidden,
            "scale_embedding": False,
            "torch_dtype": "bfloat16",
        },
        "text_config": {
            "model_type": "qwen2_5_omni_text",
            "hidden_act": "silu",
            "hidden_size": hidden,
            "init_std": 0.02,
            "intermediate_size": text["intermediate_size"],
            "max_position_embeddings": 32768,
            "max_window_layers": text["max_window_layers"],
            "num_attention_heads": text["num_attention_heads"],
            "num_hidden_layers": text["num_hidden_layers"],
            "num_key_value_heads": text["num_key_value_heads"],
            "rms_norm_eps": 1e-06,
            "rope_scaling": _omni_rope_scaling(text["mrope_section"]),
            "rope_theta": 1000000.0,
            "sliding_window": 32768,
            # The checkpoint has its own thinker.lm_head; the text config class defaults to tying.
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": text["vocab_size"],
        },
        "vision_config": {
            "model_type": "qwen2_5_omni_vision_encoder",
            "depth": vision["depth"],
            "embed_dim": vision["hidden_size"],
            "fullatt_block_indexes": vision["fullatt_block_indexes"],
            "hidden_act": "silu",
            "hidden_size": vision["hidden_size"],
            "in_channels": 3,
            "in_chans": 3,
            "intermediate_size": vision["intermediate_size"],
            "num_heads": vision["num_heads"],
            "out_hidden_size": hidden,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
            # Omni's temporal position ids tick 25 per second (40 ms), matching position_id_per_seconds.
            "tokens_per_second": 25,
            "window_size": 112,
            "torch_dtype": "bfloat16",
        },
    }
    talker_config = {
        "architectures": ["Qwen2OmniTalkerForConditionalGeneration"],
        "model_type": "qwen2_5_omni_talker",
        **shared_ids,
        "attention_dropout": 0.0,
        "embedding_size": hidden,
        "head_dim": talker["head_dim"],
        "hidden_act": "silu",
        "hidden_size": talker["hidden_size"],
        "init_std": 0.02,
        "initializer_range": 0.02,
        "intermediate_size": talker["intermediate_size"],
        "max_position_embeddings": 32768,
        "max_window_layers": 28,
        "num_attention_heads": talker["num_attention_heads"],
        "num_hidden_layers": talker["num_hidden_layers"],
        "num_key_value_heads": talker["num_key_value_heads"],
        "rms_norm_eps": 1e-06,
        "rope_scaling": _omni_rope_scaling(text["mrope_section"]),
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "spatial_merge_size": 2,
        "torch_dtype": "bfloat16",
        "tts_codec_end_token_id": 8294,
        "tts_codec_mask_token_id": 8296,
        "tts_codec_pad_token_id": 8292,
        "tts_codec_start_token_id": 8293,
        "tts_text_end_token_id": 151861,
        "tts_text_pad_token_id": 151859,
        "tts_text_start_token_id": 151860,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 8448,
    }
    token2wav_config = {
        "model_type": "qwen2_5_omni_token2wav",
        "dit_config": {
            "model_type": "qwen2_5_omni_dit",
            **dims["dit"],
            "block_size": 24,
            "dropout": 0.1,
            "emb_dim": 512,
            "enc_attention_channels": 64,
            "enc_channels": [256, 256, 256, 256, 768],
            "enc_dilations": [1, 2, 3, 4, 1],
            "enc_dim": 128,
            "enc_emb_dim": 192,
            "enc_kernel_sizes": [5, 3, 3, 3, 1],
            "enc_res2net_scale": 2,
            "enc_se_channels": 64,
            "ff_mult": 2,
            "look_ahead_layers": [10],
            "look_backward_layers": [0, 20],
            "max_position_embeddings": 32768,
            "mel_dim": 80,
            "num_embeds": 8193,
            "repeats": 2,
        },
        "bigvgan_config": {
            "model_type": "qwen2_5_omni_bigvgan",
            "mel_dim": 80,
            "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
            "resblock_kernel_sizes": [3, 7, 11],
            "upsample_initial_channel": dims["bigvgan"]["upsample_initial_channel"],
            "upsample_kernel_sizes": [11, 7, 4, 4, 4, 4],
            "upsample_rates": [5, 3, 2, 2, 2, 2],
        },
    }
    return {
        "architectures": ["Qwen2_5OmniModel"],
        "enable_audio_output": True,
        "enable_talker": True,
        "model_type": "qwen2_5_omni",
        "talker_config": talker_config,
        "thinker_config": thinker,
        "token2wav_config": token2wav_config,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.50.0.dev0",
    }


# Whisper-large-v3 front end of Qwen2.5-Omni: 128 mel bins of 25 ms windows every 10 ms at 16 kHz,
# padded to (at most) 300 s per audio.
_WHISPER_FEATURE_EXTRACTOR: dict[str, Any] = {
    "feature_extractor_type": "WhisperFeatureExtractor",
    "feature_size": 128,
    "sampling_rate": 16000,
    "hop_length": 160,
    "n_fft": 400,
    "chunk_length": 300,
    "n_samples": 4800000,
    "nb_max_frames": 30000,
    "dither": 0.0,
    "padding_side": "right",
    "padding_value": 0.0,
    "return_attention_mask": True,
}

# Model-specific token names in Qwen2.5-Omni's tokenizer_config.json; Qwen2_5OmniProcessor reads them
# from the tokenizer (tokenizer.audio_token, ...) and fails without them.
_QWEN2_5_OMNI_NAMED_TOKENS: dict[str, str] = {
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "audio_token": "<|AUDIO|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}


def _build_qwen2_5_omni(out_dir: Path, size: str) -> None:
    _write_json(out_dir / "config.json", qwen2_5_omni_config(size))
    # The hub file carries no sampling defaults (transformers/vLLM defaults apply) and no eos list.
    _write_json(out_dir / "generation_config.json", {"_from_model_config": True, "transformers_version": "4.50.0.dev0"})
    _write_json(
        out_dir / "preprocessor_config.json",
        {
            **_qwen_vl_processor_numbers(),
            "image_processor_type": "Qwen2VLImageProcessor",
            **_WHISPER_FEATURE_EXTRACTOR,
            "processor_class": "Qwen2_5OmniProcessor",
        },
    )
    _write_json(
        out_dir / "video_preprocessor_config.json",
        {
            **_qwen_vl_processor_numbers(),
            "video_processor_type": "Qwen2VLVideoProcessor",
            "processor_class": "Qwen2_5OmniProcessor",
        },
    )
    _write_qwen2_tokenizer_files(
        out_dir,
        QWEN2_5_OMNI_ADDED_TOKENS,
        chat_template=QWEN2_5_OMNI_CHAT_TEMPLATE,
        model_max_length=32768,
        named_tokens=_QWEN2_5_OMNI_NAMED_TOKENS,
    )


# --------------------------------------------------------------------------------------------------
# video-SALMONN 2+ (Qwen2.5-VL + Whisper-large-v3 encoder + window Q-Former; bytedance/video-SALMONN-2)
# --------------------------------------------------------------------------------------------------

# The authors add one token after Qwen2.5-VL's specials (tokenizer.add_tokens: not "special").
SALMONN_AUDIO_TOKEN_ID = 151665
_SALMONN_ADDED_TOKENS = (*QWEN2_5_ADDED_TOKENS, ("<|audio_pad|>", False))

# "3b"/"7b" follow tsinghua-ee/video-SALMONN2_plus_{3B,7B}_full: Qwen2.5-VL-3B/7B-Instruct text and vision,
# Whisper-large-v3's encoder, a 2-layer 3072-wide Q-Former. "tiny" keeps the structural constraints
# (1500 encoder positions for a 30 s piece, 128 mel bins, encoder_width == d_model, out == LLM width).
_SALMONN_SIZES: dict[str, dict[str, Any]] = {
    "7b": {
        **_QWEN2_5_VL_SIZES["7b"],
        "audio": {"d_model": 1280, "layers": 32, "heads": 20, "ffn": 5120},
        "qformer": {"hidden": 3072, "layers": 2, "heads": 12, "ffn": 12288},
    },
    "3b": {
        "text": {
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "max_window_layers": 70,
            "vocab_size": 151936,
            "mrope_section": [16, 24, 24],
            "torch_dtype": "bfloat16",
            "tie_word_embeddings": True,
        },
        "vision": _QWEN2_5_VL_SIZES["7b"]["vision"],
        "audio": {"d_model": 1280, "layers": 32, "heads": 20, "ffn": 5120},
        "qformer": {"hidden": 3072, "layers": 2, "heads": 12, "ffn": 12288},
    },
    "tiny": {
        **_QWEN2_5_VL_SIZES["tiny"],
        "audio": {"d_model": 64, "layers": 2, "heads": 2, "ffn": 128},
        "qformer": {"hidden": 64, "layers": 2, "heads": 2, "ffn": 128},
    },
}


def video_salmonn2_plus_config(size: str) -> dict[str, Any]:
    """config.json as the authors' checkpoints have it: Qwen2.5-VL's, architecture video_SALMONN2_plus,
    ``audio_token_id`` and a Whisper ``audio_config`` carrying the Q-Former's ``qformer_config``."""
    dims = _SALMONN_SIZES[size]
    config = qwen2_5_vl_config(size, dims)
    audio, qformer = dims["audio"], dims["qformer"]
    config["architectures"] = ["video_SALMONN2_plus"]
    config["audio_token_id"] = SALMONN_AUDIO_TOKEN_ID
    config["audio_config"] = {
        "model_type": "whisper",
        "activation_function": "gelu",
        "d_model": audio["d_model"],
        "encoder_layers": audio["layers"],
        "encoder_attention_heads": audio["heads"],
        "encoder_ffn_dim": audio["ffn"],
        "num_mel_bins": 128,
        "max_source_positions": 1500,
        "scale_embedding": False,
        "second_per_window": 0.5,
        "second_stride": 0.5,
        "qformer_config": {
            "model_type": "bert",
            "hidden_size": qformer["hidden"],
            "num_hidden_layers": qformer["layers"],
            "num_attention_heads": qformer["heads"],
            "intermediate_size": qformer["ffn"],
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-12,
            "encoder_width": audio["d_model"],
            "add_cross_attention": True,
            "cross_attention_freq": 1,
            "query_length": 1,
            "max_position_embeddings": 512,
            "out_hidden_size": dims["text"]["hidden_size"],
        },
    }
    return config


def salmonn_weight_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor of a video-SALMONN 2+ checkpoint, by the authors' names (transformers 4.5x layout:
    ``visual.*``, ``model.*``, ``lm_head.*``, ``audio.*``), with its shape."""
    vision, audio = config["vision_config"], config["audio_config"]
    qformer = audio["qformer_config"]
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = hidden // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * head_dim
    shapes: dict[str, tuple[int, ...]] = {}
    vh, vi, patch = vision["hidden_size"], vision["intermediate_size"], vision["patch_size"]
    shapes["visual.patch_embed.proj.weight"] = (vh, 3, vision["temporal_patch_size"], patch, patch)
    for i in range(vision["depth"]):
        b = f"visual.blocks.{i}"
        shapes |= {f"{b}.norm1.weight": (vh,), f"{b}.norm2.weight": (vh,)}
        shapes |= {f"{b}.attn.qkv.weight": (3 * vh, vh), f"{b}.attn.qkv.bias": (3 * vh,)}
        shapes |= {f"{b}.attn.proj.weight": (vh, vh), f"{b}.attn.proj.bias": (vh,)}
        for proj, (o, n) in {"gate_proj": (vi, vh), "up_proj": (vi, vh), "down_proj": (vh, vi)}.items():
            shapes |= {f"{b}.mlp.{proj}.weight": (o, n), f"{b}.mlp.{proj}.bias": (o,)}
    merged = vh * vision["spatial_merge_size"] ** 2
    shapes |= {"visual.merger.ln_q.weight": (vh,)}
    shapes |= {"visual.merger.mlp.0.weight": (merged, merged), "visual.merger.mlp.0.bias": (merged,)}
    shapes |= {"visual.merger.mlp.2.weight": (vision["out_hidden_size"], merged)}
    shapes |= {"visual.merger.mlp.2.bias": (vision["out_hidden_size"],)}
    shapes["model.embed_tokens.weight"] = (config["vocab_size"], hidden)
    for i in range(config["num_hidden_layers"]):
        b = f"model.layers.{i}"
        shapes |= {f"{b}.self_attn.q_proj.weight": (hidden, hidden), f"{b}.self_attn.q_proj.bias": (hidden,)}
        shapes |= {f"{b}.self_attn.k_proj.weight": (kv, hidden), f"{b}.self_attn.k_proj.bias": (kv,)}
        shapes |= {f"{b}.self_attn.v_proj.weight": (kv, hidden), f"{b}.self_attn.v_proj.bias": (kv,)}
        shapes |= {f"{b}.self_attn.o_proj.weight": (hidden, hidden)}
        shapes |= {f"{b}.mlp.gate_proj.weight": (inter, hidden), f"{b}.mlp.up_proj.weight": (inter, hidden)}
        shapes |= {f"{b}.mlp.down_proj.weight": (hidden, inter)}
        shapes |= {f"{b}.input_layernorm.weight": (hidden,), f"{b}.post_attention_layernorm.weight": (hidden,)}
    shapes["model.norm.weight"] = (hidden,)
    if not config["tie_word_embeddings"]:
        shapes["lm_head.weight"] = (config["vocab_size"], hidden)
    d, ffn = audio["d_model"], audio["encoder_ffn_dim"]
    shapes |= {"audio.conv1.weight": (d, audio["num_mel_bins"], 3), "audio.conv1.bias": (d,)}
    shapes |= {"audio.conv2.weight": (d, d, 3), "audio.conv2.bias": (d,)}
    shapes["audio.embed_positions.weight"] = (audio["max_source_positions"], d)
    for i in range(audio["encoder_layers"]):
        b = f"audio.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{b}.self_attn.{proj}.weight"] = (d, d)
            if proj != "k_proj":  # Whisper's key projection has no bias
                shapes[f"{b}.self_attn.{proj}.bias"] = (d,)
        shapes |= {
            f"{b}.fc1.weight": (ffn, d),
            f"{b}.fc1.bias": (ffn,),
            f"{b}.fc2.weight": (d, ffn),
            f"{b}.fc2.bias": (d,),
        }
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes |= {f"{b}.{norm}.weight": (d,), f"{b}.{norm}.bias": (d,)}
    shapes |= {"audio.layer_norm.weight": (d,), "audio.layer_norm.bias": (d,)}
    qh, qi, width = qformer["hidden_size"], qformer["intermediate_size"], qformer["encoder_width"]
    q = "audio.qformer.bert"
    shapes |= {f"{q}.embeddings.LayerNorm.weight": (qh,), f"{q}.embeddings.LayerNorm.bias": (qh,)}
    for i in range(qformer["num_hidden_layers"]):
        b = f"{q}.encoder.layer.{i}"
        for attn, kv_width in (("attention", qh), ("crossattention", width)):
            shapes |= {f"{b}.{attn}.self.query.weight": (qh, qh), f"{b}.{attn}.self.query.bias": (qh,)}
            for proj in ("key", "value"):
                shapes |= {f"{b}.{attn}.self.{proj}.weight": (qh, kv_width), f"{b}.{attn}.self.{proj}.bias": (qh,)}
            shapes |= {f"{b}.{attn}.output.dense.weight": (qh, qh), f"{b}.{attn}.output.dense.bias": (qh,)}
            shapes |= {f"{b}.{attn}.output.LayerNorm.weight": (qh,), f"{b}.{attn}.output.LayerNorm.bias": (qh,)}
        shapes |= {f"{b}.intermediate_query.dense.weight": (qi, qh), f"{b}.intermediate_query.dense.bias": (qi,)}
        shapes |= {f"{b}.output_query.dense.weight": (qh, qi), f"{b}.output_query.dense.bias": (qh,)}
        shapes |= {f"{b}.output_query.LayerNorm.weight": (qh,), f"{b}.output_query.LayerNorm.bias": (qh,)}
    shapes["audio.q_tokens"] = (1, qformer["query_length"], qh)
    shapes |= {
        "audio.audio_proj.weight": (qformer["out_hidden_size"], qh),
        "audio.audio_proj.bias": (qformer["out_hidden_size"],),
    }
    return shapes


def write_salmonn_weights(out_dir: Path, config: dict[str, Any], seed: int = 0) -> Path:
    """model.safetensors of seeded random weights under the authors' names (bfloat16, as they ship), plus the
    Q-Former's ``embeddings.position_ids`` buffer their checkpoints may carry. Norm weights start near 1 so
    activations stay in range; everything else is N(0, 0.02)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for name, shape in salmonn_weight_shapes(config).items():
        value = torch.randn(shape, generator=generator) * 0.02
        if "norm" in name.lower() and name.endswith(".weight"):
            value += 1.0
        tensors[name] = value.to(torch.bfloat16)
    positions = config["audio_config"]["qformer_config"]["max_position_embeddings"]
    tensors["audio.qformer.bert.embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)
    path = out_dir / "model.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def _build_video_salmonn2_plus(out_dir: Path, size: str) -> None:
    config = video_salmonn2_plus_config(size)
    _write_json(out_dir / "config.json", config)
    _write_qwen2_5_vl_configs(out_dir)
    _write_qwen2_tokenizer_files(out_dir, _SALMONN_ADDED_TOKENS, chat_template=QWEN2_5_VL_CHAT_TEMPLATE)
    if size == "tiny":
        write_salmonn_weights(out_dir, config)


# --------------------------------------------------------------------------------------------------
# Registry and entry points
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    build: Callable[[Path, str], None]  # writes every file into an existing directory
    sizes: tuple[str, ...]


FAMILIES: dict[str, Family] = {
    "qwen2_vl": Family(build=_build_qwen2_vl, sizes=tuple(_QWEN2_VL_SIZES)),
    "qwen2_5_vl": Family(build=_build_qwen2_5_vl, sizes=tuple(_QWEN2_5_VL_SIZES)),
    "qwen3_vl": Family(build=_build_qwen3_vl, sizes=tuple(_QWEN3_VL_SIZES)),
    "qwen2_5_omni": Family(build=_build_qwen2_5_omni, sizes=tuple(_QWEN2_5_OMNI_SIZES)),
    "video_salmonn2_plus": Family(build=_build_video_salmonn2_plus, sizes=tuple(_SALMONN_SIZES)),
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


def cached_dummy_model(family: str, size: str) -> Path:
    """``build_dummy_model`` into one fixed folder per family and size on this machine (under the temp
    folder). vLLM keys its torch.compile cache by the model's path among the engine settings: benchmarks
    that build their model here reuse the graph an earlier run compiled (30+ s of every engine start on
    an H100) instead of compiling it again for a new temporary path."""
    return build_dummy_model(Path(tempfile.gettempdir()) / "dummy-models" / f"{family}-{size}", family, size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.devtools.dummy_model",
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
