"""Mode "commentary": one video commented turn by turn the LiveCC way (seed 004's ``live_cc``,
docs/commentary.md). Frames at 2 fps, a first turn of 3 s then one per second, each turn's answer part of
the conversation the next extends, as token ids (worker/job/commentary_context.py); vLLM's prefix cache
makes each turn prefill only its new clip and words. Turns stream as they are answered; the video is
decoded a block ahead of the engine. An HLS stream is commented as it plays: its segments are appended to
one file as they arrive, and each turn runs once its frames are there (worker/media/hls_stream.py). A
failure after the first turn ends the commentary there, with the turns so far and a warning, instead of
failing the job.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.api.commentary_result import CommentaryMetadata, CommentaryResult, CommentaryTurn
from worker.api.errors import DecodeError, UnsupportedInputError, WorkerError
from worker.api.result import Timings
from worker.api.schema import CaptionRequest, MediaSource
from worker.engine import Engine, Generation
from worker.job.commentary_context import Conversation, TurnPrompt
from worker.job.context import JobContext, since, workspace
from worker.job.generate import sampling_params
from worker.job.result import video_info
from worker.media.frame_plan import ChunkPlan
from worker.media.frames import DecodedFrames
from worker.media.hls_stream import VideoFeed, open_video
from worker.media.probe import PacketIndex, Probe
from worker.media.turn_plan import (
    COMMENTARY_FPS,
    FRAMES_PER_TURN,
    INITIAL_FRAMES,
    LIVECC_MAX_PIXELS,
    TurnPlan,
    clip_tokens,
    commentary_frame_size,
    plan_turns,
    real_time_factor,
)
from worker.media.video import VideoPlan, decode, probe_video, read_index

log = logging.getLogger(__name__)

DEFAULT_QUERY = "Please describe the video."  # the seed's default_query
# The seed's generate() gets no max_new_tokens: transformers' default max_length of 20 then means 20 new tokens.
DEFAULT_TURN_TOKENS = 20
REPETITION_PENALTY = 1.05
DECODE_TURNS = 8  # turns decoded per decoder call after the first (which is decoded alone: first words sooner)
SILENT = "..."  # LiveCC's streaming EOS: ' ...' alone says nothing new happened


def commentary_sampling(request: CaptionRequest) -> dict[str, Any]:
    """The seed's decoding unless the job says otherwise: greedy, repetition_penalty 1.05, 20 new tokens
    per turn. A job that sets temperature or top_p samples as any job does."""
    explicit = request.model_fields_set
    params = sampling_params(request) if explicit & {"temperature", "top_p"} else {"temperature": 0.0}
    params.update(
        stop=request.stop_list,
        max_tokens=request.max_tokens if "max_tokens" in explicit else DEFAULT_TURN_TOKENS,
        repetition_penalty=request.repetition_penalty or REPETITION_PENALTY,
    )
    params.update({k: getattr(request, k) for k in ("top_k", "seed") if getattr(request, k) is not None})
    return params


def is_silent(text: str) -> bool:
    return text.strip() in ("", SILENT)


def phrase(text: str) -> str:
    """A turn's words without LiveCC's trailing ' ...' (it marks that the stream goes on)."""
    words = text.strip()
    return words[: -len(SILENT)].rstrip() if words.endswith(SILENT) else words


@dataclass
class _Run:
    """One commentary in progress: what it has said and spent."""

    job: JobContext
    item: int | None
    probe: Probe
    size: tuple[int, int]  # (height, width)
    conversation: Conversation
    params: dict[str, Any]
    query: str
    num_turns: int
    turns: list[CommentaryTurn] = field(default_factory=list)
    generations: list[Generation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    decode_seconds: float = 0.0
    first_submit: float | None = None
    first_answer: float | None = None
    last_answer: float | None = None
    complete: bool = True

    async def ask(self, prompt: TurnPrompt) -> Generation:
        live = await self.job.engines.acquire()  # the engine may have been rebuilt since the last turn
        request_id = f"{self.job.job_id}-t{len(self.turns)}-{uuid.uuid4().hex[:6]}"
        async with self.job.slots:
            return await live.generate(prompt.inputs, self.params, request_id)

    async def turn(self, turn: TurnPlan, frames: DecodedFrames) -> None:
        """Comment on ``turn``. A failed request is tried once more in a new context window (an engine
        rebuilt meanwhile has lost its cache anyway) before the failure is raised."""
        adapter = self.conversation.adapter
        item, mm_kwargs = adapter.commentary_clip(frames, self.probe, (turn.start, turn.end))
        tokens = clip_tokens(len(frames.timestamps), self.size, adapter.geometry)
        prompt = self.conversation.prompt(turn, item, tokens, self.query, mm_kwargs)
        started = time.perf_counter()
        self.first_submit = self.first_submit or started
        try:
            generation = await self.ask(prompt)
        except WorkerError as exc:
            if not self.turns:
                raise  # nothing said yet: the job fails as any job would
            self.warnings.append(self.conversation.restart(turn, tokens, self.query, f"its request failed ({exc})"))
            prompt = self.conversation.prompt(turn, item, tokens, self.query, mm_kwargs)
            generation = await self.ask(prompt)
        if prompt.reset:
            self.warnings.append(prompt.reset)
        self.conversation.commit(prompt, generation.token_ids)
        if generation.prompt_tokens != prompt.expanded:
            log.warning("turn %d: %d prompt tokens, %d planned", turn.index, generation.prompt_tokens, prompt.expanded)
        self.last_answer = time.perf_counter()
        self.first_answer = self.first_answer or self.last_answer
        self.generations.append(generation)
        self.turns.append(self._record(turn, frames, prompt, generation, self.last_answer - started))
        self._publish(self.turns[-1])

    def _record(
        self, turn: TurnPlan, frames: DecodedFrames, prompt: TurnPrompt, generation: Generation, latency: float
    ) -> CommentaryTurn:
        cached = generation.cached_tokens
        return CommentaryTurn(
            index=turn.index,
            start=turn.start,
            end=turn.end,
            text=generation.text,
            silent=is_silent(generation.text),
            window=prompt.window,
            num_frames=len(frames.timestamps),
            frame_timestamps=frames.timestamps,
            prompt_tokens=generation.prompt_tokens,
            cached_tokens=cached,
            prefix_cache_hit_rate=_rate(cached, generation.prompt_tokens),
            completion_tokens=generation.completion_tokens,
            finish_reason=generation.finish_reason,
            latency=round(latency, 4),
        )

    def _publish(self, turn: CommentaryTurn) -> None:
        """The turn as a streamed part (``stream``), else as a progress update."""
        if self.job.emit is not None:
            part: dict[str, Any] = {"turn": turn.model_dump(mode="json"), "num_turns": self.num_turns}
            if self.item is not None:
                part["item"] = self.item
            self.job.emit(part)
            return
        update = {"turns_done": len(self.turns), "num_turns": self.num_turns}
        update["turn"] = {"start": turn.start, "end": turn.end, "text": turn.text, "silent": turn.silent}
        try:
            self.job.progress(update)
        except Exception:
            log.exception("job %s: progress update failed; the job goes on", self.job.job_id)


async def comment_video(
    job: JobContext, engine: Engine, source: MediaSource, item: int | None, started: float
) -> CommentaryResult:
    """``source`` commented turn by turn; ``item``: its place in a batch, None alone."""
    request, settings, adapter = job.request, job.settings, engine.adapter
    if adapter.commentary_clips < 1:
        raise UnsupportedInputError(
            f'mode "commentary" follows LiveCC, a Qwen2-VL model; {engine.model} ({adapter.family}) does not do it'
        )
    t0 = time.perf_counter()
    want_pixels = min(LIVECC_MAX_PIXELS, engine.pixels.video.max_pixels)  # picks an HLS master's variant
    async with workspace(settings) as folder:
        async with open_video(
            source, folder, settings, max_seconds=request.max_seconds, want_pixels=want_pixels
        ) as feed:
            first = await feed.grow()  # the whole file, or a stream's first segments
            t1 = time.perf_counter()
            pixels = settings.max_source_pixels
            info, found = await probe_video(
                job.decoder, feed.path, max_source_pixels=pixels, max_video_seconds=settings.max_video_seconds
            )
            size = commentary_frame_size(
                info.height,
                info.width,
                min_pixels=engine.pixels.video.min_pixels,
                max_pixels=engine.pixels.video.max_pixels,
                geometry=adapter.geometry,
            )
            params = commentary_sampling(request)
            salt = uuid.uuid4().hex  # the clips' ids in vLLM's caches: unique to this run
            limits = (engine.max_model_len, params["max_tokens"], adapter.commentary_clips)
            conversation = Conversation(adapter, engine.tokenizer, *limits, salt)
            run = _Run(job, item, info, size, conversation, params, request.prompt or DEFAULT_QUERY, 0)
            run.warnings += found
            run.decode_seconds = time.perf_counter() - t1
            async with contextlib.aclosing(_clips(job, feed, first, run)) as clips:
                try:
                    async for turn, frames in clips:
                        await run.turn(turn, frames)
                except WorkerError as exc:
                    if not run.turns:
                        raise  # nothing said yet: the job fails as any job would
                    # Never fail mid-video: what was said stands, and the warning says where and why it stopped.
                    run.warnings.append(f"{exc.message}; the commentary stops at {run.turns[-1].end:.1f} s")
                    run.complete = False
        run.warnings += feed.warnings
    return _result(run, engine, started, fetch=t1 - t0)


async def _clips(
    job: JobContext, feed: VideoFeed, first: list[Path], run: _Run
) -> AsyncIterator[tuple[TurnPlan, DecodedFrames]]:
    """Each turn with its frames. A whole file is planned at once. A stream is planned again as segments
    arrive (each indexed on its own, the index extended): a turn whose frames have all arrived is the same
    turn the whole stream would give, so it is commented at once; the rest wait for the stream. Turns end
    at the stream's ``max_seconds``."""
    pixels = job.settings.max_source_pixels
    index = PacketIndex([], [])
    parts, said = first, 0
    expected = _expected_turns(feed.expected_seconds)
    while True:
        started = time.perf_counter()
        for part in parts:
            more = await read_index(job.decoder, part, run.probe, max_source_pixels=pixels)
            index = PacketIndex(sorted(index.times + more.times), sorted(index.keyframes + more.keyframes))
        run.decode_seconds += time.perf_counter() - started
        final = feed.ended
        limit = feed.limit_seconds
        turns = plan_turns([t for t in index.times if limit is None or t < limit - 1e-6])
        if final and not turns:
            raise UnsupportedInputError("the video is too short for commentary: it needs 2 frames, 0.5 s apart")
        # Until the stream ends, a short first turn may yet grow: it waits.
        if final or (turns and len(turns[0].timestamps) == INITIAL_FRAMES):
            run.num_turns = len(turns) if final else max(len(turns), expected)
            if final and feed.live and index.times:  # what the partial file's header said is no length
                end = index.times[-1] + (1.0 / run.probe.fps if run.probe.fps else 0.0)
                run.probe = dataclasses.replace(run.probe, duration=round(end, 6))
            new = turns[said:]
            said = len(turns)
            if new:
                blocks = [new[i : i + DECODE_TURNS] for i in range(0, len(new), DECODE_TURNS)]
                if len(turns) == len(new):  # the first turns: the first decoded alone, first words sooner
                    blocks = [new[:1]] + [new[i : i + DECODE_TURNS] for i in range(1, len(new), DECODE_TURNS)]
                chunks = [
                    ChunkPlan(i, b[0].start, b[-1].end, [t for turn in b for t in turn.timestamps], COMMENTARY_FPS)
                    for i, b in enumerate(blocks)
                ]
                plan = VideoPlan(feed.path, run.probe, chunks, [None] * len(chunks), run.size, [], index, pixels)
                async with contextlib.aclosing(_decoded_turns(job, plan, blocks, run)) as decoded:
                    async for pair in decoded:
                        yield pair
        if final:
            return
        parts = await feed.grow()


