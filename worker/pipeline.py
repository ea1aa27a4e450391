"""One job, start to finish: validated request -> local media -> decoded frames/audio -> engine -> result.

Blocking steps (fetch, decode) run in worker threads so the event loop keeps feeding the engine with
other jobs meanwhile; PyAV and httpx release the GIL while they work.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.config import Settings
from worker.decode import AUDIO_SAMPLE_RATE, DecodedFrames, Probe, decode_audio, decode_frames, probe
from worker.engine import Engine, EngineSlot
from worker.errors import WorkerError, error_payload
from worker.frame_plan import fit_frame_size, plan_timestamps
from worker.media import fetch_media, job_workspace
from worker.schema import CaptionMetadata, CaptionRequest, CaptionResult, Timings, VideoInfo, parse_request

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodedVideo:
    probe: Probe
    frames: DecodedFrames
    fps_used: float
    audio: np.ndarray | None
    fetch_seconds: float
    decode_seconds: float


class CaptionService:
    def __init__(self, settings: Settings, engine: EngineSlot) -> None:
        self.settings = settings
        self.engine = engine

    async def handle(self, job_input: Any, job_id: str | None = None) -> dict[str, Any]:
        """The job's output: a CaptionResult as a dict, or ``{"error": {...}}``. Never raises."""
        try:
            result = await self.caption(job_input, job_id or uuid.uuid4().hex)
            return result.model_dump(mode="json")
        except Exception as exc:
            if isinstance(exc, WorkerError):
                log.info("job %s failed: %s: %s", job_id, exc.type, exc.message)
            else:
                log.exception("job %s failed unexpectedly", job_id)
            return error_payload(exc, debug=self.settings.debug)

    async def caption(self, job_input: Any, job_id: str) -> CaptionResult:
        started = time.perf_counter()
        request = parse_request(job_input, max_frames_limit=self.settings.max_frames_limit)
        engine = self.engine.get()  # fail fast, before any download, when there is no engine
        video = await asyncio.to_thread(self._fetch_and_decode, request, engine)
        warnings: list[str] = []
        if request.process_audio and not engine.adapter.supports_audio:
            warnings.append(
                f"process_audio: model {engine.model} ({engine.adapter.family}) takes no audio input; the audio "
                "track was decoded but not given to the model"
            )
        prompt = engine.adapter.build_prompt(engine.tokenizer, request.prompt)
        audio_for_model = video.audio if engine.adapter.supports_audio else None
        inputs = engine.adapter.build_inputs(prompt, video.frames, video.probe, audio_for_model)
        inference_started = time.perf_counter()
        # vLLM request ids must be unique among requests in flight; a retried RunPod job keeps its id.
        generation = await engine.generate(inputs, _sampling(request), f"{job_id}-{uuid.uuid4().hex[:8]}")
        inference_seconds = time.perf_counter() - inference_started

        if generation.finish_reason == "length":
            warnings.append(f"caption cut at max_tokens={request.max_tokens}")
        p = video.probe
        audio_seconds = len(video.audio) / AUDIO_SAMPLE_RATE if video.audio is not None else p.audio_seconds
        frames = video.frames.frames
        return CaptionResult(
            caption=generation.text,
            metadata=CaptionMetadata(
                num_frames=int(frames.shape[0]),
                fps_used=round(video.fps_used, 6),
                audio_processed=audio_for_model is not None,
                processing_time=round(time.perf_counter() - started, 4),
                frame_timestamps=video.frames.timestamps,
                frame_size=(int(frames.shape[2]), int(frames.shape[1])),
                video=VideoInfo(
                    duration=round(p.duration, 6),
                    width=p.width,
                    height=p.height,
                    fps=round(p.fps, 6) if p.fps else None,
                    has_audio=p.has_audio,
                    rotation=p.rotation,
                    codec=p.codec,
                    audio_seconds=round(audio_seconds, 6),
                ),
                model=engine.model,
                prompt_tokens=generation.prompt_tokens,
                completion_tokens=generation.completion_tokens,
                finish_reason=generation.finish_reason,
                sampling=generation.sampling,
                timings=Timings(
                    fetch=round(video.fetch_seconds, 4),
                    decode=round(video.decode_seconds, 4),
                    inference=round(inference_seconds, 4),
                ),
                warnings=warnings,
            ),
        )

    def _fetch_and_decode(self, request: CaptionRequest, engine: Engine) -> DecodedVideo:
        """Blocking; runs in a worker thread. The job's scratch directory never outlives this call."""
        with job_workspace(self.settings) as workspace:
            t0 = time.perf_counter()
            media = fetch_media(request.source, workspace, self.settings)
            t1 = time.perf_counter()
            info = probe(media.path)
            adapter = engine.adapter
            plan = plan_timestamps(
                info.duration, info.fps, request.fps, request.max_frames, frame_multiple=adapter.frame_multiple
            )
            max_visual_tokens = engine.max_model_len - self.settings.text_token_reserve - request.max_tokens
            size = fit_frame_size(
                info.height,
                info.width,
                len(plan.timestamps),
                max_visual_tokens=max_visual_tokens,
                min_pixels=engine.pixels.min_pixels,
                max_pixels=engine.pixels.max_pixels,
                geometry=adapter.geometry,
            )
            frames = decode_frames(media.path, info, plan.timestamps, size)
            audio = decode_audio(media.path) if request.process_audio and info.has_audio else None
            t2 = time.perf_counter()
        return DecodedVideo(info, frames, plan.fps_used, audio, t1 - t0, t2 - t1)


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
