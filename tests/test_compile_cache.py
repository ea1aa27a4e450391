"""Compile caches on the network volume when it can hold them, the local defaults otherwise."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from worker.compile_cache import CACHE_VARIABLES, configure_compile_caches
from worker.config import Settings

REPO = Path(__file__).resolve().parents[1]


def test_usable_volume_gets_every_cache(tmp_path: Path) -> None:
    volume = tmp_path / "runpod-volume"
    volume.mkdir()
    env: dict[str, str] = {}
    decision = configure_compile_caches(volume / "vllm-cache", env, min_free_bytes=1)
    assert decision.location == "volume" and decision.root == volume / "vllm-cache"
    assert env == {
        "VLLM_CACHE_ROOT": str(volume / "vllm-cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(volume / "vllm-cache" / "inductor"),
        "TRITON_CACHE_DIR": str(volume / "vllm-cache" / "triton"),
        "CUDA_CACHE_PATH": str(volume / "vllm-cache" / "cuda-jit"),
    }
    assert all(Path(p).is_dir() for p in env.values())
    assert not list((volume / "vllm-cache").glob(".write-test-*"))  # the probe cleans up


def test_variables_the_user_set_are_kept(tmp_path: Path) -> None:
    (tmp_path / "vol").mkdir()
    env = {"TRITON_CACHE_DIR": "/mine/triton", "VLLM_CACHE_ROOT": "/mine/vllm"}
    decision = configure_compile_caches(tmp_path / "vol" / "cache", env, min_free_bytes=1)
    assert env["TRITON_CACHE_DIR"] == "/mine/triton" and env["VLLM_CACHE_ROOT"] == "/mine/vllm"
    assert env["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "vol" / "cache" / "inductor")
    assert set(decision.kept_variables) == {"TRITON_CACHE_DIR", "VLLM_CACHE_ROOT"}
    assert set(decision.set_variables) == {"TORCHINDUCTOR_CACHE_DIR", "CUDA_CACHE_PATH"}


def test_missing_volume_leaves_the_defaults(tmp_path: Path) -> None:
    env: dict[str, str] = {"HOME": "/root"}
    decision = configure_compile_caches(tmp_path / "runpod-volume" / "vllm-cache", env, min_free_bytes=1)
    assert decision.location == "local" and "no volume" in decision.reason
    assert env == {"HOME": "/root"}
    assert not (tmp_path / "runpod-volume").exists()  # nothing made on the container's own disk


def test_full_volume_leaves_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "vol").mkdir()
    free = shutil.disk_usage(tmp_path).free
    env: dict[str, str] = {}
    decision = configure_compile_caches(tmp_path / "vol" / "cache", env, min_free_bytes=free + 2**40)
    assert decision.location == "local" and "free" in decision.reason
    assert env == {}


def test_disabled_leaves_the_defaults() -> None:
    env: dict[str, str] = {}
    assert configure_compile_caches(None, env).location == "local"
    assert env == {}


_IN_NAMESPACE = """
import json, sys
from pathlib import Path
from worker.compile_cache import configure_compile_caches
env = {}
d = configure_compile_caches(Path(sys.argv[1]), env, min_free_bytes=int(sys.argv[2]))
print(json.dumps({"location": d.location, "reason": d.reason, "env": env}))
"""


def _in_private_mount(tmp_path: Path, mount: str, cache: str, min_free: int = 1) -> dict:
    """Runs configure_compile_caches in a private mount namespace (unshare) over a real read-only or
    tiny filesystem; the mount vanishes with the process."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    volume = tmp_path / "volume"
    volume.mkdir()
    script = f"{mount} && exec {sys.executable} -c '{_IN_NAMESPACE}' {volume / cache} {min_free}"
    proc = subprocess.run(
        ["unshare", "--map-root-user", "--mount", "sh", "-c", script.replace("VOL", str(volume))],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if proc.returncode != 0 and ("unshare" in proc.stderr or "mount" in proc.stderr):
        pytest.skip(f"no private mount namespace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_read_only_volume_leaves_the_defaults(tmp_path: Path) -> None:
    got = _in_private_mount(tmp_path, "mount --bind -o ro VOL VOL", "vllm-cache")
    assert got["location"] == "local" and "not writable" in got["reason"] and "Read-only" in got["reason"]
    assert got["env"] == {}


def test_volume_without_room_for_a_file_leaves_the_defaults(tmp_path: Path) -> None:
    # A 64 KiB tmpfs filled to the brim: even the probe file cannot be written.
    fill = "dd if=/dev/zero of=VOL/fill bs=4k 2>/dev/null; true"
    got = _in_private_mount(tmp_path, f"mount -t tmpfs -o size=64k tmpfs VOL && {fill}", "vllm-cache")
    assert got["location"] == "local" and got["env"] == {}


def test_settings_read_the_cache_dir_and_engine_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().compile_cache_dir == Path("/runpod-volume/vllm-cache")
    assert Settings().engine_overrides() == {}  # vLLM's own defaults unless the deployment sets one
    monkeypatch.setenv("COMPILE_CACHE_DIR", "")
    monkeypatch.setenv("ENABLE_PREFIX_CACHING", "false")
    monkeypatch.setenv("MAX_NUM_BATCHED_TOKENS", "8192")
    monkeypatch.setenv("MM_PROCESSOR_CACHE_GB", "0")
    settings = Settings()
    assert settings.compile_cache_dir is None
    assert settings.engine_overrides() == {
        "enable_prefix_caching": False,
        "max_num_batched_tokens": 8192,
        "mm_processor_cache_gb": 0.0,
    }


def test_the_handler_sets_the_caches_before_anything_imports_vllm_or_torch() -> None:
    # build_worker calls configure_compile_caches first; that only works while nothing before it has
    # imported vLLM or torch (they read the cache variables at import).
    code = "import sys, handler, worker.runpod_handler; print(sorted({'vllm', 'torch', 'triton'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_every_cache_variable_is_documented() -> None:
    readme = (REPO / "README.md").read_text()
    assert "COMPILE_CACHE_DIR" in readme
    for name in CACHE_VARIABLES:
        assert name in readme
