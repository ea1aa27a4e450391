"""One job, start to finish: validated request -> local media -> decoded frames/audio -> engine -> result.

A job brings one medium or several (``videos``/``images``), each item captioned by worker/job/video.py or
image.py, all of them at once so vLLM batches their requests; or an earlier job's captions as ``context``,
answered by worker/job/followup.py without media. Blocking steps run off the event loop so it
keeps feeding the engine meanwhile: probing and decoding videos in decoder processes
(worker/media/pool.py: in threads they contend for the GIL under load), fetching, images and tokenizing
in threads (httpx and Pillow release the GIL while they work).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from worker.api.commentary_result import CommentaryResult
from worker.api.control_tokens import refuse_control_tokens
from worker.api.errors import WorkerError
from worker.api.schema import MediaSource, parse_request
from worker.api.result import BatchMetadata, BatchResult, CaptionResult
from worker.api.wire import JobOutput, error_payload
from worker.config import Settings
from worker.engine import Engine, EngineSlot
from worker.job.commentary import comment_video
from worker.job.context import JobContext, Progress, gather_all, no_progress
from worker.job.followup import answer_from_context
from worker.job.image import caption_image
from worker.job.video import caption_video
from worker.media.pool import DecodePool

log = logging.getLogger(__name__)


class CaptionService:
    def __init__(self, settings: Settings, engine: EngineSlot, decoder: DecodePool | None = None) -> None:
        self.settings = settings
        self.engine = engine
        # Probing and decoding: decoder processes (the worker's, DECODE_WORKERS), else threads of this one.
        self.decoder = decoder or DecodePool(0)
        # Chunks and batch items of all jobs together: at most MAX_NUM_SEQS decoded or in the engine at once
        # (vLLM runs no more at a time; more would only hold frames in memory). A plain job has one
        # request and MAX_CONCURRENCY bounds those.
        self._fan_out = asyncio.Semaphore(settings.max_num_seqs)

    async def handle(self, job_input: Any, job_id: str | None = None) -> dict[str, Any]:
        """The body of the job's complete output (the last part ``run`` yields). Never raises."""
        return (await self.complete(job_input, job_id)).body

    async def complete(
        self, job_input: Any, job_id: str | None = None, progress: Progress | None = None, *, streaming: bool = True
    ) -> JobOutput:
        """The job's complete output (the last part ``run`` yields). Never raises."""
        output = JobOutput({})
        async for part in self.run(job_input, job_id, progress, streaming=streaming):
            output = part
        return output

    async def run(
        self,
        job_input: Any,
        job_id: str | None = None,
        progress: Progress | None = None,
        *,
        streaming: bool = True,
    ) -> AsyncIterator[JobOutput]:
        """The job's output parts. With ``stream`` true, one part per finished segment
        (``{"segment": {...}, "num_chunks": n}``) and, in a batch, per finished item
        (``{"item": i, "result": {...}}``), as they complete; always, last, the complete output: a result
        or ``{"error": {...}}``, the only part that may ask for a new worker (``refresh_worker``). Never
        raises; closing the iterator cancels the job's work. ``streaming`` False: the caller cannot stream
        (ENABLE_STREAMING), so a job asking to is refused."""
        job_id = job_id or uuid.uuid4().hex
        started = time.perf_counter()
        try:
            request = parse_request(
                job_input,
                max_frames_limit=self.settings.max_frames_limit,
                max_batch_items=self.settings.max_batch_items,
                streaming=streaming,
                max_video_seconds=self.settings.max_video_seconds,
            )
        except WorkerError as exc:
            yield self._failure(exc, job_id)
            return
        parts: asyncio.Queue[tuple[bool, JobOutput]] = asyncio.Queue()
        job = JobContext(
            request,
            job_id,
            self.settings,
            self.engine,
            self.decoder,
            emit=(lambda part: parts.put_nowait((False, JobOutput(part)))) if request.stream else None,
            progress=progress or no_progress,
            slots=self._fan_out if request.is_batch or request.mode != "single" else asyncio.Semaphore(1),
        )

        async def produce() -> None:
            parts.put_nowait((True, await self._output(job, started)))

        task = asyncio.create_task(produce())
        try:
            while True:
                last, part = await parts.get()
                yield part
                if last:
                    return
        finally:
            task.cancel()  # no-op when done; otherwise the caller went away: stop decoding and abort requests

    async def _output(self, job: JobContext, started: float) -> JobOutput:
        try:
            engine = await self.engine.acquire()  # before any download: fail fast when there is no engine
            refuse_control_tokens(job.request, engine.tokenizer)
            schema = job.request.json_schema
            if schema is not None:
                await asyncio.to_thread(engine.check_json_schema, schema)
            if job.request.is_batch:
                return await self._batch(job, engine, started)
            if job.request.context is not None:
                answer = await answer_from_context(job, engine, started)
                return JobOutput(answer.to_output(structured=schema is not None))
            result = await self._item(job, engine, job.request.source, None, started)
            return JobOutput(result.to_output(structured=schema is not None))
        except WorkerError as exc:
            return self._failure(exc, job.job_id)
        except Exception as exc:
            log.exception("job %s failed unexpectedly", job.job_id)
            return JobOutput(error_payload(exc, debug=self.settings.debug))

    def _failure(self, exc: WorkerError, job_id: str, item: int | None = None) -> JobOutput:
        where = f"job {job_id}" + (f" item {item}" if item is not None else "")
        log.info("%s failed: %s: %s", where, exc.type, exc.message)
        return JobOutput(error_payload(exc, debug=self.settings.debug), refresh_worker=exc.refresh_worker)

    async def _batch(self, job: JobContext, engine: Engine, started: float) -> JobOutput:
        """Every item at once, each with its own result or error, in input order."""
        sources = job.request.sources
        job.tally.num_items = len(sources)
        structured = job.request.json_schema is not None

        async def one(index: int, source: MediaSource) -> tuple[JobOutput, CaptionResult | CommentaryResult | None]:
            try:
                item_job = job.for_item(job.request.for_item(index))  # the item's own prompt and sampling
                result = await self._item(item_job, engine, source, index, time.perf_counter())
                output = JobOutput(result.to_output(structured=structured))
            except WorkerError as exc:
                # An item whose engine could not be rebuilt asks for a new worker on behalf of the job.
                result, output = None, self._failure(exc, job.job_id, index)
            except Exception as exc:
                # One item's bug must not take the others' results with it.
                log.exception("job %s item %d failed unexpectedly", job.job_id, index)
                result, output = None, JobOutput(error_payload(exc, debug=self.settings.debug))
            job.tally.items_done += 1
            if job.emit is not None:
                job.emit({"item": index, "result": output.body})
            job.report()
            return output, result

        done = await gather_all(one(i, source) for i, source in enumerate(sources))
        results = [result for _, result in done if result is not None]
        batch = BatchResult(
            results=[output.body for output, _ in done],
            metadata=BatchMetadata(
                num_items=len(done),
                num_failed=len(done) - len(results),
                model=engine.model,
                prompt_tokens=sum(r.metadata.prompt_tokens for r in results),
                completion_tokens=sum(r.metadata.completion_tokens for r in results),
                processing_time=round(time.perf_counter() - started, 4),
            ),
        )
        return JobOutput(batch.model_dump(mode="json"), refresh_worker=any(o.refresh_worker for o, _ in done))

    async def _item(
        self, job: JobContext, engine: Engine, source: MediaSource, item: int | None, started: float
    ) -> CaptionResult | CommentaryResult:
        if source.media_type == "image":
            return await caption_image(job, engine, source, started)
        if job.request.mode == "commentary":
            return await comment_video(job, engine, source, item, started)
        return await caption_video(job, engine, source, item, started)
