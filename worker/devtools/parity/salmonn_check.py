"""video-SALMONN 2+ parity (issue 17): the worker end to end (CaptionService, PyAV, the adapter, vLLM with the
worker's plugin) against the authors' model code (salmonn.py) on a tiny folder with seeded float32 weights:
video with its sound (one 30 s piece at 2 fps; two pieces at 0.25 fps), video without sound, an image.

    python -m worker.devtools.parity.salmonn_check OUT.json [--model FOLDER]

The sound case is also run against the authors' inference.py as published (``positions="published"``),
which places the interleaved block otherwise; that comparison is reported, not required (docs/correctness.md).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import PIL.Image
import torch

from worker.config import Settings
from worker.devtools.parity.compare import json_default, table
from worker.devtools.parity.harness import Case, check_case
from worker.devtools.parity.records import WorkerRun
from worker.devtools.parity.salmonn import FAMILY, PublishedSalmonnReference, SalmonnReference, write_weights
from worker.devtools.parity.worker_path import EngineTap, media_of, parity_settings, side_of
from worker.engine import EngineSlot
from worker.job.service import CaptionService

log = logging.getLogger(__name__)

TOKENS = 24
PROMPT = "Describe what you see and hear."


class SalmonnTap(EngineTap):
    """The harness's tap; the plugin's positions also read the audio tower's tokens per 30 s piece."""

    def _positions(self, record: Any) -> np.ndarray | None:
        from vllm.model_executor.model_loader.utils import get_model_architecture

        from worker.models.vllm_plugin.salmonn_layout import tokens_per_piece

        model_config = self.engine.llm.vllm_config.model_config
        cls, _ = get_model_architecture(model_config)
        bare = cls.__new__(cls)
        torch.nn.Module.__init__(bare)
        bare.config = model_config.hf_config
        audio = bare.config.audio_config
        audio = audio if isinstance(audio, dict) else audio.to_dict()
        per_piece = tokens_per_piece(audio["second_per_window"], audio["second_stride"])
        bare.audio = SimpleNamespace(tokens_per_piece=per_piece * audio["qformer_config"]["query_length"])
        features = [dataclasses.replace(f, data=data) for f, data in record.features]
        positions, _ = cls.get_mrope_input_positions(bare, record.prompt_token_ids, features)
        return np.asarray(positions, dtype=np.int64)


def build_folder(dest: Path, seed: int = 0) -> Path:
    from worker.devtools.dummy_model import build_dummy_model

    folder = build_dummy_model(dest, FAMILY, "tiny")
    write_weights(folder, seed=seed)
    return folder


def make_media(media_dir: Path) -> dict[str, Path]:
    from worker.devtools.media import make_video

    media_dir.mkdir(parents=True, exist_ok=True)
    small = {"fps": 10, "width": 112, "height": 112, "texture": True, "seed": 9}
    image = media_dir / "salmonn_photo.png"
    PIL.Image.fromarray(np.random.default_rng(3).integers(0, 255, (112, 140, 3), dtype=np.uint8)).save(image)
    return {
        "av": make_video(media_dir / "salmonn_av.mp4", seconds=4.0, audio="aac", **small),
        "av_long": make_video(media_dir / "salmonn_av_32s.mp4", seconds=32.0, audio="aac", **small),
        "image": image,
    }


def cases(media: dict[str, Path]) -> list[Case]:
    video = {"prompt": PROMPT, "max_tokens": TOKENS, "fps": 2.0, "max_frames": 8}
    return [
        Case("salmonn video + sound", video | {"video": str(media["av"]), "process_audio": True}),
        # 8 frames over 32 s: 8 s per frame pair, two 30 s pieces of sound (120 tokens).
        Case(
            "salmonn video + sound 0.25 fps",
            video | {"video": str(media["av_long"]), "process_audio": True, "fps": 0.25},
        ),
        Case("salmonn video", video | {"video": str(media["av"])}),
        Case("salmonn image", {"image": str(media["image"]), "prompt": "Describe this image.", "max_tokens": TOKENS}),
    ]


def run(settings: Settings, media: dict[str, Path]) -> dict[str, Any]:
    all_cases = cases(media)
    jobs = [case.worker_job() for case in all_cases]
    slot = EngineSlot()
    slot.start(settings)
    engine = slot.get()
    tap = SalmonnTap(engine)
    service = CaptionService(settings, slot)
    started = time.perf_counter()
    try:
        outputs = asyncio.run(_jobs(service, jobs))
    finally:
        engine.shutdown()
        service.decoder.shutdown()
    worker_seconds = time.perf_counter() - started
    runs = [
        WorkerRun(job=j, output=o, inputs=r.inputs, media=media_of(r.inputs), side=side_of(r, engine.tokenizer))
        for j, o, r in zip(jobs, outputs, tap.requests, strict=True)
    ]
    started = time.perf_counter()
    folder = Path(settings.model_name)
    reference = SalmonnReference(folder)
    reports = [check_case(reference, FAMILY, case, r) for case, r in zip(all_cases, runs, strict=True)]
    published = PublishedSalmonnReference(folder)
    as_published = check_case(published, FAMILY, all_cases[0], runs[0])
    as_published.name = "salmonn video + sound, inference.py as published"
    return {
        "reports": reports,
        "published": as_published,
        "seconds": {"worker": round(worker_seconds, 1), "reference": round(time.perf_counter() - started, 1)},
    }


async def _jobs(service: CaptionService, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    outputs = []
    for job in jobs:
        output = await service.handle(job)
        if "error" in output:
            raise RuntimeError(f"the worker failed job {job}: {output['error']}")
        outputs.append(output)
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.devtools.parity.salmonn_check", description=__doc__)
    parser.add_argument("out", type=Path, help="where to write the JSON result")
    parser.add_argument("--model", type=Path, help="a video-SALMONN 2+ folder (default: the tiny one, seeded weights)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0, help="the CPU engine's VLLM_CPU_KVCACHE_SPACE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{args.kv_cache_gib:g}")
    work = args.work or Path(tempfile.mkdtemp(prefix="parity-salmonn-"))
    folder = args.model or build_folder(work / "tiny-video_salmonn2_plus")
    media = make_media(work / "media")
    result = run(parity_settings(folder, [work / "media"], work / "jobs"), media)
    text = table([*result["reports"], result["published"]])
    log.info("parity:\n%s", text)
    payload = {
        "reports": [r.to_json() for r in result["reports"]],
        "published": result["published"].to_json(),
        "seconds": result["seconds"],
        "table": text,
    }
    args.out.write_text(json.dumps(payload, default=json_default))
    return 0


if __name__ == "__main__":
    sys.exit(main())
