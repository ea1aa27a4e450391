"""Settings that cannot go wrong silently: look-alike variables are logged at start, QUANTIZATION and
KV_CACHE_DTYPE reach vLLM's engine configuration (and a value vLLM refuses stops the start with a clear
error), a CPU engine gets a KV cache budget that starts, and the decoder layout (DECODE_THREADS,
DECODE_CPUS) and MAX_CONCURRENCY hold the defaults issue 21 measured and refuse what cannot work, and the
engine knobs of its sweep (MAX_NUM_BATCHED_TOKENS, MAX_NUM_SEQS, MM_ENCODER_TP_MODE, SKIP_MM_PROFILING, vLLM's
VLLM_USE_V2_MODEL_RUNNER) reach vLLM. The engine configuration is vLLM's real one; no engine is started (the engine is replaced right where it would be)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

import worker.runpod_handler as runpod_handler
from worker.api.errors import EngineError
from worker.config import Settings, unknown_settings, warn_unknown_settings
from worker.engine import CPU_KV_CACHE_BYTES, Engine, EngineSlot


def test_look_alikes_of_settings_are_unknown_and_the_rest_of_the_environment_is_not() -> None:
    environ = {
        "MAX_FRAME_LIMIT": "50",  # MAX_FRAMES_LIMIT
        "GPU_MEM_UTILIZATION": "0.5",  # GPU_MEMORY_UTILIZATION
        "QUANTISATION": "fp8",  # QUANTIZATION
        "VIDEO_FPS": "2",  # starts like VIDEO_MAX_PIXELS
        "ENABLE_CHUNKED_PREFILL": "false",  # RunPod's vLLM worker has it; this one does not
        "max_frame_limit": "50",  # settings are case-insensitive, so are look-alikes
        # Settings, in any case, and what worker/config.py reads itself.
        "MAX_FRAMES_LIMIT": "50",
        "kv_cache_dtype": "fp8",
        "MODEL_PATH": "",
        "MODEL_BASE": "",
        # Other software's.
        "MAX_JOBS": "4",
        "PATH": "/usr/bin",
        "HF_HOME": "/x",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RUNPOD_POD_ID": "abc",
        "CUDA_VISIBLE_DEVICES": "0",
    }
    assert unknown_settings(environ) == {
        "MAX_FRAME_LIMIT": "MAX_FRAMES_LIMIT",
        "GPU_MEM_UTILIZATION": "GPU_MEMORY_UTILIZATION",
        "QUANTISATION": "QUANTIZATION",
        "VIDEO_FPS": None,
        "ENABLE_CHUNKED_PREFILL": None,
        "max_frame_limit": "MAX_FRAMES_LIMIT",
    }


def test_unknown_variables_are_logged_by_name_never_by_value(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="worker.config"):
        warn_unknown_settings({"MAX_FRAME_LIMIT": "secret-value-1", "VIDEO_FPS": "secret-value-2", "PATH": "/bin"})
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "environment variable MAX_FRAME_LIMIT is not a setting of this worker and is ignored "
        "(did you mean MAX_FRAMES_LIMIT?)",
        "environment variable VIDEO_FPS is not a setting of this worker and is ignored",
    ]
    assert "secret-value" not in caplog.text


def test_the_worker_logs_them_at_start_before_the_engine_and_keeps_starting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seen_at_bootstrap: list[str] = []

    class Started:
        service = object()

    def bootstrap(settings: Settings, **kwargs: Any) -> Started:
        seen_at_bootstrap.extend(r.getMessage() for r in caplog.records)
        return Started()

    monkeypatch.setattr(runpod_handler, "bootstrap", bootstrap)
    monkeypatch.setattr(runpod_handler, "exit_on_sigterm", lambda message, status: None)
    monkeypatch.setattr(runpod_handler, "configure_logging", lambda settings, log_format: None)
    monkeypatch.setenv("MAX_FRAME_LIMIT", "7")
    with caplog.at_level(logging.WARNING, logger="worker.config"):
        config = runpod_handler.build_worker(Settings())
    assert any("MAX_FRAME_LIMIT" in line and "MAX_FRAMES_LIMIT" in line for line in seen_at_bootstrap)
    assert callable(config["handler"])


def test_quantization_settings_are_read_and_blank_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTIZATION", "fp8")
    monkeypatch.setenv("KV_CACHE_DTYPE", "fp8")
    assert Settings().engine_overrides() == {"quantization": "fp8", "kv_cache_dtype": "fp8"}
    monkeypatch.setenv("QUANTIZATION", "")  # how a RunPod template passes a variable left blank
    monkeypatch.setenv("KV_CACHE_DTYPE", " ")
    assert Settings().engine_overrides() == {}


class Built(BaseException):
    """Raised where the engine would start, carrying the configuration vLLM made (no Exception: nothing on
    the way may take it for a failed start)."""


@pytest.fixture
def engine_config(monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> Any:
    """``config(**settings)``: the VllmConfig Engine.build makes for the tiny model, no engine started."""
    from vllm.v1.engine.async_llm import AsyncLLM

    def capture(config: Any, **kwargs: Any) -> Any:
        raise Built(config)

    monkeypatch.setattr(AsyncLLM, "from_vllm_config", staticmethod(capture))
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)

    def build(**settings: Any) -> Any:
        base = {"model_name": str(tiny_model), "load_format": "dummy", "max_model_len": 4096, "enforce_eager": True}
        with pytest.raises(Built) as built:
            Engine.build(Settings(**(base | settings)))
        return built.value.args[0]

    return build


def test_quantization_and_kv_cache_dtype_reach_the_engine_configuration(engine_config: Any) -> None:
    config = engine_config(quantization="fp8", kv_cache_dtype="fp8")
    assert config.model_config.quantization == "fp8" and config.cache_config.cache_dtype == "fp8"
    config = engine_config()
    assert config.model_config.quantization is None and config.cache_config.cache_dtype == "auto"


@pytest.mark.parametrize(
    "settings,named,reason",
    [
        ({"quantization": "fp7"}, "QUANTIZATION=fp7", "Unknown quantization method: fp7"),
        ({"quantization": "awq"}, "QUANTIZATION=awq", "Cannot find the config file for awq"),  # not an AWQ model
        ({"kv_cache_dtype": "fp9"}, "KV_CACHE_DTYPE=fp9", "Input should be 'auto'"),
    ],
)
def test_a_value_vllm_refuses_stops_the_start_with_a_clear_error(
    engine_config: Any, tiny_model: Path, settings: dict[str, str], named: str, reason: str
) -> None:
    with pytest.raises(EngineError) as refused:
        engine_config(**settings)
    message = refused.value.message
    assert message.startswith(f"vLLM rejects the engine settings ({named}): ") and reason in message
    assert "pydantic.dev" not in message and "input_value" not in message  # vLLM's words, not pydantic's dump
    # The worker stays up and every job reports it (EngineSlot keeps a failed start), rather than exiting
    # into RunPod's restart loop.
    slot = EngineSlot()
    base = {"model_name": str(tiny_model), "load_format": "dummy", "max_model_len": 4096}
    slot.start(Settings(**(base | settings)))
    with pytest.raises(EngineError, match=r"failed to start: EngineError: vLLM rejects the engine settings"):
        slot.get()


@pytest.mark.parametrize("family", ["video_salmonn2", "qwen2_5_omni"])
def test_a_plugin_model_without_the_installed_entry_point_stops_the_start_by_name(
    engine_config: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, family: str
) -> None:
    # Without the project installed, vLLM's spawned processes never load the plugins: the original
    # video-SALMONN 2's config is unknown there (seen on the H200 as KeyError 'video_salmonn_2') and
    # Qwen2.5-Omni would quietly run vLLM's own class. The start names the cause and the one command.
    import importlib.metadata

    from worker.devtools.dummy_model import build_dummy_model

    folder = build_dummy_model(tmp_path / family, family, "tiny")
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: [])
    with pytest.raises(EngineError) as refused:
        engine_config(model_name=str(folder))
    message = refused.value.message
    assert "model plugins are not registered" in message
    assert "pip install --no-deps --no-build-isolation -e ." in message
    # The families vLLM serves itself need no plugin: the tiny Qwen2.5-VL still reaches its configuration.
    assert engine_config().model_config.architectures == ["Qwen2_5_VLForConditionalGeneration"]


def test_a_cpu_engine_gets_a_kv_cache_budget_unless_the_deployment_chose(
    engine_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psutil

    budget = engine_config().cache_config.kv_cache_memory_bytes
    assert 0 < budget <= min(CPU_KV_CACHE_BYTES, psutil.virtual_memory().total // 4)
    # The deployment's own choice stands: GPU_MEMORY_UTILIZATION (vLLM's share of the RAM here) ...
    config = engine_config(gpu_memory_utilization=0.3)
    assert config.cache_config.kv_cache_memory_bytes is None and config.cache_config.gpu_memory_utilization == 0.3
    # ... or vLLM's own VLLM_CPU_KVCACHE_SPACE (GiB).
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    assert engine_config().cache_config.kv_cache_memory_bytes == 1 << 30


@pytest.mark.engine
@pytest.mark.timeout(600)
def test_a_quantization_the_platform_cannot_run_fails_the_start_naming_it(worker_env: dict[str, str]) -> None:
    """vLLM accepts fp8 weights on its CPU backend's configuration, then the engine core lacks the kernel: the
    job's error names the setting instead of only "Engine core initialization failed"."""
    import json
    import re
    import subprocess
    import sys

    env = worker_env | {"QUANTIZATION": "fp8"}
    job = json.dumps({"input": {"video": "/tmp/x.mp4"}})
    proc = subprocess.run(
        [sys.executable, "handler.py", "--test_input", job],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    match = re.search(r"failed with error: (\{.*\})\s*$", log, re.M)
    assert match, log[-3000:]
    error = json.loads(match.group(1))
    assert error["type"] == "engine_error" and "failed to start" in error["message"]
    assert "(QUANTIZATION=fp8), which this GPU or platform may not support" in error["message"]


# ---- decoder layout and concurrency (issue 21's measurements) ----


def test_decoder_layout_and_concurrency_defaults_are_the_measured_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.media import pool

    for name in ("MAX_CONCURRENCY", "DECODE_THREADS", "DECODE_WORKERS", "DECODE_CPUS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert (settings.max_concurrency, settings.decode_threads, settings.decode_cpus) == (32, 4, None)
    # One process per 4 usable cores, at least one; DECODE_THREADS=0 (FFmpeg's choice): one per core.
    for cores, processes, threads_zero in [(16, 4, 16), (8, 2, 8), (2, 1, 2), (1, 1, 1)]:
        monkeypatch.setattr(pool, "default_workers", lambda cores=cores: cores)
        assert pool.decoder_layout(settings) == (processes, None)
        assert pool.decoder_layout(settings.model_copy(update={"decode_threads": 0}))[0] == threads_zero
    monkeypatch.setattr(pool, "default_workers", lambda: 16)
    assert pool.decoder_layout(settings, shares=2) == (2, None)  # two engines on one machine share the cores
    assert pool.decoder_layout(settings.model_copy(update={"decode_workers": 3})) == (3, None)


def test_decode_settings_are_read_from_the_environment_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError as SettingsError

    monkeypatch.setenv("DECODE_THREADS", "2")
    monkeypatch.setenv("DECODE_CPUS", " 0-3,8 ")
    monkeypatch.setenv("MAX_CONCURRENCY", "16")
    settings = Settings()
    assert (settings.decode_threads, settings.decode_cpus, settings.max_concurrency) == (2, "0-3,8", 16)
    monkeypatch.setenv("DECODE_CPUS", "")
    assert Settings().decode_cpus is None  # a template's blank variable: unset
    for bad in ("0", "3-1", "a-b", "0-3,", "-2"):
        monkeypatch.setenv("DECODE_CPUS", bad)
        with pytest.raises(SettingsError, match="DECODE_CPUS"):
            Settings()
    monkeypatch.delenv("DECODE_CPUS")
    for name, bad in (("DECODE_THREADS", "-1"), ("DECODE_THREADS", "65"), ("MAX_CONCURRENCY", "0")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(SettingsError):
            Settings()
        monkeypatch.delenv(name)


def test_decode_cpus_pin_the_decoder_processes_to_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from worker.media.pool import DecodePool, decoder_cpus, decoder_layout

    usable = sorted(os.sched_getaffinity(0))
    assert decoder_cpus(None) is None
    assert decoder_cpus("1") == usable[:1] and decoder_cpus(str(len(usable) + 5)) == usable
    assert decoder_cpus(f"{usable[0]},{max(usable) + 100}") == [usable[0]]  # the unusable one left out
    with pytest.raises(ValueError, match="names no CPU"):
        decoder_cpus(f"{max(usable) + 100}-{max(usable) + 101}")  # a single number is a count
    settings = Settings(decode_cpus="1", decode_threads=1)
    workers, cpus = decoder_layout(settings)
    assert (workers, cpus) == (1, usable[:1])  # the count of DECODE_CPUS, not of the machine
    pinned = DecodePool(workers, frame_threads=1, cpus=cpus)
    pinned.start()
    try:
        assert pinned.call(os.sched_getaffinity, 0) == set(usable[:1])
    finally:
        pinned.shutdown()


def test_engine_knobs_for_long_multimodal_prompts_reach_the_engine_configuration(engine_config: Any) -> None:
    # Issue 21 item 5's sweep: MAX_NUM_BATCHED_TOKENS (vLLM 0.26 sizes the encoder cache and budget to it: no
    # knob of their own), MAX_NUM_SEQS, the encoder's data parallelism and its start-up memory profile.
    config = engine_config(max_num_batched_tokens=16384, max_num_seqs=64, mm_encoder_tp_mode="data")
    scheduler, multimodal = config.scheduler_config, config.model_config.multimodal_config
    assert scheduler.max_num_batched_tokens == scheduler.encoder_cache_size == 16384
    assert scheduler.max_num_seqs == 64 and multimodal.mm_encoder_tp_mode == "data"
    assert engine_config(skip_mm_profiling=True).model_config.multimodal_config.skip_mm_profiling is True
    config = engine_config()  # unset: vLLM's own defaults
    assert config.model_config.multimodal_config.mm_encoder_tp_mode == "weights"
    assert config.model_config.multimodal_config.skip_mm_profiling is False


def test_the_model_runner_is_vllms_own_variable(engine_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # VLLM_USE_V2_MODEL_RUNNER reaches vLLM unchanged (as RunPod's vLLM worker passes vLLM's variables), and
    # the worker does not take it for a look-alike of one of its settings.
    assert unknown_settings({"VLLM_USE_V2_MODEL_RUNNER": "0"}) == {}
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "0")
    assert engine_config().use_v2_model_runner is False
    monkeypatch.setenv("VLLM_USE_V2_MODEL_RUNNER", "1")
    from vllm.triton_utils import HAS_TRITON

    if HAS_TRITON:
        assert engine_config().use_v2_model_runner is True
    else:  # vLLM's CPU build: V2 needs Triton, and the start stops saying so
        with pytest.raises(EngineError, match="Model Runner V2 requires Triton"):
            engine_config()


def test_engine_knob_and_warm_up_settings_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    assert Settings().engine_warm_up == "early" and Settings().engine_overrides() == {}
    monkeypatch.setenv("MM_ENCODER_TP_MODE", "")  # a RunPod template's blank variable: unset
    monkeypatch.setenv("SKIP_MM_PROFILING", "true")
    monkeypatch.setenv("ENGINE_WARM_UP", "off")
    assert Settings().engine_overrides() == {"skip_mm_profiling": True} and Settings().engine_warm_up == "off"
    for name, bad in (("MM_ENCODER_TP_MODE", "tensor"), ("ENGINE_WARM_UP", "late"), ("MAX_NUM_SEQS", "0")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValidationError):
            Settings()
        monkeypatch.delenv(name)
