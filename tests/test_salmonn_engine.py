"""video-SALMONN 2+ on the real CPU engine (tests/salmonn_engines.py, one engine at a time): without sound it
is Qwen2.5-VL, token for token; with sound the prompt grows by 60 tokens per started 30 s, and the same
frames with different sound are never mixed up by the processor cache."""

from __future__ import annotations

from typing import Any

import pytest

from tests.engine_script import run_script
from worker.devtools.dummy_model import build_dummy_model

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("salmonn-engines")
    model = build_dummy_model(work / "tiny-salmonn", "video_salmonn2_plus", "tiny")
    out = work / "runs.json"
    return run_script(["tests.salmonn_engines", str(model), str(out)], out, timeout=840)


def test_visual_only_is_native_qwen2_5_vl(engine_runs: dict[str, Any]) -> None:
    (native,) = engine_runs["native"]
    ours = engine_runs["ours"][0]
    assert ours["prompt_tokens"] == native["prompt_tokens"]
    assert ours["tokens"] == native["tokens"] and len(ours["tokens"]) == 8


def test_audio_adds_60_tokens_per_started_30_s(engine_runs: dict[str, Any]) -> None:
    silent, two_s, thirty_one_s, quieter = engine_runs["ours"]
    assert two_s["prompt_tokens"] - silent["prompt_tokens"] == 60
    assert thirty_one_s["prompt_tokens"] - silent["prompt_tokens"] == 120
    # Same frames, same length, different sound: its own processed item, not a cached one.
    assert quieter["prompt_tokens"] == two_s["prompt_tokens"]
    assert quieter["tokens"] != two_s["tokens"] or thirty_one_s["tokens"] != two_s["tokens"]
