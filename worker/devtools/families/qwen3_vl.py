"""Qwen3-VL folders (Qwen/Qwen3-VL-8B-Instruct's layout): nested configs, deepstack vision, patch-16
processors and the tool-aware chat template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.devtools.families.common import write_json
from worker.devtools.families.tokenizer import QWEN3_ADDED_TOKENS, write_qwen2_tokenizer_files

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

# "8b" is Qwen/Qwen3-VL-8B-Instruct's config.json. Constraints "tiny" keeps: head_dim (explicit in
# Qwen3) = 2 * sum(mrope_section); out_hidden_size == text hidden_size; every deepstack index is a
# vision block (< depth) and there are no more deepstack levels than text layers, since level i is
# added to the output of text layer i.
QWEN3_VL_SIZES: dict[str, dict[str, Any]] = {
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
    dims = QWEN3_VL_SIZES[size]
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


def build_qwen3_vl(out_dir: Path, size: str) -> None:
    """Write every file of a Qwen3-VL folder of ``size`` into the existing ``out_dir``."""
    write_json(out_dir / "config.json", qwen3_vl_config(size))
    write_json(
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
    write_json(
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
    write_json(
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
    write_qwen2_tokenizer_files(
        out_dir, QWEN3_ADDED_TOKENS, chat_template=QWEN3_VL_CHAT_TEMPLATE, model_max_length=262144
    )
