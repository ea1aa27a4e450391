"""A chunked job's one caption from its segments: joined as a timeline, or summarised by text-only engine
requests, in several rounds when the segment captions do not fit one request together; a context job's
answer is the same requests over an earlier job's segments. The words and the grouping are
worker/job/combine.py's; here are the token counts and the requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from worker.api.schema import CaptionRequest
from worker.api.result import CombineInfo, Segment
from worker.engine import Engine, Generation
from worker.job.combine import TimedText, group_within_budget, merged, summary_prompt, timeline
from worker.job.context import JobContext, gather_all, since
from worker.job.generate import count_tokens, generate, parse_structured

log = logging.getLogger(__name__)

# Tokens kept free in a summary request besides the template, the answer and the segment lines.
SUMMARY_MARGIN = 16


async def combine(
    job: JobContext, engine: Engine, segments: list[Segment], warnings: list[str]
) -> tuple[str, Any, CombineInfo, list[Generation]]:
    """The job's caption and structured answer from its segments, how they were combined, and the
    summary requests' generations."""
    request = job.request
    started = time.perf_counter()
    parts = [TimedText(s.start, s.end, s.caption) for s in segments]
    if request.combine_method == "concat":
        structured = [s.structured for s in segments] if request.json_schema is not None else None
        info = CombineInfo(
            method="concat", requests=0, prompt_tokens=0, completion_tokens=0, finish_reason=None, seconds=0.0
        )
        return timeline(parts), structured, info, []
    generations = await answer(job, engine, parts)
    final = generations[-1]
    if final.finish_reason == "length":
        warnings.append(f"summary cut at max_tokens={request.max_tokens}")
    structured = parse_structured(request, final, warnings, "the summary")
    info = CombineInfo(
        method="summary",
        requests=len(generations),
        prompt_tokens=sum(g.prompt_tokens for g in generations),
        completion_tokens=sum(g.completion_tokens for g in generations),
        finish_reason=final.finish_reason,
        seconds=since(started),
    )
    return final.text, structured, info, generations


async def answer(job: JobContext, engine: Engine, parts: list[TimedText]) -> list[Generation]:
    """The text-only requests that answer the job's request (or question) from timestamped ``parts``; the
    last one's generation is the answer, following the job's json_schema."""
    generations: list[Generation] = []
    budget = await asyncio.to_thread(summary_budget, engine, job.request)
    while True:
        costs = await asyncio.to_thread(line_costs, engine, parts)
        if sum(costs) <= budget:
            break
        # Several rounds: each group of consecutive segments is summarised into one timed text, until
        # all of them fit one request. Lines are shortened to half the budget so every round merges.
        parts = await asyncio.to_thread(shorten, engine, parts, costs, budget // 2)
        costs = [min(cost, budget // 2) for cost in costs]
        groups = group_within_budget(costs, budget)
        log.info("job %s: summarising %d segments in %d groups first", job.job_id, len(parts), len(groups))
        round_generations = await gather_all(
            summarise(job, engine, [parts[i] for i in group], None) for group in groups
        )
        generations += round_generations
        parts = [merged([parts[i] for i in group], g.text) for group, g in zip(groups, round_generations)]
    generations.append(await summarise(job, engine, parts, job.request.json_schema))
    return generations


async def summarise(
    job: JobContext, engine: Engine, parts: list[TimedText], json_schema: dict[str, Any] | None
) -> Generation:
    """One text-only request: ``parts`` summarised as the job's request asks."""
    text = summary_prompt(job.request.text, parts)
    prompt = engine.adapter.build_prompt(engine.tokenizer, text, None)
    async with job.slots:
        return await generate(job, {"prompt": prompt}, json_schema)


def summary_budget(engine: Engine, request: CaptionRequest) -> int:
    """Tokens the segment lines may take in one summary request, next to its words and the answer."""
    empty = summary_prompt(request.text, [TimedText(0.0, 0.0, "")])
    words = count_tokens(engine, engine.adapter.build_prompt(engine.tokenizer, empty, None))
    return max(2, engine.max_model_len - request.max_tokens - words - SUMMARY_MARGIN)


def shorten(engine: Engine, parts: list[TimedText], costs: list[int], limit: int) -> list[TimedText]:
    """``parts`` whose line costs more than ``limit`` tokens cut to fit it. Blocking."""
    shortened = []
    for part, cost in zip(parts, costs, strict=True):
        if cost > limit:
            ids = engine.tokenizer.encode(part.text, add_special_tokens=False)
            part = TimedText(part.start, part.end, engine.tokenizer.decode(ids[: max(1, limit - 16)]) + " …")
        shortened.append(part)
    return shortened


def line_costs(engine: Engine, parts: list[TimedText]) -> list[int]:
    """Tokens of each part's timeline line, its newline included. Blocking."""
    return [count_tokens(engine, timeline([part])) + 1 for part in parts]
