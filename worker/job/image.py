"""One image of a job: fetched, read at the size that fits the model's request, captioned in one request."""

from __future__ import annotations

import time

from worker.api.schema import MediaSource
from worker.api.result import CaptionResult, Timings, VideoInfo
from worker.engine import Engine
from worker.job.context import JobContext, since, workspace
from worker.job.generate import generate, parse_structured
from worker.job.prompt import model_limits
from worker.job.result import metadata
from worker.media.image import prepare_image
from worker.media.sources import fetch


async def caption_image(job: JobContext, engine: Engine, source: MediaSource, started: float) -> CaptionResult:
    request = job.request
    t0 = time.perf_counter()
    async with workspace(job.settings) as folder:
        media = await fetch(source, folder, job.settings)
        t1 = time.perf_counter()
        image = await prepare_image(media.path, model_limits(request, engine, job.settings))
    t2 = time.perf_counter()
    prompt = engine.adapter.build_prompt(engine.tokenizer, request.conversation, "image")
    inputs = engine.adapter.image_inputs(prompt, image.pixels)
    async with job.slots:
        generation = await generate(job, inputs, request.json_schema)
    warnings = ["process_audio: an image has no audio"] if request.process_audio else []
    structured = parse_structured(request, generation, warnings, "the caption")
    height, width = image.pixels.shape[:2]
    return CaptionResult(
        caption=generation.text,
        structured=structured,
        metadata=metadata(
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
            timings=Timings(fetch=round(t1 - t0, 4), decode=round(t2 - t1, 4), inference=since(t2)),
            warnings=warnings,
        ),
    )
