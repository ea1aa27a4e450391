"""One parity run: the worker's jobs end to end on one engine, then the reference on what the worker showed
the model (its frames, with their true timing read from the file), then the comparison per case.

    reports = run_parity(folder, [Case("video", {"video": path, "prompt": "...", "fps": 2, ...})], ...)

vLLM starts its engine in a child process: call ``run_parity`` from a ``__main__`` guard in scripts.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worker.config import Settings
from worker.devtools.parity.compare import CaseReport, compare
from worker.devtools.parity.records import Media, WorkerRun
from worker.devtools.parity.reference import Reference, reference_for
from worker.devtools.parity.truth import read_source, source_frames, true_video_metadata
from worker.devtools.parity.worker_path import run_worker

log = logging.getLogger(__name__)


@dataclass
class Case:
    """One job and how to check it. ``job`` is a worker job input with one video or image (by path),
    ``prompt`` and ``max_tokens`` (greedy is forced). ``processor`` adds arguments to the reference's
    processor call (e.g. ``{"video_metadata": None}`` to show what the reference does without timing)."""

    name: str
    job: dict[str, Any]
    processor: dict[str, Any] = field(default_factory=dict)

    def worker_job(self) -> dict[str, Any]:
        return self.job | {"temperature": 0.0}


def family_of(folder: Path) -> str:
    """The worker's family for a model folder (the adapter its config's architectures select)."""
    from transformers import AutoConfig

    from worker.models.adapters import adapter_for

    return adapter_for(getattr(AutoConfig.from_pretrained(folder), "architectures", None)).family


def run_parity(
    settings: Settings, cases: list[Case], *, device: str = "cpu", min_tokens: int = 16, family: str | None = None
) -> list[CaseReport]:
    """The worker's runs of ``cases`` (one engine), then the reference's, compared case by case. Where
    transformers' own M-RoPE positions differ from the worker's but Qwen's original rule (rope.py) equals
    them, the ids are compared with a second reference run on the original positions (and the report
    says so); the first run's ids are kept in its notes. The reference runs in the worker's dtype
    (float32 unless the settings name another)."""
    folder = Path(settings.model_name)
    family = family or family_of(folder)
    # On a GPU, vLLM forks its engine core unless CUDA is already initialised; a caller that asked
    # torch.cuda.is_available() first leaves a fork that cannot use CUDA (seen on the H200). Spawn is safe always.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    runs = run_worker(settings, [case.worker_job() for case in cases])
    dtype = getattr(torch, settings.dtype) if settings.dtype not in ("auto", "float") else torch.float32
    reference = reference_for(family)(folder, device=device, dtype=dtype)
    return [check_case(reference, family, case, run, min_tokens=min_tokens) for case, run in zip(cases, runs)]


def check_case(reference: Reference, family: str, case: Case, run: WorkerRun, *, min_tokens: int = 16) -> CaseReport:
    """The reference on the worker's medium, then the comparison."""
    media, media_check = reference_media(case, run)
    prompt = case.job["prompt"]
    tokens = int(case.job["max_tokens"])
    side = reference.run(prompt, media, tokens, case.processor)
    tokenizer = reference.processor.tokenizer
    kind = media.kind if media else "text"
    report = compare(case.name, family, kind, run.side, side, tokenizer, min_tokens=min_tokens)
    report.media = media_check
    if report.positions_equal is False and report.positions_equal_qwen_rule:
        first = report
        side = reference.run(prompt, media, tokens, case.processor, qwen_positions=True)
        report = compare(
            case.name, family, first.kind, run.side, side, tokenizer, min_tokens=min_tokens, reference_label="qwen-rule"
        )
        report.positions_equal = False  # transformers' own positions still differ; the table says which rule
        report.first_position_difference = first.first_position_difference
        report.temporal_positions["reference"] = first.temporal_positions["reference"]
        report.media = media_check
        report.notes.append(
            f"transformers' own positions: ids {'equal' if first.tokens_equal else 'differ'} "
            f"({first.reference_ids} vs worker {first.worker_ids}; divergence {first.divergence})"
        )
    log.info("%s: %s", case.name, "equal" if report.equal else "DIFFERS")
    return report


def reference_media(case: Case, run: WorkerRun) -> tuple[Media | None, dict[str, Any]]:
    """The medium for the reference: the pixels the worker sent to the engine, a video's timing read from
    the file at the worker's reported frame times. Also what the worker's frames and timing are beside
    the file's (frames decoded independently; only where the worker did not resize)."""
    sent = run.media
    if sent is None or sent.kind != "video":
        return sent, {}
    path = Path(case.job["video"])
    source = read_source(path)
    instants = [float(t) for t in run.output["metadata"]["frame_timestamps"]]
    size = (int(sent.pixels.shape[1]), int(sent.pixels.shape[2]))
    truth = true_video_metadata(source, instants, size)
    check: dict[str, Any] = {"truth": truth, "worker": _timing(sent.metadata)}
    if sent.metadata is not None:
        check["timing_equal"] = all(
            np.isclose(float(sent.metadata[k]), float(truth[k]), rtol=1e-6) for k in ("fps", "total_num_frames")
        ) and list(sent.metadata["frames_indices"]) == truth["frames_indices"]
    # What qwen-vl-utils would have taken for the same count: linspace indices over the whole stream.
    count = len(instants)
    check["qwen_vl_utils_indices"] = [int(i) for i in np.linspace(0, len(source.times) - 1, count).round()]
    if size == (source.height, source.width):
        decoded = source_frames(path, truth["frames_indices"])
        check["frames_max_difference_to_file"] = int(np.abs(decoded.astype(int) - sent.pixels.astype(int)).max())
    return Media("video", sent.pixels, truth, sent.audio), check


def _timing(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    if metadata is None:
        return None
    keys = ("fps", "frames_indices", "total_num_frames", "duration", "width", "height")
    return {k: (list(metadata[k]) if k == "frames_indices" else metadata[k]) for k in keys if k in metadata}
