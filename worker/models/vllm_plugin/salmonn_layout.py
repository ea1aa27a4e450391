"""video-SALMONN 2+'s audio-visual prompt layout and M-RoPE positions, as pure functions.

The authors (bytedance/video-SALMONN-2, ``video_SALMONN2_plus``) cut the sound into 30 s pieces, give every
piece 60 tokens (one per 0.5 s window, padding included) and interleave them with the video: after the
visual tokens of each temporal grid step (two frames) come the audio tokens of the same stretch of time.
Both the plugin (prompt expansion, positions) and the worker's adapter (token budget, metadata) count with
these functions, so they cannot disagree. Kept free of vLLM and torch imports: the adapter loads it in the
worker process.
"""

from __future__ import annotations

import math

import numpy as np

AUDIO_SAMPLE_RATE = 16_000
# Whisper's input: 30 s pieces of 3000 mel frames, which its encoder turns into 1500 frames.
PIECE_SAMPLES = 30 * AUDIO_SAMPLE_RATE
ENCODER_FRAMES_PER_PIECE = 1500
# Shorter sound is padded to one second before the pieces are cut (the authors' data loader).
MIN_AUDIO_SAMPLES = AUDIO_SAMPLE_RATE
# Longest sound one job gives the model: 20 pieces, 1200 tokens. The engine profiles its memory with it.
MAX_AUDIO_SECONDS = 600.0


def window_frames(seconds: float) -> int:
    """Encoder frames in a Q-Former window of ``seconds`` (the config's second_per_window / second_stride)."""
    return round(ENCODER_FRAMES_PER_PIECE * seconds / 30.0)


def tokens_per_piece(second_per_window: float = 0.5, second_stride: float = 0.5) -> int:
    """Audio tokens per 30 s piece: one per Q-Former window over the 1500 encoder frames (60 for 0.5 s)."""
    kernel, stride = window_frames(second_per_window), window_frames(second_stride)
    return (ENCODER_FRAMES_PER_PIECE - kernel) // stride + 1


def audio_pieces(num_samples: int) -> int:
    """30 s pieces the model hears for ``num_samples`` of 16 kHz sound (0: no sound)."""
    if num_samples <= 0:
        return 0
    return math.ceil(max(num_samples, MIN_AUDIO_SAMPLES) / PIECE_SAMPLES)


def audio_token_count(num_samples: int, per_piece: int = 60) -> int:
    """Audio tokens for ``num_samples`` of 16 kHz sound: ceil(samples / 480000) x 60, padding included."""
    return audio_pieces(num_samples) * per_piece


def step_times(grid_t: int, second_per_grid: float) -> np.ndarray:
    """Temporal M-RoPE index of each grid step: floor(t * s * 2), s = seconds per step (Qwen2.5-VL's
    two position ticks per second)."""
    return (np.arange(grid_t, dtype=np.float64) * second_per_grid * 2.0).astype(np.int64)


def audio_split(grid_t: int, second_per_grid: float, audio_len: int) -> list[int]:
    """Audio tokens placed after each grid step: n_t = idx_{t+1} - idx_t, the last step takes the rest.

    Where the sound is shorter than the frames' time axis the authors' split would go negative; the indices
    are clamped to ``audio_len`` instead, so every token is placed exactly once and later steps get none.
    """
    idx = np.minimum(step_times(grid_t, second_per_grid), audio_len)
    counts = np.diff(idx).tolist()
    counts.append(audio_len - int(idx[-1]))
    return [int(c) for c in counts]


def interleaved_tokens(
    grid_t: int, tokens_per_step: int, split: list[int], video_token_id: int, audio_token_id: int
) -> list[int]:
    """The token ids replacing one video placeholder: per step its visual tokens, then its audio tokens."""
    out: list[int] = []
    for n_audio in split[:grid_t]:
        out += [video_token_id] * tokens_per_step + [audio_token_id] * n_audio
    return out


def av_block_positions(grid_t: int, grid_h: int, grid_w: int, second_per_grid: float, split: list[int]) -> np.ndarray:
    """(3, n) M-RoPE positions of an interleaved block, relative to its start (merged grid sizes).

    Video tokens of step t: (floor(t * s * 2), h, w). Audio token k: (k, 0, k)."""
    times = step_times(grid_t, second_per_grid)
    hw = grid_h * grid_w
    h_idx = np.repeat(np.arange(grid_h), grid_w)
    w_idx = np.tile(np.arange(grid_w), grid_h)
    parts: list[np.ndarray] = []
    k = 0
    for t in range(grid_t):
        parts.append(np.stack([np.full(hw, times[t]), h_idx, w_idx]))
        n = split[t]
        ks = np.arange(k, k + n)
        parts.append(np.stack([ks, np.zeros(n, dtype=np.int64), ks]))
        k += n
    return np.concatenate(parts, axis=1).astype(np.int64)


def mrope_positions(
    num_tokens: int,
    blocks: list[tuple[int, np.ndarray, bool]],
) -> tuple[np.ndarray, int]:
    """Positions of a whole prompt and the decode delta.

    ``blocks``: (offset, relative positions (3, n), is_audio_visual) per multimodal item in prompt order.
    Text runs count on from the previous block's largest index + 1; text after an audio-visual block counts
    on from that block's largest *time* index + 1 (the authors' rule). The delta, as for Qwen2.5-VL, is the
    largest index + 1 minus the prompt length.
    """
    parts: list[np.ndarray] = []
    st = 0
    next_idx = 0
    for offset, rel, is_av in sorted(blocks, key=lambda b: b[0]):
        text_len = offset - st
        parts.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + next_idx)
        block = rel + next_idx + text_len
        parts.append(block)
        st = offset + rel.shape[1]
        next_idx = int(block[0].max() if is_av else block.max()) + 1
    if st < num_tokens:
        text_len = num_tokens - st
        parts.append(np.broadcast_to(np.arange(text_len), (3, text_len)) + next_idx)
    positions = np.concatenate(parts, axis=1) if parts else np.zeros((3, 0), dtype=np.int64)
    delta = int(positions.max()) + 1 - num_tokens if num_tokens else 0
    return positions.astype(np.int64), delta
