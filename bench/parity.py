"""Token-for-token parity of the worker with the model family's transformers reference (issue 17).

    # a real checkpoint on a GPU (both sides float32; the engine is stopped before the reference loads)
    python bench/parity.py --model /path/to/Qwen2.5-VL-7B-Instruct --video clip.mp4 --image photo.jpg \
        --prompt "Describe this video." --fps 2 --max-frames 16 --tokens 32
    # temporal positions over several rates (one case per rate)
    python bench/parity.py --model /path/to/Qwen2.5-VL-7B-Instruct --video clip.mp4 --fps 0.5,1,2,4
    # no checkpoint: a tiny folder of the family with seeded float32 weights and a generated clip (CPU)
    python bench/parity.py --family qwen3_vl

The worker runs the jobs end to end (CaptionService: PyAV decode, the family's adapter, vLLM with the
folder's weights); the reference is ``...ForConditionalGeneration.generate(do_sample=False)`` with the
folder's AutoProcessor and chat template, given the worker's frames and their true timing. Prints a table
and one line ``RESULT {json}``; exits 1 when any case differs. Must run as a script (vLLM spawns).
docs/correctness.md explains every column and every known difference.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from worker.devtools.parity.compare import result_line, table  # noqa: E402
from worker.devtools.parity.harness import Case, run_parity  # noqa: E402
from worker.devtools.parity.worker_path import parity_settings  # noqa: E402

DEFAULT_PROMPT = "Describe what happens in this video."
DEFAULT_IMAGE_PROMPT = "Describe this image."


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="model folder with real weights (e.g. Qwen2.5-VL-7B-Instruct)")
    source.add_argument("--family", help="no checkpoint: a tiny folder of this family with seeded weights")
    parser.add_argument("--video", type=Path, help="a video file (default with --family: a generated clip)")
    parser.add_argument("--image", type=Path, help="also an image job")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--image-prompt", default=DEFAULT_IMAGE_PROMPT)
    parser.add_argument("--fps", default="2", help="sampling rate, or several separated by commas")
    parser.add_argument("--max-frames", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32, help="greedy tokens to generate and compare (>= 16)")
    parser.add_argument("--device", default=None, help="reference device (default: cuda when available)")
    parser.add_argument("--dtype", default="float32", help="both sides; float32 keeps kernel noise out")
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0, help="--family: seed of the weights")
    parser.add_argument("--out", type=Path, help="also write the reports here (JSON)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    work = Path(tempfile.mkdtemp(prefix="parity-"))
    folder = args.model or tiny_folder(args.family, work / "model", args.seed)
    video = args.video or (tiny_clip(work / "clip.mp4") if args.family else None)
    image = args.image or (tiny_image(work / "photo.png") if args.family and not args.video else None)
    cases: list[Case] = []
    if video is not None:
        for fps in [float(f) for f in args.fps.split(",")]:
            job = {"video": str(video.resolve()), "prompt": args.prompt, "fps": fps, "max_frames": args.max_frames}
            cases.append(Case(f"video fps {fps:g}", job | {"max_tokens": args.tokens}))
    if image is not None:
        job = {"image": str(image.resolve()), "prompt": args.image_prompt, "max_tokens": args.tokens}
        cases.append(Case("image", job))
    if not cases:
        raise SystemExit("nothing to compare: give --video and/or --image")
    roots = sorted({Path(c.job.get("video") or c.job["image"]).parent for c in cases})
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = parity_settings(
        Path(folder),
        roots,
        work / "jobs",
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        enforce_eager=device == "cpu",
        max_frames_limit=max(100, args.max_frames),
    )
    reports = run_parity(settings, cases, device=device, min_tokens=min(16, args.tokens))
    print(table(reports))
    line = result_line(reports, model=str(folder), device=device, dtype=args.dtype)
    if args.out:
        args.out.write_text(line.removeprefix("RESULT ") + "\n")
    print(line, flush=True)
    return 0 if all(r.equal for r in reports) else 1


def tiny_folder(family: str, out: Path, seed: int) -> Path:
    from worker.devtools.dummy_model import build_dummy_model
    from worker.devtools.parity.weights import write_seeded_weights

    folder = build_dummy_model(out, family, "tiny")
    write_seeded_weights(folder, seed=seed)
    return folder


def tiny_clip(path: Path) -> Path:
    from worker.devtools.media import make_video

    # MPEG-4 Part 2: the same pixels every run (x264's output varies by a few levels from run to run).
    return make_video(path, seconds=4.0, fps=10, width=224, height=224, texture=True, codec="mpeg4")


def tiny_image(path: Path) -> Path:
    import numpy as np
    import PIL.Image

    pixels = np.random.default_rng(1).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path)
    return path


if __name__ == "__main__":
    raise SystemExit(main())
