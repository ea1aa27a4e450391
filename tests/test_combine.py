"""Chunk prompts, the segment timeline, summary prompts and grouping segments within a token budget."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.job.combine import TimedText, chunk_prompt, group_within_budget, merged, summary_prompt, timeline


def test_chunk_prompt_states_the_span() -> None:
    assert chunk_prompt("Describe it.", 64.0, 128.0) == "Time 64.0–128.0 s of the video: Describe it."


def test_timeline_has_one_line_per_part_with_its_span() -> None:
    parts = [TimedText(0.0, 30.0, "A dog\nruns."), TimedText(30.0, 45.5, "It  sleeps.")]
    assert timeline(parts) == "[0.0–30.0 s] A dog runs.\n[30.0–45.5 s] It sleeps."


def test_summary_prompt_names_the_whole_span_and_the_request() -> None:
    parts = [TimedText(0.0, 30.0, "A dog runs."), TimedText(30.0, 60.0, "It sleeps.")]
    prompt = summary_prompt("What happens?", parts)
    assert "descriptions of 0.0–60.0 s" in prompt and timeline(parts) in prompt
    assert prompt.endswith("respond to this request about the video as a whole: What happens?")
    assert merged(parts, "short") == TimedText(0.0, 60.0, "short")


@given(st.lists(st.integers(0, 100), max_size=200), st.integers(1, 300))
def test_groups_are_consecutive_within_budget_and_greedy(costs: list[int], budget: int) -> None:
    groups = group_within_budget(costs, budget)
    assert [i for group in groups for i in group] == list(range(len(costs)))  # every item once, in order
    for group in groups:
        assert len(group) >= 1
        assert sum(costs[i] for i in group) <= budget or len(group) == 1  # only a lone item may exceed
    for group, following in itertools.pairwise(groups):
        # Greedy: the next group's first item did not fit into this one.
        assert sum(costs[i] for i in group) + costs[following[0]] > budget
    if all(c <= budget // 2 for c in costs) and len(costs) >= 2:
        assert len(groups) < len(costs)  # items of at most half the budget always merge: rounds terminate


def test_group_within_budget_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        group_within_budget([1], 0)
    with pytest.raises(ValueError):
        group_within_budget([-1], 5)
