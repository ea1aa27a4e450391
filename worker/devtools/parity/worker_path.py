"""The worker's side: jobs through ``CaptionService`` exactly as the handler runs them (fetch, probe,
plan, PyAV decode, the family's adapter, the vLLM engine), with taps at the engine boundary that only
record: the prompt dict the adapter handed ``Engine.generate``, the prompt ids and processed multimodal
items vLLM's input processor made of it, the generated ids with each step's top two log-probs, and the
M-RoPE positions vLLM's model computes for that prompt (its own ``get_mrope_input_positions``, run here
on the same ids and items). What the worker does is unchanged: the taps copy the sampling parameters
before asking for log-probs, and log-probs do not change a greedy choice.

vLLM starts its engine in a child process: call ``run_worker`` from a ``__main__`` guard in scripts.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worker.config import Settings
from worker.devtools.parity.records import GRID_KEYS, PIXEL_KEYS, VALUE_KEYS, Media, SideRun, Step, WorkerRun
from worker.engine import Engine, EngineSlot
from worker.job.service import CaptionService

log = logging.getLogger(__name__)



def parity_settings(folder: Path, media_roots: list[Path], work_dir: Path, **overrides: Any) -> Settings:
    """The worker's settings for a parity run: the folder's own weights (``load_format="auto"``) in
    float32, greedy jobs one at a time. ``overrides`` are further Settings fields (e.g. ``max_model_len``,
    ``gpu_memory_utilization``, ``dtype`` on a GPU)."""
    fields: dict[str, Any] = {
        "model_name": str(folder),
        "load_format": "auto",
        "dtype": "float32",
        "max_model_len": 4096,
        "enforce_eager": True,
        "max_num_seqs": 2,
        "max_concurrency": 1,
        "allowed_media_roots": media_roots,
        "work_dir": work_dir,
        "compile_cache_dir": None,
        "decode_workers": 0,
        "allow_private_urls": True,
    }
    return Settings(**(fields | overrides))


@dataclass
class _Request:
    """What crossed the engine boundary for one request."""

    inputs: dict[str, Any]
    prompt_token_ids: list[int] = field(default_factory=list)
    # (vLLM's MultiModalFeatureSpec, its data): the data from an earlier request when the processor cache
    # sent the item without it.
    features: list[tuple[Any, Any]] = field(default_factory=list)
    positions: np.ndarray | None = None
    output: Any = None  # the final RequestOutput
    notes: list[str] = field(default_factory=list)


class EngineTap:
    """Records every request of one engine (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.requests: list[_Request] = []
        self._by_id: dict[str, _Request] = {}
        self._data: dict[str, Any] = {}  # multimodal item data by identifier (a cached item comes without)
        llm = engine.llm
        self._process = llm.input_processor.process_inputs
        self._generate = llm.generate
        llm.input_processor.process_inputs = self._process_inputs
        llm.generate = self._generate_tapped

    def _process_inputs(self, request_id: str, *args: Any, **kwargs: Any) -> Any:
        request = self._process(request_id, *args, **kwargs)
        record = self._by_id.get(request_id)
        if record is not None:
            record.prompt_token_ids = list(request.prompt_token_ids or [])
            for feature in request.mm_features or []:
                if feature.data is not None:
                    self._data[feature.identifier] = feature.data
                record.features.append((feature, self._data.get(feature.identifier)))
            record.positions = self._positions(record)
        return request

    async def _generate_tapped(self, prompt: Any, params: Any, request_id: str, **kwargs: Any) -> AsyncIterator[Any]:
        record = _Request(inputs=prompt if isinstance(prompt, dict) else {"prompt": prompt})
        self._by_id[request_id] = record
        self.requests.append(record)
        tapped = params.clone()
        tapped.logprobs = max(2, params.logprobs or 0)
        async for output in self._generate(prompt, tapped, request_id, **kwargs):
            record.output = output
            yield output

    def positions_config(self, hf_config: Any) -> Any:
        """The config the served class keeps as ``self.config`` (a family serving a part of the
        checkpoint, like Omni's thinker, returns that part's)."""
        return hf_config

    def _positions(self, record: _Request) -> np.ndarray | None:
        """vLLM's M-RoPE positions for this prompt: the model class's own method on a bare instance that
        holds only the config, which is all the method reads."""
        from vllm.model_executor.model_loader.utils import get_model_architecture

        model_config = self.engine.llm.vllm_config.model_config
        try:
            cls, _ = get_model_architecture(model_config)
            if not hasattr(cls, "get_mrope_input_positions"):
                record.notes.append(f"{cls.__name__} has no get_mrope_input_positions")
                return None
            bare = cls.__new__(cls)
            torch.nn.Module.__init__(bare)
            bare.config = self.positions_config(model_config.hf_config)
            features = [dataclasses.replace(f, data=data) for f, data in record.features]
            positions, _ = cls.get_mrope_input_positions(bare, record.prompt_token_ids, features)
            return np.asarray(positions, dtype=np.int64)
        except Exception as exc:  # a family whose method needs more than the config: say so, go on
            record.notes.append(f"vLLM positions not computed: {type(exc).__name__}: {exc}")
            return None


def side_of(record: _Request, tokenizer: Any = None) -> SideRun:
    """The SideRun of one recorded request (``tokenizer``: unused by the Qwen families, which compare ids;
    accepted so every family's call reads the same)."""
    output = record.output
    completion = output.outputs[0] if output is not None and output.outputs else None
    side = SideRun(
        prompt_token_ids=list((output.prompt_token_ids if output is not None else None) or record.prompt_token_ids),
        token_ids=list(completion.token_ids) if completion else [],
        positions=record.positions,
        notes=list(record.notes),
    )
    if completion is not None and completion.logprobs:
        side.steps = [_top2(step) for step in completion.logprobs]
    side.text = completion.text if completion else ""
    for _, data in record.features:
        if data is None:
            side.notes.append("a multimodal item came from vLLM's cache without its data")
            continue
        for key in GRID_KEYS:
            if key in data:
                side.grids.setdefault(key, []).append([int(v) for v in data[key].data.tolist()])
        for key in VALUE_KEYS:
            if key in data and data[key].data is not None:
                side.mm_values.setdefault(key, []).extend(float(v) for v in np.asarray(data[key].data).reshape(-1))
        for key in PIXEL_KEYS:
            if key in data:
                pixels = data[key].data.float().numpy()
                side.pixels[key] = pixels if key not in side.pixels else np.concatenate([side.pixels[key], pixels])
    return side


def _top2(step: Any) -> Step:
    """The best two of one step's log-probs (vLLM adds the sampled token to the top k it was asked for)."""
    ranked = sorted(((float(lp.logprob), int(tid)) for tid, lp in step.items()), reverse=True)
    ranked.append((float("-inf"), -1))  # a step that reports one token only
    (best, best_id), (second, second_id) = ranked[0], ranked[1]
    return Step(best_id, best, second_id, second)


def media_of(inputs: dict[str, Any]) -> Media | None:
    """The medium in an adapter's prompt dict, as the engine received it."""
    data = inputs.get("multi_modal_data") or {}
    audio = data.get("audio")
    samples = np.asarray(audio[0] if isinstance(audio, tuple) else audio) if audio is not None else None
    if "video" in data:
        video = data["video"]
        frames, metadata = video if isinstance(video, tuple) else (video, None)
        if metadata is not None and samples is None and "audio" in metadata:
            samples = np.asarray(metadata["audio"])
        return Media("video", np.asarray(frames), dict(metadata) if metadata else None, samples)
    if "image" in data:
        return Media("image", np.asarray(data["image"]), None, samples)
    return None


def run_worker(
    settings: Settings, jobs: list[dict[str, Any]], tap_class: type[EngineTap] = EngineTap
) -> list[WorkerRun]:
    """Start the worker's engine, run ``jobs`` one after another through CaptionService, stop the engine.
    Each job must make exactly one engine request (a single-mode video or an image job). ``tap_class``: a
    family's EngineTap (e.g. one whose ``positions_config`` is a part of the checkpoint's config)."""
    slot = EngineSlot()
    slot.start(settings)
    engine = slot.get()
    tap = tap_class(engine)
    service = CaptionService(settings, slot)
    try:
        outputs = asyncio.run(_run_all(service, jobs))
    finally:
        engine.shutdown()
        service.decoder.shutdown()
    if len(tap.requests) != len(jobs):
        raise RuntimeError(f"{len(jobs)} jobs made {len(tap.requests)} engine requests; parity needs one each")
    return [
        WorkerRun(job, output, record.inputs, media_of(record.inputs), side_of(record, engine.tokenizer))
        for job, output, record in zip(jobs, outputs, tap.requests, strict=True)
    ]


async def _run_all(service: CaptionService, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    outputs = []
    for job in jobs:
        output = await service.handle(job)
        if "error" in output:
            raise RuntimeError(f"the worker failed job {job}: {output['error']}")
        outputs.append(output)
    return outputs
