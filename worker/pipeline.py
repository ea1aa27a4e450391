"""One job, start to finish: validated request -> local media -> decoded frames/audio -> engine -> result.

Blocking steps (fetch, decode) run in worker threads so the event loop keeps feeding the engine with
other jobs meanwhile; PyAV, Pillow and httpx release the GIL while they work.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker.config import Settings
from worker.decode import (
    AUDIO_SAMPLE_RATE,
    AudioClip,
    DecodedFrames,
    ImageInfo,
    Probe,
    decode_audio,
    decode_frames,
    decode_image,
    probe,
    probe_image,
)
from worker.engine import Engine, EngineSlot
from worker.errors import UnsupportedInputError, WorkerError, error_payload
from worker.frame_plan import audio_window, fit_frame_size, plan_timestamps
from worker.media import fetch_media, job_workspace
from worker.schema import CaptionMetadata, CaptionRequest, CaptionResult, Timings, VideoInfo, parse_request

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedVideo:
    probe: Probe
    frames: DecodedFrames
    fps_used: float
    audio: AudioClip | None  # only when the model takes audio and the job asked for it


@dataclass(frozen=True)
class PreparedImage:
    info: ImageInfo
    pixels: np.ndarray  # (H, W, 3) uint8 at the planned size


@dataclass
class Prepared:
    media: PreparedVideo | PreparedImage
    fetch_seconds: float = 0.0
    decode_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


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
            payload = error_payload(exc, debug=self.settings.debug)
            if isinstance(exc, WorkerError) and exc.refresh_worker:
                payload["refresh_worker"] = True
            return payload

    async def caption(self, job_input: Any, job_id: str) -> CaptionResult:
        started = time.perf_counter()
        request = parse_request(job_input, max_frames_limit=self.settings.max_frames_limit)
        engine = await self.engine.acquire()  # before any download: fail fast when there is no engine
        prepared = await asyncio.to_thread(self._fetch_and_decode, request, engine)
        # The engine may have died and been rebuilt meanwhile; this job never reached the old one, so it
        # waits for the new one rather than failing with it. The adapter and limits are the same.
        engine = await self.engine.acquire()
        adapter = engine.adapter
        media = prepared.media
        audio = media.audio if isinstance(media, PreparedVideo) else None
        if audio is not None and adapter.audio_tokens(len(audio.samples)) == 0:
            prepared.warnings.append("process_audio: the sound over the sampled span is too short to be heard")
            audio = None
        prompt = adapter.build_prompt(engine.tokenizer, request.text, request.media_type, audio is not None)
        if isinstance(media, PreparedVideo):
            inputs = adapter.video_inputs(prompt, media.frames, media.probe, media.fps_used, audio)
        else:
            inputs = adapter.image_inputs(prompt, media.pixels)
        inference_started = time.perf_counter()
        # vLLM request ids must be unique among requests in flight; a retried RunPod job keeps its id.
        generation = await engine.generate(inputs, _sampling(request), f"{job_id}-{uuid.uuid4().hex[:8]}")
        inference_seconds = time.perf_counter() - inference_started

        warnings = prepared.warnings
        if generation.finish_reason == "length":
            warnings.append(f"caption cut at max_tokens={request.max_tokens}")
        return CaptionResult(
            caption=generation.text,
            metadata=CaptionMetadata(
                media_type=request.media_type,
                **_visual_metadata(media),
                audio_processed=audio is not None,
                audio_seconds=round(audio.seconds, 6) if audio is not None else 0.0,
                audio_tokens=adapter.audio_tokens(len(audio.samples)) if audio is not None else 0,
                processing_time=round(time.perf_counter() - started, 4),
                model=engine.model,
                prompt_tokens=generation.prompt_tokens,
                completion_tokens=generation.completion_tokens,
                finish_reason=generation.finish_reason,
                sampling=generation.sampling,
                timings=Timings(
                    fetch=round(prepared.fetch_seconds, 4),
                    decode=round(prepared.decode_seconds, 4),
                    inference=round(inference_seconds, 4),
                ),
                warnings=warnings,
            ),
        )

    def _fetch_and_decode(self, request: CaptionRequest, engine: Engine) -> Prepared:
        """Blocking; runs in a worker thread. The job's scratch directory never outlives this call."""
        with job_workspace(self.settings) as workspace:
            t0 = time.perf_counter()
            media = fetch_media(request.source, workspace, self.settings)
            t1 = time.perf_counter()
            prepared = (
                self._prepare_image(media.path, request, engine)
                if request.media_type == "image"
                else self._prepare_video(media.path, request, engine)
            )
            prepared.fetch_seconds, prepared.decode_seconds = t1 - t0, time.perf_counter() - t1
        return prepared

    def _text_budget(self, request: CaptionRequest, engine: Engine) -> int:
        """Prompt tokens left for the media once the text and the answer have their room."""
        return engine.max_model_len - self.settings.text_token_reserve - request.max_tokens

    def _prepare_video(self, path: Path, request: CaptionRequest, engine: Engine) -> Prepared:
        adapter = engine.adapter
        info = probe(path, max_pixels=self.settings.max_source_pixels)
        plan = plan_timestamps(
            info.duration, info.fps, request.fps, request.max_frames, frame_multiple=adapter.frame_multiple
        )
        warnings: list[str] = []
        window = self._audio_window(request, engine, info, plan.timestamps, plan.fps_used, warnings)
        audio_tokens = adapter.audio_tokens(round((window[1] - window[0]) * AUDIO_SAMPLE_RATE)) if window else 0
        groups = -(-len(plan.timestamps) // adapter.geometry.temporal_patch_size)
        budget = self._text_budget(request, engine) - audio_tokens - groups * adapter.text_tokens_per_group
        try:
            size = fit_frame_size(
                info.height,
                info.width,
                len(plan.timestamps),
                max_visual_tokens=budget,
                min_pixels=engine.pixels.video.min_pixels,
                max_pixels=engine.pixels.video.max_pixels,
                geometry=adapter.geometry,
            )
        except UnsupportedInputError as exc:
            if not audio_tokens:
                raise
            raise UnsupportedInputError(
                f"{exc.message} (the {window[1] - window[0]:.1f} s of audio take {audio_tokens} tokens; "
                "process_audio false frees them)"
            ) from exc
        frames = decode_frames(path, info, plan.timestamps, size, max_pixels=self.settings.max_source_pixels)
        audio = None
        if window:
            audio = decode_audio(
                path,
                start=window[0],
                end=window[1],
                video_start=info.start_time,
                max_pixels=self.settings.max_source_pixels,
            )
        return Prepared(PreparedVideo(info, frames, plan.fps_used, audio), warnings=warnings)

    def _audio_window(
        self,
        request: CaptionRequest,
        engine: Engine,
        info: Probe,
        timestamps: list[float],
        fps_used: float,
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
        start, end = audio_window(timestamps, fps_used, info.duration)
        if end - start > adapter.max_audio_seconds:
            warnings.append(
                f"process_audio: the model takes at most {adapter.max_audio_seconds:g} s of audio; the sound "
                f"after {start + adapter.max_audio_seconds:.1f} s was not used"
            )
            end = start + adapter.max_audio_seconds
        return start, end

    def _prepare_image(self, path: Path, request: CaptionRequest, engine: Engine) -> Prepared:
        info = probe_image(path)
        size = fit_frame_size(
            info.height,
            info.width,
            1,
            max_visual_tokens=self._text_budget(request, engine),
            min_pixels=engine.pixels.image.min_pixels,
            max_pixels=engine.pixels.image.max_pixels,
            geometry=engine.adapter.geometry,
        )
        warnings = ["process_audio: an image has no audio"] if request.process_audio else []
        return Prepared(PreparedImage(info, decode_image(path, size)), warnings=warnings)


def _visual_metadata(media: PreparedVideo | PreparedImage) -> dict[str, Any]:
    """The CaptionMetadata fields that describe the frames and their source."""
    if isinstance(media, PreparedImage):
        height, width = media.pixels.shape[:2]
        return {
            "num_frames": 1,
            "fps_used": 0.0,
            "frame_timestamps": [0.0],
            "frame_size": (width, height),
            "video": VideoInfo(
                duration=0.0,
                width=media.info.width,
                height=media.info.height,
                fps=None,
                has_audio=False,
                codec=media.info.format.lower(),
            ),
        }
    p, frames = media.probe, media.frames.frames
    return {
        "num_frames": int(frames.shape[0]),
        "fps_used": round(media.fps_used, 6),
        "frame_timestamps": media.frames.timestamps,
        "frame_size": (int(frames.shape[2]), int(frames.shape[1])),
        "video": VideoInfo(
            duration=round(p.duration, 6),
            width=p.width,
            height=p.height,
            fps=round(p.fps, 6) if p.fps else None,
            has_audio=p.has_audio,
            rotation=p.rotation,
            codec=p.codec,
            audio_seconds=round(p.audio_seconds, 6),
        ),
    }


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
