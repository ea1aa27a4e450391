"""Reference forward of video-SALMONN 2+'s audio tower, for tests/test_salmonn_audio.py: transformers'
WhisperEncoder, then the window Q-Former written out plainly from the description (issue 9), against the
plugin's SalmonnAudioTower on the same checkpoint, in float32.

Run as ``python -m tests.salmonn_reference MODEL_DIR``: it prints one JSON line. A separate process because
building vLLM layers outside an engine initialises vLLM's distributed state, which must not leak into the
test session."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

# The port of the authors' audio tower, shared with the parity reference (worker/devtools/parity/salmonn.py).
from worker.devtools.parity.salmonn import audio_tower as reference


def ours(
    model_dir: Path, mel: torch.Tensor, weights: dict[str, torch.Tensor], audio_config: dict, checks: dict[str, bool]
) -> torch.Tensor:
    from vllm.config import ModelConfig, VllmConfig, set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.model_executor.model_loader.utils import process_weights_after_loading

    from worker.models.vllm_plugin import register
    from worker.models.vllm_plugin.salmonn_audio import SalmonnAudioTower

    register()
    vllm_config = VllmConfig(model_config=ModelConfig(model=str(model_dir), max_model_len=4096, dtype="float32"))
    with set_current_vllm_config(vllm_config):
        port = 20000 + (hash(str(model_dir)) % 20000)
        init_distributed_environment(1, 0, f"tcp://127.0.0.1:{port}", 0, backend="gloo")
        initialize_model_parallel(1, 1)
        tower = SalmonnAudioTower(vllm_config, audio_config, vllm_config.model_config.get_hidden_size())
        loaded = tower.load_weights((k.removeprefix("audio."), v) for k, v in weights.items() if k.startswith("audio."))
        process_weights_after_loading(tower, vllm_config.model_config, torch.device("cpu"))
        checks["all_parameters_loaded"] = loaded == {name for name, _ in tower.named_parameters()}
        try:
            tower.load_weights([("qformer.bert.encoder.layer.0.attention.self.extra.weight", torch.zeros(1))])
        except ValueError:
            checks["unknown_weight_rejected"] = True
        return tower(mel)


def main(model_dir: Path) -> None:
    torch.set_default_dtype(torch.float32)
    config = json.loads((model_dir / "config.json").read_text())
    weights = {k: v.float() for k, v in load_file(model_dir / "model.safetensors").items()}
    weights.pop("audio.qformer.bert.embeddings.position_ids")
    # Real log-mel input: 31 s of a chirp through the plugin's own feature extraction, two 30 s pieces.
    from transformers import WhisperFeatureExtractor

    t = np.arange(31 * 16_000) / 16_000
    sound = (0.3 * np.sin(2 * np.pi * (200 + 50 * t) * t)).astype(np.float32)
    extractor = WhisperFeatureExtractor(feature_size=128, sampling_rate=16_000, hop_length=160, chunk_length=30)
    pieces = [sound[k : k + 480_000] for k in range(0, len(sound), 480_000)]
    mel = extractor(pieces, sampling_rate=16_000, return_tensors="pt")["input_features"]
    with torch.no_grad():
        expected = reference(mel, weights, config["audio_config"])
        checks = {"all_parameters_loaded": False, "unknown_weight_rejected": False}
        got = ours(model_dir, mel, weights, config["audio_config"], checks)
    print(
        json.dumps(
            {
                "shape": list(got.shape),
                "expected_shape": list(expected.shape),
                "max_abs_diff": float((got - expected).abs().max()),
                "max_abs": float(expected.abs().max()),
                **checks,
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