def _expected_turns(seconds: float | None) -> int:
    """Turns a stream of ``seconds`` gives (0 when not known)."""
    if not seconds:
        return 0
    return len(plan_turns([i / COMMENTARY_FPS for i in range(math.ceil(seconds * COMMENTARY_FPS))]))


async def _decoded_turns(
    job: JobContext, plan: VideoPlan, blocks: list[list[TurnPlan]], run: _Run
) -> AsyncIterator[tuple[TurnPlan, DecodedFrames]]:
    """Each turn with its frames, the next block decoding while the engine answers this one's turns."""
    pending: asyncio.Future[Any] | None = asyncio.ensure_future(decode(job.decoder, plan, plan.chunks[0]))
    try:
        for number, block in enumerate(blocks):
            assert pending is not None
            media = await pending
            more = number + 1 < len(blocks)
            pending = asyncio.ensure_future(decode(job.decoder, plan, plan.chunks[number + 1])) if more else None
            run.decode_seconds += media.decode_seconds
            frames, at = media.frames, 0
            for turn in block:
                count = len(turn.timestamps)
                if at + count > len(frames.timestamps):
                    raise DecodeError(f"the video could not be decoded past {turn.start:.1f} s")
                span = slice(at, at + count)
                yield turn, DecodedFrames(frames.frames[span], frames.timestamps[span], frames.indices[span])
                at += count
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending


