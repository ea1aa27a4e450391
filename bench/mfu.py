"""Model FLOP utilisation of the throughputs in a `bench/e2e.py` RESULT json (worker/devtools/flops.py):

    python bench/mfu.py bench/results/e2e_qwen2_5_vl_bf16_eager_h200_2026-12-01.json

For each variant and concurrency: TFLOP per video (vision encoder + prefill + decode of the 7B shape at
the mean prompt and completion tokens measured), the TFLOP/s the videos/s imply, and that over the H200's
dense BF16 peak. The visual tokens are the prompt tokens less --text-tokens (the instruction and the chat
template), the frames the request's max_frames unless --frames says otherwise. Ends with `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.devtools.flops import H200_BF16_DENSE_FLOPS, QWEN2_5_VL_7B, mfu, video_flops  # noqa: E402


def utilisation(result: dict[str, Any], frames: int, text_tokens: int, peak: float) -> dict[str, dict[str, Any]]:
    """variant -> concurrency -> {tflop_per_video, tflops, mfu} for every figure with tokens and videos/s."""
    out: dict[str, dict[str, Any]] = {}
    for variant, by_concurrency in result.get("figures", {}).items():
        for concurrency, figure in by_concurrency.items():
            prompt, completion = figure.get("prompt_tokens_mean"), figure.get("completion_tokens_mean")
            rate = figure.get("videos_per_s")
            if not (prompt and completion and rate):
                continue
            flops = video_flops(QWEN2_5_VL_7B, int(prompt), int(completion), int(prompt) - text_tokens, frames)
            out.setdefault(variant, {})[concurrency] = {
                "tflop_per_video": round(flops / 1e12, 1),
                "tflops": round(rate * flops / 1e12, 1),
                "mfu": round(mfu(rate, flops, peak), 3),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("result", type=Path, help="a bench/e2e.py RESULT json (its --out file)")
    parser.add_argument("--frames", type=int, help="frames per video (default: the request's max_frames)")
    parser.add_argument("--text-tokens", type=int, default=40, help="prompt tokens that are not visual")
    parser.add_argument("--peak-tflops", type=float, default=H200_BF16_DENSE_FLOPS / 1e12)
    args = parser.parse_args()
    result = json.loads(args.result.read_text())
    frames = args.frames or int(result.get("request", {}).get("max_frames") or 1)
    table = utilisation(result, frames, args.text_tokens, args.peak_tflops * 1e12)
    print("| variant | in flight | TFLOP/video | TFLOP/s | MFU |\n|---|---|---|---|---|")
    for variant, rows in table.items():
        for concurrency, row in rows.items():
            print(f"| {variant} | {concurrency} | {row['tflop_per_video']} | {row['tflops']} | {row['mfu']} |")
    summary = {"bench": "mfu", "source": args.result.name, "frames": frames, "peak_tflops": args.peak_tflops}
    print("RESULT " + json.dumps(summary | {"figures": table}), flush=True)


if __name__ == "__main__":
    main()
