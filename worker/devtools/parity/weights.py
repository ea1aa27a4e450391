"""Seeded real weights for a model folder, so transformers and vLLM load the very same tensors.

The tiny folders of worker.devtools.dummy_model have no weights (vLLM fills them at random, each process
differently); parity needs one set both sides read. The family's transformers class is built from the
folder's own config, every parameter drawn from a fixed seed, and the result saved as float32 safetensors
in the checkpoint layout transformers writes (which vLLM's weight-name mappings read).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

# Weights drawn this wide (the checkpoints' own init is 0.02) make the logits spread over several units,
# so the gap between the best and second-best token is far above float32 rounding: a greedy difference is
# then a real difference. Measured on the tiny folders: median top-2 margin about 1 logit.
DEFAULT_STD = 0.2
NORM_JITTER = 0.1  # norm scales are 1 + N(0, NORM_JITTER): not all ones, so a swapped norm would show


def write_seeded_weights(
    folder: Path,
    *,
    seed: int = 0,
    std: float = DEFAULT_STD,
    config_edits: Mapping[str, Any] | None = None,
    model_class: type | None = None,
) -> dict[str, Any]:
    """Draw every parameter of the folder's model from ``seed`` and save them as ``model*.safetensors``
    (float32) into ``folder``. ``config_edits`` (e.g. ``{"text_config.hidden_size": 256}``, dotted keys
    into config.json) are written into the folder's config.json first, for widths the tiny defaults lack.
    ``model_class``: the transformers class to build (default: the config's first architecture).
    Returns what was written: class, parameter count, seed, std and the tensor names."""
    import transformers

    folder = Path(folder)
    if config_edits:
        _edit_config(folder / "config.json", config_edits)
    config = transformers.AutoConfig.from_pretrained(folder)
    cls = model_class or getattr(transformers, config.architectures[0])
    model = cls._from_config(config, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    scales = _norm_scales(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            param.copy_(1.0 + NORM_JITTER * noise if name in scales else std * noise)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        written = sorted(p.name for p in Path(tmp).iterdir() if p.name.startswith("model") and ".safetensors" in p.name)
        for name in written:
            shutil.move(str(Path(tmp) / name), folder / name)
    names = _tensor_names(folder)
    info = {
        "class": cls.__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tensors": len(names),
        "seed": seed,
        "std": std,
        "files": written,
        "config_edits": dict(config_edits or {}),
    }
    log.info("seeded weights for %s: %s", folder, info)
    return info


def _norm_scales(model: torch.nn.Module) -> set[str]:
    """Names of the scale parameters of every normalisation layer (LayerNorm, RMSNorm and their kin)."""
    return {
        f"{module_name}.weight" if module_name else "weight"
        for module_name, module in model.named_modules()
        if "norm" in type(module).__name__.lower() and isinstance(getattr(module, "weight", None), torch.nn.Parameter)
    }


def _edit_config(path: Path, edits: Mapping[str, Any]) -> None:
    config = json.loads(path.read_text())
    for dotted, value in edits.items():
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    path.write_text(json.dumps(config, indent=2) + "\n")


def _tensor_names(folder: Path) -> list[str]:
    from safetensors import safe_open

    names: list[str] = []
    for file in sorted(folder.glob("model*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            names += list(handle.keys())
    return names
