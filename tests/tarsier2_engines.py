"""Engine run for tests/test_tarsier2_engine.py, in its own process (vLLM engines must be built under
``__main__``): a video job and an image job end to end through the worker (CaptionService, PyAV decode, the
Tarsier2 adapter, the plugin on the CPU engine) on the tiny checkpoint's own weights, recorded at the engine
boundary (worker.devtools.parity), then the authors' pipeline (tests/tarsier2_reference.py) on the frames the
worker sampled.

    python -m tests.tarsier2_engines MODEL_DIR WORK_DIR OUT_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from tests.tarsier2_reference import run as reference_run
from worker.devtools.media import make_video
from worker.devtools.parity.worker_path import parity_settings, run_worker

MAX_TOKENS = 24


def jobs(media: Path) -> list[dict[str, Any]]:
    video = make_video(media / "tarsier2.mp4", seconds=4.0, fps=10, width=96, height=64)
    image = media / "tarsier2.png"
    PIL.Image.fromarray(np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(image)
    common = {"max_tokens": MAX_TOKENS, "temperature": 0.0}
    return [
        {"video": str(video), "prompt": "Describe the video in detail.", "fps": 2.0, "max_frames": 6} | common,
        {"image": str(image), "prompt": "Describe the image in detail."} | common,
    ]


def main(model_dir: Path, work: Path, out_json: Path) -> None:
    media = work / "media"
    media.mkdir(parents=True, exist_ok=True)
    settings = parity_settings(model_dir, [media], work / "jobs")
    todo = jobs(media)
    results = []
    for job, run in zip(todo, run_worker(settings, todo), strict=True):
        side, sent = run.side, run.media
        assert sent is not None
        record: dict[str, Any] = {
            "kind": sent.kind,
            "output": run.output,
            "worker": {
                "prompt_ids": side.prompt_token_ids,
                "token_ids": side.token_ids,
                "positions": None if side.positions is None else side.positions.tolist(),
                "grids": side.grids,
                "margins": [step.margin for step in side.steps],
                "notes": side.notes,
            },
        }
        if sent.kind == "video":
            record["frames_sent"] = int(sent.pixels.shape[0])
            record["frames_doubled"] = bool((sent.pixels[0::2] == sent.pixels[1::2]).all())
            shown = sent.pixels[0::2]  # the sampled frames, before the authors' doubling
        else:
            shown = sent.pixels
        reference = reference_run(model_dir, sent.kind, shown, job["prompt"], MAX_TOKENS)
        worker_pixels = side.pixels.get("pixel_values_videos", side.pixels.get("pixel_values"))
        record["pixels_max_difference"] = (
            None if worker_pixels is None else float(np.abs(worker_pixels - reference.pop("pixels")).max())
        )
        record["reference"] = reference
        results.append(record)
    out_json.write_text(json.dumps(results, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
