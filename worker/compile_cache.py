"""Where vLLM, torch.compile (Inductor), Triton and the CUDA driver keep what they compile at start.

A bare worker spends minutes at its first start compiling (torch.compile graphs, Triton kernels, CUDA
graphs' kernels); with the results cached a later start skips most of it. A serverless container's own
disk starts empty every time, so the caches go to the network volume (/runpod-volume) when it is there
and can be written, and stay on the local disk (the libraries' defaults) when it is missing, read-only
or nearly full. Must run before vLLM or torch is imported: they read these variables at import.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Variable -> folder under the cache root. VLLM_CACHE_ROOT is the root itself: it holds vLLM's
# torch.compile artefacts (vLLM points Inductor and Triton inside it while compiling the model). The
# others catch what is compiled outside that window: Triton kernels of vLLM's own ops, Inductor's other
# graphs, and the CUDA driver's PTX JIT of kernels shipped without code for this GPU.
CACHE_VARIABLES: dict[str, str] = {
    "VLLM_CACHE_ROOT": "",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "TRITON_CACHE_DIR": "triton",
    "CUDA_CACHE_PATH": "cuda-jit",
}
# Compiled artefacts of a 7B model take a few hundred MB; below this much free space the volume is
# treated as full rather than risk a start that fails half-way through writing.
MIN_FREE_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class CacheDecision:
    location: str  # "volume", or "local" (the libraries' defaults on the container's disk)
    root: Path | None  # the cache root on the volume, when used
    reason: str
    set_variables: dict[str, str] = field(default_factory=dict)  # what this call put in the environment
    kept_variables: tuple[str, ...] = ()  # already set by the user: left as they were


def configure_compile_caches(
    cache_dir: Path | None,
    env: MutableMapping[str, str] | None = None,
    *,
    min_free_bytes: int = MIN_FREE_BYTES,
) -> CacheDecision:
    """Point the compile caches at ``cache_dir`` (COMPILE_CACHE_DIR, normally on /runpod-volume) when it
    can be used; otherwise leave the defaults. Variables the user set are never changed."""
    env = os.environ if env is None else env
    kept = tuple(name for name in CACHE_VARIABLES if env.get(name))
    if cache_dir is None:
        return CacheDecision("local", None, "COMPILE_CACHE_DIR is empty", kept_variables=kept)
    problem = _unusable(cache_dir, min_free_bytes)
    if problem:
        log.info("compile caches stay on the local disk: %s", problem)
        return CacheDecision("local", None, problem, kept_variables=kept)
    chosen = {
        name: str(cache_dir / sub if sub else cache_dir) for name, sub in CACHE_VARIABLES.items() if name not in kept
    }
    for name, path in chosen.items():
        Path(path).mkdir(parents=True, exist_ok=True)
        env[name] = path
    log.info("compile caches in %s%s", cache_dir, f" (kept the user's {', '.join(kept)})" if kept else "")
    return CacheDecision("volume", cache_dir, "usable", set_variables=chosen, kept_variables=kept)


def _unusable(cache_dir: Path, min_free_bytes: int) -> str | None:
    """Why ``cache_dir`` cannot hold the caches, or None. Its parent (the volume's mount point) must
    exist: without a volume the folder would land on the container's disk, which the defaults use anyway.
    Then it must be writable and have room."""
    if not cache_dir.parent.is_dir():
        return f"no volume at {cache_dir.parent}"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # A real write: a read-only mount, missing permissions and a full disk all fail here.
        with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        return f"{cache_dir} is not writable ({exc.strerror or exc})"
    free = shutil.disk_usage(cache_dir).free
    if free < min_free_bytes:
        return f"{cache_dir} has {free / 1024**3:.1f} GiB free, less than {min_free_bytes / 1024**3:.1f} GiB"
    return None
