"""One job, start to finish: validated request -> local media -> decoded frames/audio -> engine -> result.

A job brings one medium or several (``videos``/``images``); a video is captioned whole (``mode``
"single") or in chunks of ``chunk_seconds`` ("chunked"), each chunk its own engine request, and the
segment captions are combined by a text-only summary request or joined. All engine requests of a job are
in flight together so vLLM batches them; decoding the next chunk overlaps the inference of the previous
ones. Blocking steps run off the event loop so it keeps feeding the engine meanwhile: probing and
decoding videos in decoder processes (worker/media/pool.py: in threads they contend for the GIL under
load), fetching, images and tokenizing in threads (httpx and Pillow release the GIL while they work).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from worker.models.adapters.base import ModelAdapter
from worker.job.combine import TimedText, chunk_prompt, group_within_budget, merged, summary_prompt, timeline
from worker.config import Settings
from worker.api.control_tokens import refuse_control_tokens
from worker.media.decode import (
    AUDIO_SAMPLE_RATE,
    AudioClip,
    DecodedFrames,
    ImageInfo,
    PacketIndex,
    Probe,
    decode_image,
    decode_span,
    measured_end,
    packet_index,
    probe,
    probe_image,
)
from worker.media.pool import DecodePool
from worker.engine import Engine, EngineSlot, Generation
from worker.api.errors import DecodeError, UnsupportedInputError, WorkerError
from worker.api.wire import error_payload
from worker.media.frame_plan import ChunkPlan, audio_window, fit_frame_size, plan_chunks, plan_timestamps
from worker.media.sources import fetch_media, job_workspace
from worker.api.schema import (
    BatchMetadata,
    BatchResult,
    CaptionMetadata,
    CaptionRequest,
    CaptionResult,
    ChatMessage,
    CombineInfo,
    MediaSource,
    Segment,
    Timings,
    VideoInfo,
    parse_request,
)

log = logging.getLogger(__name__)
T = TypeVar("T")  # not PEP 695 syntax: the worker also runs on Python 3.11

Progress = Callable[[dict[str, Any]], None]
# Tokens kept free in a summary request besides the template, the answer and the segment lines.
_SUMMARY_MARGIN = 16
# Text tokens a prompt may take beyond its count (the media placeholders the count leaves out).
_PROMPT_MARGIN = 16


@dataclass(frozen=True)
class PreparedImage:
    info: ImageInfo
    pixels: np.ndarray  # (H, W, 3) uint8 at the planned size


@dataclass(frozen=True)
class VideoPlan:
    """What to decode for a video: its chunks (one spanning the whole video in single mode), the stretch
    of sound for each (None: no sound), and the one frame size that fits every chunk's request."""

    chunks: list[ChunkPlan]
    windows: list[tuple[float, float] | None]
    size: tuple[int, int]
    warnings: list[str]
    index: PacketIndex  # the video's packets, read once for all chunks


@dataclass(frozen=True)
class ChunkMedia:
    frames: DecodedFrames
    audio: AudioClip | None
    decode_seconds: float


@dataclass(frozen=True)
class ChunkCaption:
    """A captioned chunk; its pixels and samples are gone (a long job keeps hundreds of these)."""

    plan: ChunkPlan
    timestamps: list[float]  # presentation times of the frames the model saw
    frame_size: tuple[int, int]  # (width, height)
    audio_samples: int | None  # 16 kHz samples the model heard; None: no sound given
    generation: Generation
    inference_seconds: float


@dataclass
class JobContext:
    """One job's request and where it reports what it finishes."""

    request: CaptionRequest
    job_id: str
    emit: Callable[[dict[str, Any]], None] | None  # streamed parts; None when the job does not stream
    progress: Progress
    # Taken by each engine request from being decoded for until it is done; bounds the frames in memory.
    slots: asyncio.Semaphore
    num_items: int = 1
    items_done: int = 0
    chunks_planned: int = 0
    chunks_done: int = 0

    def report(self) -> None:
        if self.num_items == 1 and self.chunks_planned <= 1:
            return  # one request: nothing to report on the way
        update = {
            "items_done": self.items_done,
            "num_items": self.num_items,
            "chunks_done": self.chunks_done,
            "num_chunks": self.chunks_planned,
        }
        try:
            self.progress(update)
        except Exception:
            log.exception("job %s: progress update failed; the job goes on", self.job_id)


