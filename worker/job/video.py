"""One video of a job, captioned whole ("single") or in chunks ("chunked"), each chunk its own engine
request: all of them in flight together so vLLM batches them, decoding the next chunk while the engine
works on the previous ones. Decodes enter the decoders in arrival order (worker/media/admission.py has the
rule), and the job's CPU by stage is accounted on the way (worker/media/cpu.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from worker.api.schema import MediaSource
from worker.api.result import CaptionResult, CombineInfo, Segment, Timings
from worker.engine import Engine
from worker.job.context import JobContext, since, workspace
from worker.job.generate import generate, parse_structured
from worker.job.prompt import conversation, model_limits, video_sampling
from worker.job.result import ChunkCaption, metadata, segment, video_info
from worker.job.summary import combine
from worker.media import cpu
from worker.media.admission import Ticket
from worker.media.frame_plan import ChunkPlan
from worker.media.hls_stream import fetch_video
from worker.media.video import ChunkMedia, decode, plan_video


async def caption_video(
    job: JobContext, engine: Engine, source: MediaSource, item: int | None, started: float
) -> CaptionResult:
    """``source``'s caption (and segments, chunked); ``item``: its place in a batch, None alone."""
    with cpu.opened() as spent:  # what this video's stages cost, wherever they ran
        return await _caption_video(job, engine, source, item, started, spent)


async def _caption_video(
    job: JobContext, engine: Engine, source: MediaSource, item: int | None, started: float, spent: cpu.Ledger
) -> CaptionResult:
    request = job.request
    settings = job.settings
    tasks: list[asyncio.Task[ChunkCaption]] = []
    decode_seconds = 0.0
    first_submit = 0.0
    notes: list[str] = []
    ticket: Ticket | None = None
    turn = job.decoder.admission.number()  # its place among the decodes: its arrival, not its download's end
    slot = False  # an engine slot taken and not yet handed to a request's task
    try:
        t0 = time.perf_counter()
        async with workspace(settings) as folder:
            # An HLS stream is read up to max_seconds first, at the variant nearest the frames' size.
            path, fetched = await fetch_video(
                source, folder, settings, max_seconds=request.max_seconds, want_pixels=engine.pixels.video.max_pixels
            )
            notes += fetched
            t1 = time.perf_counter()
            # The first chunk's engine slot, then the decoders' admission, held from the probe through the
            # first decode: so the first jobs in reach the engine first. Never the other way round: a job
            # holding an admission must not wait for a slot (worker/media/admission.py).
            await job.slots.acquire()
            slot = True
            ticket = await job.decoder.admit(turn)
            plan = await plan_video(
                job.decoder,
                path,
                video_sampling(request),
                model_limits(request, engine, settings),
                max_source_pixels=settings.max_source_pixels,
                max_video_seconds=settings.max_video_seconds,
            )
            decode_seconds += time.perf_counter() - t1
            info = plan.probe
            # Mode "auto" chunks only a video too long for one request at min_fps; the plan says which.
            chunked = plan.chunk_seconds is not None
            job.tally.chunks_planned += len(plan.chunks)
            for chunk in plan.chunks:
                # Taken before decoding: frames wait in memory only for a free engine slot.
                if not slot:
                    await job.slots.acquire()
                    slot = True
                try:
                    if ticket is None:  # a later chunk queues again, behind the jobs that asked meanwhile
                        ticket = await job.decoder.admit()
                    with ticket:
                        decoded = await decode(job.decoder, plan, chunk)
                    ticket = None
                    decode_seconds += decoded.decode_seconds
                    if decoded.audio is not None and engine.adapter.audio_tokens(len(decoded.audio.samples)) == 0:
                        notes.append("process_audio: the sound over the sampled span is too short to be heard")
                        decoded = dataclasses.replace(decoded, audio=None)
                    prompt = engine.adapter.build_prompt(
                        engine.tokenizer,
                        conversation(request, chunk, chunked, engine.adapter),
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
                    call = _caption_chunk(job, inputs, chunk, decoded, len(plan.chunks), item, chunked)
                    task = asyncio.create_task(call)
                except BaseException:
                    job.slots.release()
                    slot = False
                    raise
                # Released however the request ends, even when cancelled before it started.
                task.add_done_callback(lambda _: job.slots.release())
                slot = False
                tasks.append(task)
                del decoded, inputs  # the task holds them until its request is done, no longer
        captions = await asyncio.gather(*tasks)
    finally:
        if ticket is not None:
            ticket.release()  # planning failed or was cancelled before the first decode
        if slot:
            job.slots.release()  # taken for a chunk that never reached the engine
        for task in tasks:
            task.cancel()  # no-op for finished ones; a failure or cancellation stops the rest
    warnings = plan.warnings + notes
    combined: CombineInfo | None = None
    segments: list[Segment] | None = None
    if not chunked:
        generation = captions[0].generation
        text, finish_reason, generations = generation.text, generation.finish_reason, [generation]
        if generation.finish_reason == "length":
            warnings.append(f"caption cut at max_tokens={request.max_tokens}")
        structured = parse_structured(request, generation, warnings, "the caption")
    else:
        segments = [segment(c, request, warnings) for c in captions]
        cut = [s.index for s in segments if s.finish_reason == "length"]
        if cut:
            warnings.append(f"segment captions {cut} cut at max_tokens={request.max_tokens}")
        text, structured, combined, extra = await combine(job, engine, segments, warnings)
        finish_reason = combined.finish_reason
        generations = [c.generation for c in captions] + extra
    inference = since(first_submit)
    timestamps = [t for c in captions for t in c.timestamps]
    return CaptionResult(
        caption=text,
        structured=structured,
        segments=segments,
        num_chunks=len(captions) if chunked else None,
        metadata=metadata(
            engine,
            media_type="video",
            mode="chunked" if chunked else "single",
            chunk_seconds=plan.chunk_seconds,
            combine=combined,
            num_frames=len(timestamps),
            fps_used=round(len(timestamps) / info.duration if chunked else captions[0].plan.fps_used, 6),
            frame_timestamps=timestamps,
            frame_size=captions[0].frame_size,
            video=video_info(info),
            audio=[c.audio_samples for c in captions if c.audio_samples is not None],
            generations=generations,
            finish_reason=finish_reason,
            started=started,
            timings=Timings(
                fetch=round(t1 - t0, 4), decode=round(decode_seconds, 4), inference=inference, cpu=spent.rounded()
            ),
            warnings=list(dict.fromkeys(warnings)),
        ),
    )


async def _caption_chunk(
    job: JobContext,
    inputs: dict[str, Any],
    chunk: ChunkPlan,
    decoded: ChunkMedia,
    num_chunks: int,
    item: int | None,
    chunked: bool,
) -> ChunkCaption:
    """One chunk's engine request, then its segment streamed (chunked mode) and the progress reported."""
    started = time.perf_counter()
    generation = await generate(job, inputs, job.request.json_schema)
    frames = decoded.frames.frames
    caption = ChunkCaption(
        chunk,
        decoded.frames.timestamps,
        (int(frames.shape[2]), int(frames.shape[1])),
        len(decoded.audio.samples) if decoded.audio is not None else None,
        generation,
        since(started),
    )
    job.tally.chunks_done += 1
    if job.emit is not None and chunked:
        part: dict[str, Any] = {
            "segment": segment(caption, job.request, []).model_dump(
                mode="json", exclude=None if job.request.json_schema is not None else {"structured"}
            ),
            "num_chunks": num_chunks,
        }
        if item is not None:
            part["item"] = item
        job.emit(part)
    job.report()
    return caption
