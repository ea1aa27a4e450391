"""Offline model folders that vLLM can serve with ``load_format="dummy"`` (random weights).

Tests, CI and smoke runs have no Hugging Face access, yet vLLM needs a model folder to read the
architecture, the tokenizer and the processor from. This module writes such a folder from scratch:
the real config layout, special token ids and processor numbers of the family, with a synthetic
byte-level BPE vocabulary in place of the real one (so the folder stays a few MB and nothing is
downloaded). No weight files are written; ``load_format="dummy"`` fills the parameters randomly.

    python -m worker.devtools.dummy_model /tmp/qwen-tiny --family qwen2_5_vl --size tiny

Families (``FAMILIES``), each with a CPU-cheap ``tiny`` and the published size:

    qwen2_vl      tiny, 7b   Qwen/Qwen2-VL-7B-Instruct (also LiveCC-7B's layout)
    qwen2_5_vl    tiny, 7b   Qwen/Qwen2.5-VL-7B-Instruct
    qwen3_vl      tiny, 8b   Qwen/Qwen3-VL-8B-Instruct
    qwen2_5_omni  tiny, 7b   Qwen/Qwen2.5-Omni-7B (vLLM serves its thinker: audio, image, video in)
    video_salmonn2_plus  tiny, 3b, 7b   tsinghua-ee/video-SALMONN2_plus_{3B,7B}_full (worker.models.vllm_plugin);
                  its tiny folder also has seeded random weights under the authors' names (no dummy load)
    tarsier2      tiny, 7b   omni-research/Tarsier2-Recap-7b's layout (worker.models.vllm_plugin); tiny has
                  seeded random weights under the release's names, in shards with an index
    video_salmonn2  tiny, 7b   tsinghua-ee/video-SALMONN-2, the original (LLaVA-OneVision + Whisper; the
                  plugin); tiny has seeded random weights under the authors' names, in shards with an index

Each family's builder lives in its own module under ``worker.devtools.families``; a new family is one
such module plus one ``FAMILIES`` entry here.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from worker.devtools.families.qwen2_5_omni import QWEN2_5_OMNI_CHAT_TEMPLATE, QWEN2_5_OMNI_SIZES, build_qwen2_5_omni
from worker.devtools.families.qwen2_5_vl import QWEN2_5_VL_SIZES, build_qwen2_5_vl
from worker.devtools.families.qwen2_vl import QWEN2_VL_SIZES, build_qwen2_vl
from worker.devtools.families.qwen3_vl import QWEN3_VL_SIZES, build_qwen3_vl
from worker.devtools.families.tarsier2 import TARSIER2_SIZES, build_tarsier2
from worker.devtools.families.tokenizer import QWEN2_5_ADDED_TOKENS, QWEN2_BASE_VOCAB_SIZE, byte_level_alphabet
from worker.devtools.families.video_salmonn2 import VIDEO_SALMONN2_SIZES, build_video_salmonn2
from worker.devtools.families.video_salmonn2_plus import SALMONN_SIZES, build_video_salmonn2_plus, salmonn_weight_shapes

# The entry points, plus the family-module names tests and benchmarks reach through this module.
__all__ = [
    "FAMILIES",
    "QWEN2_5_ADDED_TOKENS",
    "QWEN2_5_OMNI_CHAT_TEMPLATE",
    "QWEN2_BASE_VOCAB_SIZE",
    "Family",
    "build_dummy_model",
    "byte_level_alphabet",
    "cached_dummy_model",
    "main",
    "salmonn_weight_shapes",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    build: Callable[[Path, str], None]  # writes every file into an existing directory
    sizes: tuple[str, ...]


FAMILIES: dict[str, Family] = {
    "qwen2_vl": Family(build=build_qwen2_vl, sizes=tuple(QWEN2_VL_SIZES)),
    "qwen2_5_vl": Family(build=build_qwen2_5_vl, sizes=tuple(QWEN2_5_VL_SIZES)),
    "qwen3_vl": Family(build=build_qwen3_vl, sizes=tuple(QWEN3_VL_SIZES)),
    "qwen2_5_omni": Family(build=build_qwen2_5_omni, sizes=tuple(QWEN2_5_OMNI_SIZES)),
    "video_salmonn2_plus": Family(build=build_video_salmonn2_plus, sizes=tuple(SALMONN_SIZES)),
    "tarsier2": Family(build=build_tarsier2, sizes=tuple(TARSIER2_SIZES)),
    "video_salmonn2": Family(build=build_video_salmonn2, sizes=tuple(VIDEO_SALMONN2_SIZES)),
}


def build_dummy_model(out_dir: Path, family: str = "qwen2_5_vl", size: str = "tiny") -> Path:
    """Write a weightless model folder of ``family``/``size`` into ``out_dir`` and return its path.

    Existing files of the same names are overwritten, so rebuilding into a cached folder is safe.
    Serve it with vLLM's ``load_format="dummy"``.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(sorted(FAMILIES))}")
    spec = FAMILIES[family]
    if size not in spec.sizes:
        raise ValueError(f"unknown size {size!r} for {family}; known: {', '.join(spec.sizes)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spec.build(out_dir, size)
    log.info("wrote dummy %s (%s) model folder to %s", family, size, out_dir)
    return out_dir


def cached_dummy_model(family: str, size: str) -> Path:
    """``build_dummy_model`` into one fixed folder per family and size on this machine (under the temp
    folder). vLLM keys its torch.compile cache by the model's path among the engine settings: benchmarks
    that build their model here reuse the graph an earlier run compiled (30+ s of every engine start on
    an H100) instead of compiling it again for a new temporary path."""
    return build_dummy_model(Path(tempfile.gettempdir()) / "dummy-models" / f"{family}-{size}", family, size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.devtools.dummy_model",
        description="Write an offline model folder (config, tokenizer, processor; no weights) for "
        'vLLM\'s load_format="dummy".',
    )
    parser.add_argument("out_dir", type=Path, help="directory to write (created if missing)")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="qwen2_5_vl")
    all_sizes = sorted({s for f in FAMILIES.values() for s in f.sizes})
    parser.add_argument("--size", choices=all_sizes, default="tiny")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        path = build_dummy_model(args.out_dir, args.family, args.size)
    except ValueError as exc:
        parser.error(str(exc))
    print(path.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
