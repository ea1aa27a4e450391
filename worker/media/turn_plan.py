"""Pure planning math of live commentary (LiveCC's protocol, seed 004's ``live_cc``): which source frames each
turn shows, the span its ``Time=`` text names, the frames' size and the context a conversation takes.
Numbers in, numbers out, like worker/media/frame_plan.py (kept apart so that module stays small).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from worker.media.frame_plan import VisionGeometry, smart_resize, video_tokens

# LiveCC's protocol: frames at 2 per second, a first turn of 6 frames (3 s), then one turn per 2 frames (1 s).
COMMENTARY_FPS = 2.0
INITIAL_FRAMES = 6
FRAMES_PER_TURN = 2
# LiveCC's frame size bounds: the seed's max_pixels and livecc-utils' VIDEO_MIN_PIXELS.
LIVECC_MAX_PIXELS = 384 * 28 * 28
LIVECC_MIN_PIXELS = 100 * 28 * 28
# A source frame time counts as at or after an instant within this much float noise.
_TIME_EPSILON = 1e-6


@dataclass(frozen=True)
class TurnPlan:
    """One user turn of a commentary: its clip's frames and the span its ``Time=`` text names."""

    index: int
    start: float  # seconds, the first frame's instant
    end: float  # seconds, the last frame's instant plus one frame interval
    timestamps: list[float]  # presentation times of the source frames shown, seconds from the video's start

    @property
    def label(self) -> str:
        return turn_label(self.start, self.end)


def turn_label(start: float, end: float) -> str:
    """The text that opens each turn, as LiveCC was trained with."""
    return f"Time={start:.1f}-{end:.1f}s"


def plan_turns(
    frame_times: Sequence[float],
    *,
    fps: float = COMMENTARY_FPS,
    initial_frames: int = INITIAL_FRAMES,
    frames_per_turn: int = FRAMES_PER_TURN,
    frame_multiple: int = 2,
) -> list[TurnPlan]:
    """The turns of a video whose frames are shown at ``frame_times`` (sorted seconds), as seed 004's
    ``live_cc`` steps through it one second at a time: instants every ``1 / fps`` seconds, the first
    ``initial_frames`` of them in the first turn and ``frames_per_turn`` in each one after. Each instant
    shows the first frame at or after it, searching from the frame after the previous turn's last (so a
    source slower than ``fps`` never shows one frame in two turns); a turn's frames are cut to a multiple
    of ``frame_multiple``. The commentary ends at the first later turn that does not get all its frames; a
    short first turn keeps what it got (at least ``frame_multiple`` frames, else there is no turn)."""
    if fps <= 0 or initial_frames < 1 or frames_per_turn < 1 or frame_multiple < 1:
        raise ValueError("fps and the frame counts must be positive")
    times = list(frame_times)
    interval = 1.0 / fps
    turns: list[TurnPlan] = []
    first_frame = 0  # the first source frame the next turn may show
    instant = 0  # index of the next instant
    while first_frame < len(times):
        count = frames_per_turn if turns else initial_frames
        if turns and instant * interval > times[-1] + _TIME_EPSILON:
            break  # the seed's end check: the next instant lies past the last frame
        chosen: list[int] = []
        j = first_frame
        for k in range(instant, instant + count):
            while j < len(times) and times[j] < k * interval - _TIME_EPSILON:
                j += 1
            if j >= len(times):
                break
            chosen.append(j)
        chosen = chosen[: len(chosen) - len(chosen) % frame_multiple]
        if not chosen or (turns and len(chosen) < count):
            break
        start, end = instant * interval, (instant + count) * interval
        turns.append(TurnPlan(len(turns), round(start, 6), round(end, 6), [times[j] for j in chosen]))
        first_frame = chosen[-1] + 1
        instant += count
    return turns


def commentary_frame_size(
    height: int, width: int, *, min_pixels: int, max_pixels: int, geometry: VisionGeometry
) -> tuple[int, int]:
    """(height, width) of every frame of a commentary: LiveCC's bounds (``LIVECC_MIN_PIXELS`` to
    ``LIVECC_MAX_PIXELS``) within the engine's ``min_pixels``..``max_pixels``; where the two do not
    overlap, the engine's range wins (its processor would otherwise resize the frames again)."""
    low = max(LIVECC_MIN_PIXELS, min_pixels)
    high = min(LIVECC_MAX_PIXELS, max_pixels)
    if low > high:
        low, high = (min_pixels, min_pixels) if min_pixels > LIVECC_MAX_PIXELS else (max_pixels, max_pixels)
    factor = geometry.factor
    low = max(low, factor * factor)
    return smart_resize(height, width, factor=factor, min_pixels=low, max_pixels=max(low, high))


def clip_tokens(num_frames: int, size: tuple[int, int], geometry: VisionGeometry) -> int:
    """Prompt tokens of one turn's clip of ``num_frames`` frames of ``size`` (height, width)."""
    return video_tokens(num_frames, size[0], size[1], geometry)


def turn_fits(history: int, turn: int, max_tokens: int, max_model_len: int) -> bool:
    """Whether a turn of ``turn`` prompt tokens, after ``history`` tokens of conversation, leaves room for
    an answer of ``max_tokens`` within ``max_model_len``."""
    return history + turn + max_tokens <= max_model_len


def real_time_factor(video_seconds: float, wall_seconds: float) -> float | None:
    """Seconds of video commented per second of wall time (None before any time has passed)."""
    if wall_seconds <= 0 or not math.isfinite(wall_seconds):
        return None
    return round(video_seconds / wall_seconds, 3)
