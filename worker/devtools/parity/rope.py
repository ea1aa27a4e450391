"""Qwen's original M-RoPE position rule for Qwen2-VL and Qwen2.5-VL, restated from the code the models were
released with (transformers 4.49-4.57 ``Qwen2_5_VLModel.get_rope_index``; the Qwen2.5-VL paper's absolute
time encoding): a video's temporal index of group g is ``int(g * second_per_grid_t * tokens_per_second)``
(Qwen2-VL: ``g``), and the text after a visual block continues at the block's largest position + 1 over
all three axes. vLLM 0.26 computes the same. transformers 5.17 differs in two places (its
``get_rope_index``): it truncates ``second_per_grid_t`` to an integer before multiplying, and it
continues the text at ``max(h, w)`` after the block's start, ignoring how far the temporal axis went.
The harness uses this rule to tell those two differences apart from real ones (docs/correctness.md).
"""

from __future__ import annotations

import itertools

import numpy as np


def qwen_rope_index(
    token_types: list[int],
    image_grids: list[list[int]],
    video_grids: list[list[int]],
    second_per_grid_ts: list[float] | None,
    *,
    spatial_merge_size: int,
    tokens_per_second: float | None,
) -> np.ndarray:
    """(3, len(token_types)) positions. ``token_types``: 0 text, 1 image, 2 video per token (transformers'
    ``mm_token_type_ids``); grids are the processors' (t, h, w) in patches. ``tokens_per_second`` None:
    Qwen2-VL, whose temporal index is the group number."""
    images, videos = iter(image_grids), iter(video_grids)
    seconds = iter(second_per_grid_ts or [])
    parts: list[np.ndarray] = []
    start = 0
    for kind, group in itertools.groupby(token_types):
        length = len(list(group))
        if kind == 0:
            parts.append(np.broadcast_to(np.arange(length), (3, length)) + start)
        else:
            t, h, w = next(images) if kind == 1 else next(videos)
            grid = np.indices((t, h // spatial_merge_size, w // spatial_merge_size)).reshape(3, -1)
            if kind == 2 and tokens_per_second is not None:
                per_grid = next(seconds, 1.0)
                grid[0] = (grid[0] * per_grid * tokens_per_second).astype(np.int64)
            if grid.shape[1] != length:
                raise ValueError(f"a visual block of {length} tokens does not match its grid {(t, h, w)}")
            parts.append(grid + start)
        start = int(parts[-1].max()) + 1
    return np.concatenate(parts, axis=1).astype(np.int64)
