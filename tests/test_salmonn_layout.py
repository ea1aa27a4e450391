"""video-SALMONN 2+'s interleaved audio-visual layout and M-RoPE positions (worker.models.vllm_plugin.salmonn_layout)
against hand-computed cases and their invariants; the family adapter's prompt and audio count; its dummy
model folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from safetensors import safe_open
from transformers import AutoTokenizer

from worker.models.adapters import adapter_for
from worker.models.adapters.video_salmonn2_plus import CAPTION_PROMPT
from worker.devtools.dummy_model import build_dummy_model, salmonn_weight_shapes
from worker.api.schema import ChatMessage
from worker.models.vllm_plugin.salmonn_layout import (
    audio_split,
    audio_token_count,
    av_block_positions,
    interleaved_tokens,
    mrope_positions,
    tokens_per_piece,
)

V, A = 151656, 151665


def test_audio_tokens_per_started_30_s_piece() -> None:
    assert tokens_per_piece(0.5, 0.5) == 60
    assert audio_token_count(0) == 0
    assert audio_token_count(1) == 60  # padded to 1 s, then one 30 s piece
    assert audio_token_count(2 * 16_000) == 60
    assert audio_token_count(30 * 16_000) == 60
    assert audio_token_count(30 * 16_000 + 1) == 120
    assert audio_token_count(31 * 16_000) == 120


def test_issue_example_four_frames_at_2_fps_with_2_s_of_audio() -> None:
    # 4 frames at 2 fps: 2 grid steps of s = 1 s; idx = [0, 2]; 60 tokens -> [2, 58].
    assert audio_split(2, 1.0, audio_token_count(2 * 16_000)) == [2, 58]


def test_31_s_of_audio_over_16_frames_at_half_fps() -> None:
    # 16 frames at 0.5 fps: 8 steps of s = 4 s; idx = 0, 8, 16, ..., 56; 120 tokens, the last step 64.
    assert audio_split(8, 4.0, audio_token_count(31 * 16_000)) == [8] * 7 + [64]


def test_sound_shorter_than_the_frames_is_placed_once_without_negative_counts() -> None:
    # 60 s of frames at 1 fps (30 steps of 2 s, idx up to 116) with 2 s of sound: 60 tokens.
    split = audio_split(30, 2.0, 60)
    assert min(split) >= 0 and sum(split) == 60 and split[:15] == [4] * 15 and split[15:] == [0] * 15


@given(
    grid_t=st.integers(1, 40),
    fps=st.sampled_from([0.25, 0.5, 1.0, 2.0, 3.0, 10.0]),
    audio_len=st.integers(1, 20).map(lambda n: n * 60),
)
def test_split_places_every_audio_token_once(grid_t: int, fps: float, audio_len: int) -> None:
    split = audio_split(grid_t, 2 / fps, audio_len)
    assert len(split) == grid_t and min(split) >= 0 and sum(split) == audio_len


def test_positions_of_a_small_prompt_by_hand() -> None:
    # 3 text tokens, a 2-step 1x2 video (s = 1 s) with 3 audio tokens split [2, 1], then 2 text tokens.
    split = audio_split(2, 1.0, 3)
    assert split == [2, 1]
    assert interleaved_tokens(2, 2, split, V, A) == [V, V, A, A, V, V, A]
    rel = av_block_positions(2, 1, 2, 1.0, split)
    assert rel.tolist() == [
        [0, 0, 0, 1, 2, 2, 2],  # time: video step 0 -> 0, audio k -> k, video step 1 -> floor(1 * 1 * 2) = 2
        [0, 0, 0, 0, 0, 0, 0],
        [0, 1, 0, 1, 0, 1, 2],
    ]
    positions, delta = mrope_positions(12, [(3, rel, True)])
    assert positions.tolist() == [
        [0, 1, 2, 3, 3, 3, 4, 5, 5, 5, 6, 7],
        [0, 1, 2, 3, 3, 3, 3, 3, 3, 3, 6, 7],
        [0, 1, 2, 3, 4, 3, 4, 3, 4, 5, 6, 7],
    ]
    # Text after the block restarts at the block's largest *time* index + 1 (5 + 1), not the largest of all.
    assert delta == 8 - 12


def test_text_after_the_block_follows_time_even_when_width_runs_further() -> None:
    # 60 audio tokens over one step: w reaches 59 while time reaches 59 too; a 1-step 1x4 video.
    split = audio_split(1, 1.0, 60)
    rel = av_block_positions(1, 1, 4, 1.0, split)
    positions, _ = mrope_positions(1 + rel.shape[1] + 1, [(1, rel, True)])
    assert positions[:, -1].tolist() == [1 + 59 + 1] * 3


def test_without_audio_positions_are_qwen2_5_vl() -> None:
    grid = np.indices((2, 1, 2))
    grid[0] = (grid[0] * 1.0 * 2).astype(np.int64)
    positions, delta = mrope_positions(7, [(2, grid.reshape(3, -1), False)])
    assert positions.tolist() == [[0, 1, 2, 2, 4, 4, 5], [0, 1, 2, 2, 2, 2, 5], [0, 1, 2, 3, 2, 3, 5]]
    assert delta == 6 - 7


def test_adapter_prompt_counts_and_default() -> None:
    adapter = adapter_for(["video_SALMONN2_plus"])
    assert adapter.family == "video_salmonn2_plus" and adapter.supports_audio and adapter.audio_covers_span
    assert adapter.default_video_prompt == CAPTION_PROMPT
    assert adapter.audio_tokens(6 * 16_000) == 60 and adapter.audio_tokens(0) == 0
    prompt = adapter.build_prompt(None, "What happens?", "video", with_audio=True)
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>\nWhat happens?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    turns = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")]
    assert adapter.build_prompt(None, turns, None).startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert math.isclose(adapter.max_audio_seconds, 600.0)


def test_dummy_folders_have_the_checkpoints_layout(tmp_path: Path) -> None:
    for size, hidden, layers in (("7b", 3584, 28), ("3b", 2048, 36)):
        folder = build_dummy_model(tmp_path / size, "video_salmonn2_plus", size)
        config = json.loads((folder / "config.json").read_text())
        assert config["architectures"] == ["video_SALMONN2_plus"] and config["model_type"] == "qwen2_5_vl"
        assert (config["hidden_size"], config["num_hidden_layers"], config["audio_token_id"]) == (
            hidden,
            layers,
            151665,
        )
        audio = config["audio_config"]
        assert (audio["d_model"], audio["encoder_layers"], audio["encoder_attention_heads"]) == (1280, 32, 20)
        assert (audio["num_mel_bins"], audio["max_source_positions"], audio["second_per_window"]) == (128, 1500, 0.5)
        qformer = audio["qformer_config"]
        assert (qformer["hidden_size"], qformer["num_hidden_layers"], qformer["num_attention_heads"]) == (3072, 2, 12)
        assert (qformer["intermediate_size"], qformer["encoder_width"], qformer["out_hidden_size"]) == (
            12288,
            1280,
            hidden,
        )
        assert not (folder / "model.safetensors").exists()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert tokenizer.convert_tokens_to_ids("<|audio_pad|>") == 151665
        assert tokenizer.encode("<|video_pad|><|audio_pad|>") == [151656, 151665]
    tiny = build_dummy_model(tmp_path / "tiny", "video_salmonn2_plus", "tiny")
    config = json.loads((tiny / "config.json").read_text())
    with safe_open(tiny / "model.safetensors", "pt") as weights:
        names = set(weights.keys())
        shapes = {name: tuple(weights.get_slice(name).get_shape()) for name in names}
    assert names == set(salmonn_weight_shapes(config)) | {"audio.qformer.bert.embeddings.position_ids"}
    assert shapes["audio.qformer.bert.encoder.layer.1.crossattention.self.key.weight"] == (64, 64)
    assert shapes["audio.q_tokens"] == (1, 1, 64) and shapes["audio.audio_proj.weight"] == (128, 64)
    assert "audio.layers.0.self_attn.k_proj.bias" not in names and "lm_head.weight" in names
