"""Engine run for tests/test_video_salmonn2_engine.py, in its own process (vLLM engines must be built under
``__main__``): two video jobs, with and without sound, end to end through the worker (CaptionService, PyAV
decode, the adapter, the plugin on the CPU engine) on the tiny checkpoint's own weights, recorded at the
engine boundary (worker.devtools.parity), then the authors' pipeline (tests/video_salmonn2_reference.py) on
the frames, the span and the sound the worker sent.

    python -m tests.video_salmonn2_engines MODEL_DIR WORK_DIR OUT_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tests.video_salmonn2_reference import Reference
from worker.devtools.media import make_video
from worker.devtools.parity.worker_path import parity_settings, run_worker

MAX_TOKENS = 24
PROMPT = "Describe the video in detail."


def jobs(media: Path) -> list[dict[str, Any]]:
    # 7 frames: the 60 audio tokens of the 3.5 s are stretched to 63 to be spread over them, as the authors do.
    video = make_video(media / "salmonn2.mp4", seconds=3.5, fps=10, width=96, height=64, audio="aac")
    common = {"video": str(video), "prompt": PROMPT, "fps": 2.0, "max_frames": 8, "max_tokens": MAX_TOKENS}
    return [common | {"process_audio": True, "temperature": 0.0}, common | {"process_audio": False, "temperature": 0.0}]


def main(model_dir: Path, work: Path, out_json: Path) -> None:
    media = work / "media"
    media.mkdir(parents=True, exist_ok=True)
    settings = parity_settings(model_dir, [media], work / "jobs")
    todo = jobs(media)
    runs = run_worker(settings, todo)
    reference = Reference(model_dir)
    results = []
    for job, run in zip(todo, runs, strict=True):
        side, sent = run.side, run.media
        assert sent is not None and sent.metadata is not None
        real_time = float(sent.metadata["duration"])
        sound = sent.audio if job["process_audio"] else None
        ref = reference.run(sent.pixels, PROMPT, real_time, sound, MAX_TOKENS)
        worker_pixels = side.pixels.get("pixel_values_videos")
        results.append(
            {
                "process_audio": job["process_audio"],
                "output": run.output,
                "frames": int(sent.pixels.shape[0]),
                "real_time": real_time,
                "audio_samples": None if sound is None else len(sound),
                "worker": {
                    "prompt_ids": side.prompt_token_ids,
                    "token_ids": side.token_ids,
                    "margins": [step.margin for step in side.steps],
                },
                "pixels_max_difference": None
                if worker_pixels is None
                else float(np.abs(np.asarray(worker_pixels).reshape(ref["pixels"].shape) - ref.pop("pixels")).max()),
                "reference": {k: v for k, v in ref.items() if k != "pixels"},
            }
        )
    out_json.write_text(json.dumps(results, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