def _no_progress(update: dict[str, Any]) -> None:
    log.debug("progress: %s", update)


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
        """The job's complete output (the last part ``run`` yields). Never raises."""
        output: dict[str, Any] = {}
        async for part in self.run(job_input, job_id):
            output = part
        return output

    async def run(
        self, job_input: Any, job_id: str | None = None, progress: Progress | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The job's output parts. With ``stream`` true, one part per finished segment
        (``{"segment": {...}, "num_chunks": n}``) and, in a batch, per finished item
        (``{"item": i, "result": {...}}``), as they complete; always, last, the complete output: a result
        or ``{"error": {...}}``. Never raises; closing the iterator cancels the job's work."""
        job_id = job_id or uuid.uuid4().hex
        started = time.perf_counter()
        try:
            request = parse_request(
                job_input,
                max_frames_limit=self.settings.max_frames_limit,
                max_batch_items=self.settings.max_batch_items,
            )
        except WorkerError as exc:
            yield self._failure(exc, job_id)
            return
        parts: asyncio.Queue[tuple[bool, dict[str, Any]]] = asyncio.Queue()
        job = JobContext(
            request,
            job_id,
            emit=(lambda part: parts.put_nowait((False, part))) if request.stream else None,
            progress=progress or _no_progress,
            slots=self._fan_out if request.is_batch or request.mode == "chunked" else asyncio.Semaphore(1),
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

    async def _output(self, job: JobContext, started: float) -> dict[str, Any]:
        try:
            engine = await self.engine.acquire()  # before any download: fail fast when there is no engine
            refuse_control_tokens(job.request, engine.tokenizer)
            schema = job.request.json_schema
            if schema is not None:
                await asyncio.to_thread(engine.check_json_schema, schema)
            if job.request.is_batch:
                return await self._batch(job, engine, started)
            result = await self._item(job, engine, job.request.source, None, started)
            return result.to_output(structured=schema is not None)
        except WorkerError as exc:
            return self._failure(exc, job.job_id)
        except Exception as exc:
            log.exception("job %s failed unexpectedly", job.job_id)
            return error_payload(exc, debug=self.settings.debug)

    def _failure(self, exc: WorkerError, job_id: str, item: int | None = None) -> dict[str, Any]:
        where = f"job {job_id}" + (f" item {item}" if item is not None else "")
        log.info("%s failed: %s: %s", where, exc.type, exc.message)
        payload = error_payload(exc, debug=self.settings.debug)
        if exc.refresh_worker:
            payload["refresh_worker"] = True
        return payload

    async def _batch(self, job: JobContext, engine: Engine, started: float) -> dict[str, Any]:
        """Every item at once, each with its own result or error, in input order."""
        sources = job.request.sources
        job.num_items = len(sources)
        structured = job.request.json_schema is not None

        refresh = False

        async def one(index: int, source: MediaSource) -> tuple[dict[str, Any], CaptionResult | None]:
            nonlocal refresh
            try:
                result = await self._item(job, engine, source, index, time.perf_counter())
                output = result.to_output(structured=structured)
            except WorkerError as exc:
                result, output = None, self._failure(exc, job.job_id, index)
                # An item whose engine could not be rebuilt asks for a new worker on behalf of the job.
                refresh |= output.pop("refresh_worker", False)
            except Exception as exc:
                # One item's bug must not take the others' results with it.
                log.exception("job %s item %d failed unexpectedly", job.job_id, index)
                result, output = None, error_payload(exc, debug=self.settings.debug)
            job.items_done += 1
            if job.emit is not None:
                job.emit({"item": index, "result": output})
            job.report()
            return output, result

        done = await _all(one(i, source) for i, source in enumerate(sources))
        results = [result for _, result in done if result is not None]
        batch = BatchResult(
            results=[output for output, _ in done],
            metadata=BatchMetadata(
                num_items=len(done),
                num_failed=len(done) - len(results),
                model=engine.model,
                prompt_tokens=sum(r.metadata.prompt_tokens for r in results),
                completion_tokens=sum(r.metadata.completion_tokens for r in results),
                processing_time=round(time.perf_counter() - started, 4),
            ),
        ).model_dump(mode="json")
        return batch | {"refresh_worker": True} if refresh else batch

    async def _item(
        self, job: JobContext, engine: Engine, source: MediaSource, item: int | None, started: float
    ) -> CaptionResult:
        if source.media_type == "image":
            return await self._image(job, engine, source, started)
        return await self._video(job, engine, source, item, started)

    async def _image(self, job: JobContext, engine: Engine, source: MediaSource, started: float) -> CaptionResult:
        request = job.request
        t0 = time.perf_counter()
        async with _workspace(self.settings) as workspace:
            media = await asyncio.to_thread(fetch_media, source, workspace, self.settings)
            t1 = time.perf_counter()
            image = await asyncio.to_thread(self._prepare_image, media.path, request, engine)
        t2 = time.perf_counter()
        prompt = engine.adapter.build_prompt(engine.tokenizer, request.conversation, "image")
        inputs = engine.adapter.image_inputs(prompt, image.pixels)
        async with job.slots:
            generation = await self._generate(engine, job, inputs, request.json_schema)
        warnings = ["process_audio: an image has no audio"] if request.process_audio else []
        structured = self._parse_structured(request, generation, warnings, "the caption")
        height, width = image.pixels.shape[:2]
        return CaptionResult(
            caption=generation.text,
            structured=structured,
            metadata=self._metadata(
                engine,
                media_type="image",
                num_frames=1,
                fps_used=0.0,
                frame_timestamps=[0.0],
                frame_size=(width, height),
                video=VideoInfo(
                    duration=0.0,
                    width=image.info.width,
                    height=image.info.height,
                    fps=None,
                    has_audio=False,
                    codec=image.info.format.lower(),
                ),
                audio=[],
                generations=[generation],
                finish_reason=generation.finish_reason,
                started=started,
                timings=Timings(fetch=round(t1 - t0, 4), decode=round(t2 - t1, 4), inference=_since(t2)),
                warnings=warnings,
            ),
        )

    async def _video(
        self, job: JobContext, engine: Engine, source: MediaSource, item: int | None, started: float
    ) -> CaptionResult:
        request = job.request
        chunked = request.mode == "chunked"
        tasks: list[asyncio.Task[ChunkCaption]] = []
        decode_seconds = 0.0
        first_submit = 0.0
        notes: list[str] = []
        try:
            t0 = time.perf_counter()
            async with _workspace(self.settings) as workspace:
                media = await asyncio.to_thread(fetch_media, source, workspace, self.settings)
                t1 = time.perf_counter()
                info, plan = await asyncio.to_thread(self._plan_video, media.path, request, engine)
                decode_seconds += time.perf_counter() - t1
                job.chunks_planned += len(plan.chunks)
                for chunk, window in zip(plan.chunks, plan.windows, strict=True):
                    # Taken before decoding: frames wait in memory only for a free engine slot.
                    await job.slots.acquire()
                    try:
                        decoded = await self._decode_chunk(media.path, info, chunk, window, plan)
                        decode_seconds += decoded.decode_seconds
                        if decoded.audio is not None and engine.adapter.audio_tokens(len(decoded.audio.samples)) == 0:
                            notes.append("process_audio: the sound over the sampled span is too short to be heard")
                            decoded = dataclasses.replace(decoded, audio=None)
                        prompt = engine.adapter.build_prompt(
                            engine.tokenizer,
                            self._chunk_conversation(request, chunk, chunked, engine.adapter),
                            "video",
                            decoded.audio is not None,
                        )
                        inputs = engine.adapter.video_inputs(
                            prompt,
                            decoded.frames,
                            info,
                            chunk.fps_used,
                            decoded.audio,
                            (chunk.start, chunk.end) if chunked else None,
                        )
                        if not tasks:
                            first_submit = time.perf_counter()
                        call = self._caption_chunk(engine, job, inputs, chunk, decoded, len(plan.chunks), item)
                        task = asyncio.create_task(call)
                    except BaseException:
                        job.slots.release()
                        raise
                    # Released however the request ends, even when cancelled before it started.
                    task.add_done_callback(lambda _: job.slots.release())
                    tasks.append(task)
                    del decoded, inputs  # the task holds them until its request is done, no longer
            captions = await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()  # no-op for finished ones; a failure or cancellation stops the rest
        warnings = plan.warnings + notes
        combine: CombineInfo | None = None
        segments: list[Segment] | None = None
        if not chunked:
            generation = captions[0].generation
            text, finish_reason, generations = generation.text, generation.finish_reason, [generation]
            if generation.finish_reason == "length":
                warnings.append(f"caption cut at max_tokens={request.max_tokens}")
            structured = self._parse_structured(request, generation, warnings, "the caption")
        else:
            segments = [self._segment(c, request, warnings) for c in captions]
            cut = [s.index for s in segments if s.finish_reason == "length"]
            if cut:
                warnings.append(f"segment captions {cut} cut at max_tokens={request.max_tokens}")
            text, structured, combine, extra = await self._combine(engine, job, segments, warnings)
            finish_reason = combine.finish_reason
            generations = [c.generation for c in captions] + extra
        inference = _since(first_submit)
        timestamps = [t for c in captions for t in c.timestamps]
        return CaptionResult(
            caption=text,
            structured=structured,
            segments=segments,
            num_chunks=len(captions) if chunked else None,
            metadata=self._metadata(
                engine,
                media_type="video",
                mode=request.mode,
                chunk_seconds=request.chunk_length if chunked else None,
                combine=combine,
                num_frames=len(timestamps),
                fps_used=round(len(timestamps) / info.duration if chunked else captions[0].plan.fps_used, 6),
                frame_timestamps=timestamps,
                frame_size=captions[0].frame_size,
                video=_video_info(info),
                audio=[c.audio_samples for c in captions if c.audio_samples is not None],
                generations=generations,
                finish_reason=finish_reason,
                started=started,
                timings=Timings(fetch=round(t1 - t0, 4), decode=round(decode_seconds, 4), inference=inference),
                warnings=list(dict.fromkeys(warnings)),
            ),
        )

    async def _caption_chunk(
        self,
        engine: Engine,
        job: JobContext,
        inputs: dict[str, Any],
        chunk: ChunkPlan,
        decoded: ChunkMedia,
        num_chunks: int,
        item: int | None,
    ) -> ChunkCaption:
        """One chunk's engine request, then its segment streamed (chunked mode) and the progress reported."""
        started = time.perf_counter()
        generation = await self._generate(engine, job, inputs, job.request.json_schema)
        frames = decoded.frames.frames
        caption = ChunkCaption(
            chunk,
            decoded.frames.timestamps,
            (int(frames.shape[2]), int(frames.shape[1])),
            len(decoded.audio.samples) if decoded.audio is not None else None,
            generation,
            _since(started),
        )
        job.chunks_done += 1
        if job.emit is not None and job.request.mode == "chunked":
            segment = self._segment(caption, job.request, [])
            exclude = None if job.request.json_schema is not None else {"structured"}
            part: dict[str, Any] = {
                "segment": segment.model_dump(mode="json", exclude=exclude),
                "num_chunks": num_chunks,
            }
            if item is not None:
                part["item"] = item
            job.emit(part)
        job.report()
        return caption

    def _chunk_conversation(
        self, request: CaptionRequest, chunk: ChunkPlan | None, chunked: bool, adapter: ModelAdapter
    ) -> list[ChatMessage]:
        """The job's turns; in chunked mode the turn that carries the media says which span it shows. A job
        without prompt or messages asks in the words of the family's default video prompt, if it has one."""
        turns = request.conversation
        if request.prompt is None and request.messages is None and adapter.default_video_prompt:
            turns = [ChatMessage(role="user", content=adapter.default_video_prompt)]
        if not chunked or chunk is None:
            return turns
        first_user = next(i for i, turn in enumerate(turns) if turn.role == "user")
        # Built, not validated: the caller's limits are on the caller's text, and the span prefix may take
        # a prompt at the length limit past it.
        stamped = ChatMessage.model_construct(
            role="user", content=chunk_prompt(turns[first_user].content, chunk.start, chunk.end)
        )
        return [*turns[:first_user], stamped, *turns[first_user + 1 :]]

    def _segment(self, caption: ChunkCaption, request: CaptionRequest, warnings: list[str]) -> Segment:
        generation = caption.generation
        label = f"segment {caption.plan.index}"
        return Segment(
            index=caption.plan.index,
            start=caption.plan.start,
            end=caption.plan.end,
            caption=generation.text,
            structured=self._parse_structured(request, generation, warnings, label),
            num_frames=len(caption.timestamps),
            frame_timestamps=caption.timestamps,
            audio_seconds=round((caption.audio_samples or 0) / AUDIO_SAMPLE_RATE, 6),
            prompt_tokens=generation.prompt_tokens,
            completion_tokens=generation.completion_tokens,
            finish_reason=generation.finish_reason,
            inference_seconds=round(caption.inference_seconds, 4),
        )

    async def _combine(
        self, engine: Engine, job: JobContext, segments: list[Segment], warnings: list[str]
    ) -> tuple[str, Any, CombineInfo, list[Generation]]:
        """The job's caption from its segments: joined as a timeline, or summarised by text-only engine
        requests (several rounds when the segment captions do not fit one request together)."""
        request = job.request
        started = time.perf_counter()
        parts = [TimedText(s.start, s.end, s.caption) for s in segments]
        if request.combine_method == "concat":
            structured = [s.structured for s in segments] if request.json_schema is not None else None
            info = CombineInfo(
                method="concat", requests=0, prompt_tokens=0, completion_tokens=0, finish_reason=None, seconds=0.0
            )
            return timeline(parts), structured, info, []
        generations: list[Generation] = []
        budget = await asyncio.to_thread(self._summary_budget, engine, request)
        while True:
            costs = await asyncio.to_thread(_line_costs, engine, parts)
            if sum(costs) <= budget:
                break
            # Several rounds: each group of consecutive segments is summarised into one timed text, until
            # all of them fit one request. Lines are shortened to half the budget so every round merges.
            parts = await asyncio.to_thread(self._shorten, engine, parts, costs, budget // 2)
            costs = [min(cost, budget // 2) for cost in costs]
            groups = group_within_budget(costs, budget)
            log.info("job %s: summarising %d segments in %d groups first", job.job_id, len(parts), len(groups))
            round_generations = await _all(
                self._summarise(engine, job, [parts[i] for i in group], None) for group in groups
            )
            generations += round_generations
            parts = [merged([parts[i] for i in group], g.text) for group, g in zip(groups, round_generations)]
        final = await self._summarise(engine, job, parts, request.json_schema)
        generations.append(final)
        if final.finish_reason == "length":
            warnings.append(f"summary cut at max_tokens={request.max_tokens}")
        structured = self._parse_structured(request, final, warnings, "the summary")
        info = CombineInfo(
            method="summary",
            requests=len(generations),
            prompt_tokens=sum(g.prompt_tokens for g in generations),
            completion_tokens=sum(g.completion_tokens for g in generations),
            finish_reason=final.finish_reason,
            seconds=_since(started),
        )
        return final.text, structured, info, generations

    async def _summarise(
        self, engine: Engine, job: JobContext, parts: list[TimedText], json_schema: dict[str, Any] | None
    ) -> Generation:
        text = summary_prompt(job.request.text, parts)
        prompt = engine.adapter.build_prompt(engine.tokenizer, text, None)
        async with job.slots:
            return await self._generate(engine, job, {"prompt": prompt}, json_schema)

    @staticmethod
    def _summary_budget(engine: Engine, request: CaptionRequest) -> int:
        """Tokens the segment lines may take in one summary request, next to its words and the answer."""
        empty = summary_prompt(request.text, [TimedText(0.0, 0.0, "")])
        words = _count_tokens(engine, engine.adapter.build_prompt(engine.tokenizer, empty, None))
        return max(2, engine.max_model_len - request.max_tokens - words - _SUMMARY_MARGIN)

    @staticmethod
    def _shorten(engine: Engine, parts: list[TimedText], costs: list[int], limit: int) -> list[TimedText]:
        shortened = []
        for part, cost in zip(parts, costs, strict=True):
            if cost > limit:
                ids = engine.tokenizer.encode(part.text, add_special_tokens=False)
                part = TimedText(part.start, part.end, engine.tokenizer.decode(ids[: max(1, limit - 16)]) + " …")
            shortened.append(part)
        return shortened

    async def _generate(
        self, engine: Engine, job: JobContext, inputs: dict[str, Any], json_schema: dict[str, Any] | None
    ) -> Generation:
        # The engine may have died and been rebuilt since the job began; a request not yet in it waits for
        # the new one rather than failing with the old. The adapter and limits are the same.
        live = await self.engine.acquire()
        # vLLM request ids must be unique among requests in flight; a retried RunPod job keeps its id.
        request_id = f"{job.job_id}-{uuid.uuid4().hex[:8]}"
        if json_schema is None:
            return await live.generate(inputs, _sampling(job.request), request_id)
        return await live.generate(inputs, _sampling(job.request), request_id, json_schema)

    def _parse_structured(self, request: CaptionRequest, generation: Generation, warnings: list[str], what: str) -> Any:
        if request.json_schema is None:
            return None
        try:
            return json.loads(generation.text)
        except json.JSONDecodeError:
            reason = "cut at max_tokens" if generation.finish_reason == "length" else "not valid JSON"
            warnings.append(f"json_schema: {what} is {reason}; structured is null")
            return None

    def _metadata(
        self,
        engine: Engine,
        *,
        audio: list[int],
        generations: list[Generation],
        started: float,
        **fields: Any,
    ) -> CaptionMetadata:
        """``audio``: the samples given with each request that had sound."""
        return CaptionMetadata(
            audio_processed=bool(audio),
            audio_seconds=round(sum(audio) / AUDIO_SAMPLE_RATE, 6),
            audio_tokens=sum(engine.adapter.audio_tokens(samples) for samples in audio),
            processing_time=_since(started),
            model=engine.model,
            prompt_tokens=sum(g.prompt_tokens for g in generations),
            completion_tokens=sum(g.completion_tokens for g in generations),
            sampling=generations[0].sampling,
            **fields,
        )

    def _text_reserve(self, request: CaptionRequest, engine: Engine, chunk: ChunkPlan | None) -> int:
        """Context for the prompt's words: TEXT_TOKEN_RESERVE, or more for a long conversation."""
        turns = self._chunk_conversation(request, chunk, chunk is not None, engine.adapter)
        words = _count_tokens(engine, engine.adapter.build_prompt(engine.tokenizer, turns, None))
        return max(self.settings.text_token_reserve, words + _PROMPT_MARGIN)

    def _plan_video(self, path: Path, request: CaptionRequest, engine: Engine) -> tuple[Probe, VideoPlan]:
        """Blocking: probe, check the duration, plan the chunks, their sound and the frame size."""
        info = self.decoder.call(probe, path, max_pixels=self.settings.max_source_pixels)
        warnings: list[str] = []
        cap = self.settings.max_video_seconds
        if info.duration > cap:
            # Headers can claim anything (a damaged or hostile file says 285,000 years): the packets decide.
            end = self.decoder.call(measured_end, path, info, max_pixels=self.settings.max_source_pixels)
            if end > cap:
                raise UnsupportedInputError(
                    f"the video is {end:.0f} s long, above MAX_VIDEO_SECONDS={cap:g} of this deployment"
                )
            if end <= 0:
                raise DecodeError("the video stream has no timed packets")
            warnings.append(f"the file declares {info.duration:.0f} s but its frames end at {end:.1f} s; used that")
            info = dataclasses.replace(info, duration=end)
        adapter = engine.adapter
        chunked = request.mode == "chunked"
        if chunked:
            chunks = plan_chunks(
                info.duration,
                info.fps,
                request.fps,
                request.max_frames,
                request.chunk_length,
                frame_multiple=adapter.frame_multiple,
            )
        else:
            whole = plan_timestamps(
                info.duration, info.fps, request.fps, request.max_frames, frame_multiple=adapter.frame_multiple
            )
            chunks = [ChunkPlan(0, 0.0, info.duration, whole.timestamps, whole.fps_used)]
        windows = [self._audio_window(request, engine, info, c, warnings) for c in chunks]
        # One frame size for every chunk, planned for the costliest: the most frames and the longest sound.
        most_frames = max(len(c.timestamps) for c in chunks)
        longest = max(((w[1] - w[0]) for w in windows if w), default=0.0)
        audio_tokens = adapter.audio_tokens(round(longest * AUDIO_SAMPLE_RATE))
        groups = -(-most_frames // adapter.geometry.temporal_patch_size)
        reserve = self._text_reserve(request, engine, chunks[-1] if chunked else None)
        budget = (
            engine.max_model_len - reserve - request.max_tokens - audio_tokens - groups * adapter.text_tokens_per_group
        )
        try:
            size = fit_frame_size(
                info.height,
                info.width,
                most_frames,
                max_visual_tokens=budget,
                min_pixels=engine.pixels.video.min_pixels,
                max_pixels=engine.pixels.video.max_pixels,
                geometry=adapter.geometry,
            )
        except UnsupportedInputError as exc:
            if not audio_tokens:
                raise
            raise UnsupportedInputError(
                f"{exc.message} (the {longest:.1f} s of audio take {audio_tokens} tokens; "
                "process_audio false frees them)"
            ) from exc
        index = self.decoder.call(packet_index, path, info, max_pixels=self.settings.max_source_pixels)
        return info, VideoPlan(chunks, windows, size, list(dict.fromkeys(warnings)), index)

    async def _decode_chunk(
        self, path: Path, info: Probe, chunk: ChunkPlan, window: tuple[float, float] | None, plan: VideoPlan
    ) -> ChunkMedia:
        """One chunk's frames (seeking to it) and its sound."""
        started = time.perf_counter()
        frames, audio = await self.decoder.run(
            decode_span,
            path,
            info,
            chunk.timestamps,
            plan.size,
            window or None,
            max_pixels=self.settings.max_source_pixels,
            index=plan.index,
        )
        return ChunkMedia(frames, audio, time.perf_counter() - started)

    def _audio_window(
        self,
        request: CaptionRequest,
        engine: Engine,
        info: Probe,
        chunk: ChunkPlan,
        warnings: list[str],
    ) -> tuple[float, float] | None:
        """The stretch of sound to give the model, or None (with a warning saying why not)."""
        if not request.process_audio:
            return None
        adapter = engine.adapter
        if not adapter.supports_audio:
            warnings.append(
                f"process_audio: model {engine.model} ({adapter.family}) takes no audio input; only the frames "
                "were used"
            )
            return None
        if not info.has_audio:
            warnings.append("process_audio: the video has no audio track; only the frames were used")
            return None
        if adapter.audio_covers_span:
            start, end = chunk.start, min(chunk.end, info.duration)
        else:
            start, end = audio_window(chunk.timestamps, chunk.fps_used, info.duration)
        if end - start > adapter.max_audio_seconds:
            warnings.append(
                f"process_audio: the model takes at most {adapter.max_audio_seconds:g} s of audio; the sound "
                f"after {start + adapter.max_audio_seconds:.1f} s was not used"
            )
            end = start + adapter.max_audio_seconds
        return start, end

    def _prepare_image(self, path: Path, request: CaptionRequest, engine: Engine) -> PreparedImage:
        """Blocking."""
        info = probe_image(path)
        size = fit_frame_size(
            info.height,
            info.width,
            1,
            max_visual_tokens=engine.max_model_len - self._text_reserve(request, engine, None) - request.max_tokens,
            min_pixels=engine.pixels.image.min_pixels,
            max_pixels=engine.pixels.image.max_pixels,
            geometry=engine.adapter.geometry,
        )
        return PreparedImage(info, decode_image(path, size))


@contextlib.asynccontextmanager
async def _workspace(settings: Settings) -> AsyncIterator[Path]:
    """``job_workspace`` entered and left off the event loop (removing a large download takes a while)."""
    manager: contextlib.AbstractContextManager[Path] = job_workspace(settings)
    path = await asyncio.to_thread(manager.__enter__)
    try:
        yield path
    finally:
        await asyncio.to_thread(manager.__exit__, None, None, None)


async def _all(calls: Iterator[Awaitable[T]]) -> list[T]:
    """Run ``calls`` together; when one fails or the caller is cancelled, the others are cancelled."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()


def _line_costs(engine: Engine, parts: list[TimedText]) -> list[int]:
    """Tokens of each part's timeline line, its newline included."""
    return [_count_tokens(engine, timeline([part])) + 1 for part in parts]


def _count_tokens(engine: Engine, text: str) -> int:
    """Tokens of ``text`` as the model reads it (no special tokens added). Blocking for long texts."""
    return len(engine.tokenizer.encode(text, add_special_tokens=False))


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 4)


def _video_info(p: Probe) -> VideoInfo:
    return VideoInfo(
        duration=round(p.duration, 6),
        width=p.width,
        height=p.height,
        fps=round(p.fps, 6) if p.fps else None,
        has_audio=p.has_audio,
        rotation=p.rotation,
        codec=p.codec,
        audio_seconds=round(p.audio_seconds, 6),
    )


def _sampling(request: CaptionRequest) -> dict[str, Any]:
    params: dict[str, Any] = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_tokens": request.max_tokens,
        "stop": request.stop_list,
    }
    optional = {"top_k": request.top_k, "repetition_penalty": request.repetition_penalty, "seed": request.seed}
    params.update({k: v for k, v in optional.items() if v is not None})
    return params
