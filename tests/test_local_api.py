"""The runpod SDK's local API (`python handler.py --rp_serve_api`) over real HTTP, real CPU engine."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
from transformers import AutoTokenizer

from tests.local_api import error_of, result_of, runsync, serve_api
from worker.devtools.media import make_corrupt
from worker.media.frame_plan import VisionGeometry, video_tokens
from worker.media.pool import default_workers

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def api_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs") / "api.log"


@pytest.fixture(scope="module")
def api(worker_env: dict[str, str], api_log: Path) -> Iterator[str]:
    # SIGTERM to the worker alone must also stop the engine and decoder processes it started (serve_api
    # asserts it: nothing of its session is left).
    with serve_api(worker_env, api_log) as url:
        yield url


def test_cold_start_warms_up_the_engine_and_starts_the_decoders(api: str, api_log: Path) -> None:
    """What vLLM would build on the first request (the HF processor, the chat template) is built before the
    worker serves, and the decoder processes (one per 4 usable cores, DECODE_THREADS) are running."""
    log = api_log.read_text()
    assert "Multi-modal warmup completed" in log  # vLLM's own line: its processor ran on dummy inputs
    assert "engine warmed up in" in log and "engine warm-up failed" not in log
    assert f"{max(1, default_workers() // 4)} decoder processes ready" in log
    assert log.index("engine warmed up in") < log.index("Uvicorn running")


@pytest.fixture(scope="module")
def clip(video: Callable[..., Path]) -> Path:
    return video("api_clip.mp4", seconds=6.0, fps=10, width=96, height=64, audio="aac")


@pytest.fixture(scope="module")
def expected_text_tokens(tiny_model: Path) -> Callable[[str], int]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def count(prompt: str) -> int:
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(tokenizer(text)["input_ids"]) - 1  # the single <|video_pad|> placeholder is expanded

    return count


def test_runsync_caption_with_honest_metadata(
    api: str, clip: Path, expected_text_tokens: Callable[[str], int], work_dir: Path
) -> None:
    body = runsync(api, {"video": str(clip), "fps": 2.0, "max_frames": 10, "max_tokens": 16, "seed": 1})
    assert len(body["output"]) == 1  # a job that does not stream yields its result only
    out = result_of(body)
    meta = out["metadata"]
    assert isinstance(out["caption"], str)
    assert meta["num_frames"] == 10 and meta["fps_used"] == pytest.approx(10 / 6.0)
    assert meta["frame_timestamps"] == sorted(meta["frame_timestamps"]) and meta["frame_timestamps"][-1] < 6.0
    assert meta["video"]["has_audio"] is True and meta["audio_processed"] is False
    assert 1 <= meta["completion_tokens"] <= 16
    assert set(meta["timings"]) == {"fetch", "decode", "inference", "cpu"}
    assert {"probe", "packet_index", "decode", "resize", "handover"} <= set(meta["timings"]["cpu"])
    # Unset fields come from the model's generation_config.json (repetition_penalty 1.05, top_k 1 there).
    assert meta["sampling"] | {"temperature": 0.7, "top_p": 0.9} == meta["sampling"]
    assert (meta["sampling"]["repetition_penalty"], meta["sampling"]["top_k"]) == (1.05, 1)
    assert (meta["sampling"]["seed"], meta["sampling"]["max_tokens"]) == (1, 16)
    # The planner's token budget is what the engine really got: text + visual tokens, nothing resized.
    width, height = meta["frame_size"]
    visual = video_tokens(10, height, width, VisionGeometry())
    assert meta["prompt_tokens"] == expected_text_tokens("Describe this video in detail.") + visual
    assert list(work_dir.iterdir()) == []


def test_job_sampling_overrides_model_defaults(api: str, clip: Path) -> None:
    job = {"video": str(clip), "max_frames": 2, "max_tokens": 4, "top_k": 5, "repetition_penalty": 1.2,
           "temperature": 0.5, "stop": ["."]}
    sampling = result_of(runsync(api, job))["metadata"]["sampling"]
    assert (sampling["top_k"], sampling["repetition_penalty"], sampling["temperature"]) == (5, 1.2, 0.5)
    assert sampling["stop"] == ["."]
    # Greedy decoding: vLLM drops top_k/top_p, and the metadata says so rather than echoing the request.
    greedy = result_of(runsync(api, job | {"temperature": 0.0}))["metadata"]["sampling"]
    assert (greedy["temperature"], greedy["top_k"]) == (0.0, 0)


def test_base64_and_url_inputs(api: str, clip: Path, tmp_path: Path) -> None:
    import http.server
    import threading
    from functools import partial

    payload = base64.b64encode(clip.read_bytes()).decode()
    for job in ({"video": payload}, {"video": f"data:video/mp4;base64,{payload}"}, {"video_base64": payload}):
        assert result_of(runsync(api, job | {"max_frames": 4, "max_tokens": 8}))["metadata"]["num_frames"] == 4

    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(clip.parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/{clip.name}"
        result_of(runsync(api, {"video": url, "max_frames": 4, "max_tokens": 8}))
    finally:
        httpd.shutdown()


def test_run_then_status(api: str, clip: Path) -> None:
    job = requests.post(f"{api}/run", json={"input": {"video": str(clip), "max_frames": 4, "max_tokens": 8}}, timeout=30)
    job.raise_for_status()
    job_id = job.json()["id"]
    assert job.json()["status"] == "IN_PROGRESS"
    for _ in range(60):
        status = requests.post(f"{api}/status/{job_id}", timeout=600).json()
        if status["status"] in ("COMPLETED", "FAILED"):
            break
        time.sleep(1)
    assert result_of(status)["metadata"]["num_frames"] == 4


def test_eight_concurrent_jobs(api: str, video: Callable[..., Path]) -> None:
    clips = [video(f"conc_{i}.mp4", seconds=2.0 + i, fps=10, width=64, height=48) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(lambda c: runsync(api, {"video": str(c), "max_frames": 4, "max_tokens": 12}), clips))
    durations = [round(result_of(b)["metadata"]["video"]["duration"]) for b in bodies]
    assert durations == [2 + i for i in range(8)]  # each job got its own video back


def test_bad_jobs_between_good_ones(api: str, clip: Path, media_dir: Path, work_dir: Path) -> None:
    text_file = make_corrupt(media_dir / "not_a_video.mp4", "text")
    truncated = make_corrupt(media_dir / "truncated.mp4", "truncated", source=clip)
    jobs: list[tuple[dict[str, Any], str | None]] = [
        ({"video": str(clip), "max_frames": 2, "max_tokens": 4}, None),
        ({"video": str(clip), "fps": 99, "colour": "red"}, "validation_error"),
        ({"video": str(text_file)}, "decode_error"),
        ({"video": str(truncated)}, "decode_error"),
        ({"video": "/etc/passwd"}, "fetch_error"),
        ({"video": "http://127.0.0.1:9/none.mp4"}, "fetch_error"),
        ({"video": "bm90IGEgdmlkZW8="}, "decode_error"),
        ({"video": str(clip), "max_frames": 2, "max_tokens": 4}, None),
    ]
    for job, expected in jobs:
        body = runsync(api, job)
        if expected is None:
            result_of(body)
        else:
            error = error_of(body)
            assert error["type"] == expected, (job, error)
            assert error["message"] and error["traceback"] is None
    validation = error_of(runsync(api, {"video": str(clip), "fps": 99, "colour": "red"}))
    assert {d["field"] for d in validation["details"]} == {"fps", "colour"}
    assert list(work_dir.iterdir()) == []


def test_process_audio_on_a_vision_only_model_warns(api: str, clip: Path) -> None:
    body = runsync(api, {"video": str(clip), "process_audio": True, "max_frames": 2, "max_tokens": 4})
    meta = result_of(body)["metadata"]
    assert meta["audio_processed"] is False and (meta["audio_seconds"], meta["audio_tokens"]) == (0.0, 0)
    assert meta["video"]["audio_seconds"] == pytest.approx(6.0, abs=0.1)
    assert any("process_audio" in w and "no audio input" in w and "qwen2_5_vl" in w for w in meta["warnings"])


def test_image_job(api: str, media_dir: Path, expected_text_tokens: Callable[[str], int]) -> None:
    import numpy as np
    import PIL.Image

    path = media_dir / "photo.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 500, 3), dtype=np.uint8)).save(path)
    for job in ({"image": str(path)}, {"image_base64": base64.b64encode(path.read_bytes()).decode()}):
        meta = result_of(runsync(api, job | {"max_tokens": 4}))["metadata"]
        assert (meta["media_type"], meta["num_frames"], meta["frame_timestamps"]) == ("image", 1, [0.0])
        assert (meta["video"]["width"], meta["video"]["height"], meta["video"]["codec"]) == (500, 300, "png")
        width, height = meta["frame_size"]
        assert width % 28 == 0 and height % 28 == 0 and width > height
        # The image's tokens are exactly the planner's: one temporal step of (height/28) x (width/28).
        visual = video_tokens(1, height, width, VisionGeometry())
        assert meta["prompt_tokens"] == expected_text_tokens("Describe this image in detail.") + visual
    error = error_of(runsync(api, {"image": str(media_dir / "api_clip.mp4")}))
    assert error["type"] == "decode_error" and "not a readable image" in error["message"]


def test_portrait_rotated_video(api: str, video: Callable[..., Path]) -> None:
    path = video("portrait.mp4", seconds=2.0, width=96, height=64, rotation=90)
    meta = result_of(runsync(api, {"video": str(path), "max_frames": 2, "max_tokens": 4}))["metadata"]
    width, height = meta["frame_size"]
    assert height > width and (meta["video"]["width"], meta["video"]["height"]) == (64, 96)
