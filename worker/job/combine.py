"""Words around chunked captioning: how a chunk's prompt states its time span, how segment captions are
laid out for the summary pass or joined, and how many of them fit one summary request.

Pure functions of strings and numbers; the pipeline counts tokens and calls the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class TimedText:
    start: float  # seconds of the video this text describes
    end: float
    text: str


def span_label(start: float, end: float) -> str:
    return f"{start:.1f}–{end:.1f} s"


def chunk_prompt(text: str, start: float, end: float) -> str:
    """The user's request for one chunk, stating which stretch of the video the frames come from (the
    model sees only the chunk; Qwen2.5-VL's temporal positions start at the chunk's first frame)."""
    return f"Time {span_label(start, end)} of the video: {text}"


def timeline(parts: Sequence[TimedText]) -> str:
    """One line per part: ``[64.0–128.0 s] caption``."""
    return "\n".join(f"[{span_label(p.start, p.end)}] {' '.join(p.text.split())}" for p in parts)


def summary_prompt(request: str, parts: Sequence[TimedText]) -> str:
    """The text-only request that turns timestamped segment captions into one answer about the whole
    stretch they cover."""
    first, last = parts[0], parts[-1]
    return (
        f"A video was described segment by segment. The descriptions of {span_label(first.start, last.end)}, "
        f"in order, each with its time span:\n\n{timeline(parts)}\n\n"
        f"Using only these descriptions, respond to this request about the video as a whole: {request}"
    )


def merged(parts: Sequence[TimedText], text: str) -> TimedText:
    """A summary of ``parts`` standing for their whole span."""
    return TimedText(parts[0].start, parts[-1].end, text)


def group_within_budget(costs: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive groups of item indices whose costs add up to at most ``budget`` each, greedily in
    order; an item costlier than the budget on its own forms a group alone (the caller shortens it)."""
    if budget < 1:
        raise ValueError(f"budget must be positive, got {budget}")
    groups: list[list[int]] = []
    total = 0
    for index, cost in enumerate(costs):
        if cost < 0:
            raise ValueError(f"costs must not be negative, got {cost}")
        if groups and total + cost <= budget:
            groups[-1].append(index)
            total += cost
        else:
            groups.append([index])
            total = cost
    return groups
