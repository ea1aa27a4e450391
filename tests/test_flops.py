"""The FLOP estimate behind the benches' model FLOP utilisation (worker/devtools/flops.py): its attention
count against a brute-force count, its parts adding up, and the 7B shape's known size."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from worker.devtools.flops import (
    QWEN2_5_VL_7B,
    attention_pairs,
    mfu,
    text_flops,
    video_flops,
    vision_flops,
)

TEXT, VISION = QWEN2_5_VL_7B.text, QWEN2_5_VL_7B.vision


@given(st.integers(0, 300), st.integers(0, 60))
def test_attention_pairs_count_every_causal_query_key_pair(prompt: int, output: int) -> None:
    # Prefill: token i sees tokens 1..i. Decode: each fed-back output token sees the prompt and the outputs
    # up to itself; the last output token is sampled and never fed back.
    prefill = sum(range(1, prompt + 1))
    decode = sum(prompt + j for j in range(1, output))
    assert attention_pairs(prompt, output) == prefill + decode


@given(st.integers(1, 40_000), st.integers(1, 2_048), st.integers(1, 2_000))
def test_text_flops_are_the_weights_twice_per_token_plus_attention_and_grow_with_tokens(
    prompt: int, output: int, more: int
) -> None:
    flops = text_flops(TEXT, prompt, output)
    weights_only = 2 * TEXT.weights_per_token() * (prompt + output - 1) + 2 * TEXT.hidden * TEXT.vocab * output
    assert flops > weights_only
    assert text_flops(TEXT, prompt + more, output) > flops
    assert text_flops(TEXT, prompt, output + more) > flops


@given(st.integers(0, 20_000), st.integers(1, 120), st.integers(0, 4_000), st.integers(1, 512))
def test_a_video_is_its_encoder_plus_its_language_model(visual: int, frames: int, text: int, output: int) -> None:
    groups = -(-frames // VISION.temporal_patch)
    total = video_flops(QWEN2_5_VL_7B, visual + text, output, visual, frames)
    parts = vision_flops(VISION, visual, groups) + text_flops(TEXT, visual + text, output)
    assert math.isclose(total, parts)
    assert vision_flops(VISION, visual, groups) >= 2 * VISION.weights_per_patch() * visual * VISION.merge**2


@given(st.floats(0.01, 100), st.floats(1e12, 1e16), st.floats(1.5, 4))
def test_mfu_is_linear_in_the_throughput(rate: float, flops: float, factor: float) -> None:
    assert math.isclose(mfu(rate * factor, flops), factor * mfu(rate, flops))


def test_the_7b_shape_has_qwen2_5_vl_7bs_size() -> None:
    # 7.6 B parameters with the 0.55 B embedding, which a token looks up rather than multiplies through, and
    # the 0.55 B LM head; the vision tower ~0.67 B (its patch embedding and merger included).
    assert 6.4e9 < TEXT.weights_per_token() < 6.6e9 and TEXT.hidden * TEXT.vocab == 544_997_376
    assert 0.6e9 < VISION.weights_per_patch() < 0.7e9
    assert vision_flops(VISION, 0, 1) == 0.0
