"""Engine runs for tests/test_salmonn_engine.py, in their own process (vLLM engines must be built under
``__main__``): the tiny video-SALMONN 2+ checkpoint served by the plugin, then the same weights without the
audio tower served by vLLM's native Qwen2.5-VL class, one after the other (never two engines at once).

    python -m tests.salmonn_engines MODEL_DIR OUT_JSON
"""

from __future__ import annotations

import gc
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

ENGINE_ARGS: dict[str, Any] = {
    "max_model_len": 4096,
    # An absolute KV cache budget (the CPU worker honours it): a share of the RAM would depend on the machine.
    "kv_cache_memory_bytes": 1 << 30,
    "enforce_eager": True,
    "max_num_seqs": 4,
    "seed": 0,
    "limit_mm_per_prompt": {"video": {"count": 1, "num_frames": 8, "width": 112, "height": 112}, "image": 0},
}


def native_copy(model_dir: Path, out_dir: Path) -> Path:
    """The same checkpoint as plain Qwen2.5-VL: no audio config, tower or token id."""
    from safetensors.torch import load_file, save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    for path in model_dir.iterdir():
        if path.name not in ("config.json", "model.safetensors"):
            shutil.copy(path, out_dir / path.name)
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
    config.pop("audio_config")
    config.pop("audio_token_id")
    (out_dir / "config.json").write_text(json.dumps(config))
    weights = load_file(model_dir / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("audio.")}, str(out_dir / "model.safetensors"))
    return out_dir


def run(model: Path, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model), **ENGINE_ARGS)
    params = SamplingParams(max_tokens=8, temperature=0.0)
    results = []
    for request in requests:
        (out,) = llm.generate(request, params, use_tqdm=False)
        results.append({"prompt_tokens": len(out.prompt_token_ids), "tokens": list(out.outputs[0].token_ids)})
    del llm
    gc.collect()
    return results


def main(model_dir: Path, out_json: Path) -> None:
    from worker.models.adapters.video_salmonn2_plus import VideoSalmonn2PlusAdapter

    frames = np.random.default_rng(0).integers(0, 255, (4, 56, 84, 3), dtype=np.uint8)
    prompt = VideoSalmonn2PlusAdapter().build_prompt(None, "Describe the video.", "video")
    # 4 frames at 2 fps: 2 s; the sound of the same frames at three lengths.
    metadata = {"fps": 2.0, "total_num_frames": 4, "frames_indices": [0, 1, 2, 3], "sampled_fps": 2.0}
    tone = (0.2 * np.sin(np.arange(31 * 16_000) * 2 * np.pi * 440 / 16_000)).astype(np.float32)
    ours_requests = [
        {"prompt": prompt, "multi_modal_data": {"video": (frames, metadata)}},
        {"prompt": prompt, "multi_modal_data": {"video": (frames, metadata | {"audio": tone[: 2 * 16_000]})}},
        {"prompt": prompt, "multi_modal_data": {"video": (frames, metadata | {"audio": tone})}},
        {"prompt": prompt, "multi_modal_data": {"video": (frames, metadata | {"audio": tone[: 2 * 16_000] * 0.5})}},
    ]
    for request in ours_requests:
        request["mm_processor_kwargs"] = {"do_resize": False}
    ours = run(model_dir, ours_requests)
    native_dir = native_copy(model_dir, out_json.parent / "native")
    native = run(
        native_dir,
        [{"prompt": prompt, "multi_modal_data": {"video": frames}, "mm_processor_kwargs": {"do_resize": False}}],
    )
    out_json.write_text(json.dumps({"ours": ours, "native": native}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