def _rate(cached: int | None, prompt: int) -> float | None:
    return round(cached / prompt, 4) if cached is not None and prompt else None


def _result(run: _Run, engine: Engine, started: float, *, fetch: float) -> CommentaryResult:
    turns, generations = run.turns, run.generations
    prompt_tokens = sum(g.prompt_tokens for g in generations)
    cached = sum(g.cached_tokens or 0 for g in generations)
    inference = (run.last_answer or 0.0) - (run.first_submit or 0.0)
    covered = turns[-1].end if turns else 0.0
    reported = any(g.cached_tokens is not None for g in generations)
    height, width = run.size
    return CommentaryResult(
        caption=" ".join(p for p in (phrase(t.text) for t in turns if not t.silent) if p),
        turns=turns,
        metadata=CommentaryMetadata(
            protocol={
                "fps": COMMENTARY_FPS,
                "initial_frames": INITIAL_FRAMES,
                "frames_per_turn": FRAMES_PER_TURN,
                "query": run.query,
                "max_tokens_per_turn": run.params["max_tokens"],
                "repetition_penalty": run.params["repetition_penalty"],
            },
            num_turns=len(turns),
            num_silent=sum(t.silent for t in turns),
            context_windows=run.conversation.window + 1,
            complete=run.complete,
            num_frames=sum(t.num_frames for t in turns),
            frame_size=(width, height),
            video=video_info(run.probe),
            model=engine.model,
            prompt_tokens=prompt_tokens,
            cached_tokens=cached,
            prefix_cache_hit_rate=_rate(cached, prompt_tokens) if reported else None,
            completion_tokens=sum(g.completion_tokens for g in generations),
            time_to_first_turn=round((run.first_answer or started) - started, 4),
            real_time_factor=real_time_factor(covered, inference),
            sampling=generations[0].sampling if generations else dict(run.params),
            processing_time=since(started),
            timings=Timings(fetch=round(fetch, 4), decode=round(run.decode_seconds, 4), inference=round(inference, 4)),
            warnings=list(dict.fromkeys(run.warnings)),
        ),
    )
