"""A follow-up question about a video already captioned: answered from an earlier job's timestamped captions
(its ``segments``, given back as ``context``) by text-only requests, without fetching or decoding the video."""

from __future__ import annotations

from worker.api.result import AnswerMetadata, AnswerResult
from worker.engine import Engine
from worker.job.combine import TimedText
from worker.job.context import JobContext, since
from worker.job.generate import parse_structured
from worker.job.summary import answer


async def answer_from_context(job: JobContext, engine: Engine, started: float) -> AnswerResult:
    """The job's prompt answered from its context (CaptionRequest.context_segments)."""
    request = job.request
    segments = request.context_segments
    parts = [TimedText(s.start, s.end, s.caption) for s in segments]
    generations = await answer(job, engine, parts)  # each request takes one of the job's engine slots
    final = generations[-1]
    warnings: list[str] = []
    if final.finish_reason == "length":
        warnings.append(f"answer cut at max_tokens={request.max_tokens}")
    structured = parse_structured(request, final, warnings, "the answer")
    return AnswerResult(
        caption=final.text,
        structured=structured,
        metadata=AnswerMetadata(
            context_segments=len(segments),
            context_span=(min(s.start for s in segments), max(s.end for s in segments)),
            requests=len(generations),
            model=engine.model,
            prompt_tokens=sum(g.prompt_tokens for g in generations),
            completion_tokens=sum(g.completion_tokens for g in generations),
            finish_reason=final.finish_reason,
            sampling=final.sampling,
            processing_time=since(started),
            warnings=warnings,
        ),
    )
