"""Hypothesis-generated job inputs through the real handler path (runpod's run_job -> our handler ->
CaptionService: validation, fetching, PyAV decoding, planning, the adapter and the model's tokenizer),
with a fake engine in place of vLLM. The real-engine pass over the local API is in
test_reliability_api.py."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import PIL.Image
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runpod.serverless.modules.rp_job import run_job, run_job_generator

from tests.fakes import FakeEngine, FakeEngineSlot, load_tokenizer
from tests.fuzz import Sources, job_inputs
from worker.devtools.media import make_corrupt
from worker.config import Settings
from worker.api.errors import ERROR_TYPES
from worker.job.service import CaptionService
from worker.api.redact import MASK, RedactingFormatter
from worker.runpod_handler import make_handler, make_stream_handler
from worker.api.result import BatchResult, CaptionResult

FUZZ_EXAMPLES = 2000
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    return load_tokenizer(tiny_model)


@pytest.fixture(scope="module")
def sources(clip_for_sources: Path, media_dir: Path, work_dir: Path, hostile_server: str) -> Sources:
    text = make_corrupt(media_dir / "fuzz_text.mp4", "text")
    truncated = make_corrupt(media_dir / "fuzz_truncated.mp4", "truncated", source=clip_for_sources)
    empty = make_corrupt(media_dir / "fuzz_empty.mp4", "zero")
    outside_link = media_dir / "fuzz_link_to_passwd.mp4"
    if not outside_link.is_symlink():
        outside_link.symlink_to("/etc/passwd")
    image = media_dir / "fuzz_image.png"
    PIL.Image.new("RGB", (80, 60), (200, 30, 30)).save(image)
    return Sources(
        good_path=str(clip_for_sources),
        good_image=str(image),
        bad_paths=(
            str(text),
            str(truncated),
            str(empty),
            str(outside_link),
            str(media_dir),
            str(work_dir),
            f"{work_dir}/job-guess/input.bin",
            str(media_dir / "missing.mp4"),
        ),
        url_base=hostile_server,
        good_base64=base64.b64encode(clip_for_sources.read_bytes()).decode(),
    )


def worker_settings(media_dir: Path, work_dir: Path, **overrides: Any) -> Settings:
    return Settings(
        allowed_media_roots=[media_dir],
        work_dir=work_dir,
        download_timeout=3.0,
        max_download_bytes=2 * 1024**2,
        max_base64_bytes=4 * 1024**2,
        allow_private_urls=True,  # the hostile server is on 127.0.0.1
        **overrides,
    )


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def run_like_runpod(loop: asyncio.AbstractEventLoop, handler: Callable[..., Any], job_input: Any) -> dict[str, Any]:
    """What runpod-python does with a job (rp_job.run_job), and the JSON its local API would send back
    (Starlette: ensure_ascii=False, allow_nan=False, UTF-8): both must work for every input."""
    result = loop.run_until_complete(run_job(handler, {"id": "fuzz-job", "input": job_input}))
    json.dumps(result, ensure_ascii=False, allow_nan=False).encode("utf-8")
    return result


def outcome(result: dict[str, Any]) -> str:
    """The error type of a failed job (checked to be one of ours) or "ok" (checked to be a CaptionResult)."""
    if "error" in result:
        error = json.loads(result["error"])  # runpod's own "Captured Handler Exception" has no "type"
        assert error["type"] in ERROR_TYPES and error["message"], error
        assert error["traceback"] is None, error
        return error["type"]
    CaptionResult.model_validate(result["output"])
    assert result["output"]["caption"] == "a fake caption"
    return "ok"


def test_fuzzed_inputs_give_structured_errors_or_results_fake_engine(
    sources: Sources, tokenizer: Any, media_dir: Path, work_dir: Path, loop: asyncio.AbstractEventLoop
) -> None:
    engine = FakeEngine(tokenizer)
    handler = make_handler(CaptionService(worker_settings(media_dir, work_dir), FakeEngineSlot(engine)))
    seen: Counter[str] = Counter()

    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(job_input=job_inputs(sources))
    def one(job_input: Any) -> None:
        kind = outcome(run_like_runpod(loop, handler, job_input))
        assert kind != "internal_error", job_input
        seen[kind] += 1
        assert not list(work_dir.iterdir())

    one()
    print(f"\nfuzz (fake engine): {sum(seen.values())} inputs: {dict(sorted(seen.items()))}")
    assert sum(seen.values()) >= FUZZ_EXAMPLES
    assert seen["ok"] == engine.requests > 0 and seen["validation_error"] > 0 and seen["fetch_error"] > 0
    # Still serving: a good job after all that.
    good = {"video": sources.good_path, "max_frames": 4, "prompt": "What happens?"}
    assert outcome(run_like_runpod(loop, handler, good)) == "ok"


def test_internal_errors_hide_details_unless_debug_fake_engine(
    tokenizer: Any, media_dir: Path, work_dir: Path, clip_for_sources: Path, loop: asyncio.AbstractEventLoop
) -> None:
    failing = FakeEngine(tokenizer, fail_with=RuntimeError("boom at /opt/internal/state.py"))
    job = {"video": str(clip_for_sources), "max_frames": 2}
    for debug in (False, True):
        service = CaptionService(worker_settings(media_dir, work_dir, debug=debug), FakeEngineSlot(failing))
        error = json.loads(run_like_runpod(loop, make_handler(service), job)["error"])
        assert error["type"] == "internal_error"
        if debug:
            assert "boom at /opt/internal" in error["message"]
            assert "Traceback (most recent call last)" in error["traceback"] and "RuntimeError" in error["traceback"]
        else:
            assert error == {"type": "internal_error", "message": "internal error: RuntimeError", "traceback": None}


SECRETS = {
    "HF_TOKEN": "hf_fuzzSecretToken1234567890",
    "RUNPOD_API_KEY": "rpa_fuzzSecretApiKey0987654321",
    "AWS_SECRET_ACCESS_KEY": "aws/fuzzSecretAccessKey+abcdef",
}


def test_secrets_never_in_errors_or_logs_fake_engine(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    tokenizer: Any,
    media_dir: Path,
    work_dir: Path,
    hostile_server: str,
    clip_for_sources: Path,
    loop: asyncio.AbstractEventLoop,
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    # Credentials a caller puts in a URL are secrets too: never echoed in errors or logs.
    url_secrets = ("userpw0secret", "querysig0secret")
    stream = io.StringIO()
    log_handler = logging.StreamHandler(stream)
    log_handler.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(log_handler)
    caplog.set_level(logging.DEBUG)
    outputs: list[str] = []
    try:
        jobs = [
            {"video": f"http://u:{url_secrets[0]}@127.0.0.1:9/v.mp4"},
            {"video": f"{hostile_server}/missing?X-Amz-Signature={url_secrets[1]}"},
            {"video_url": f"{hostile_server}/redirect-file?sig={url_secrets[1]}"},
            {"video": f"{hostile_server}/clip.mp4?sig={url_secrets[1]}", "max_frames": 2},
            {"video": "/nope/" + SECRETS["HF_TOKEN"]},  # a caller echoing a secret gets it masked back
            {"video": str(clip_for_sources), "max_frames": 2, "fps": "fast"},
        ]
        for debug in (False, True):
            # The failing engine quotes a secret in its message, as a library's exception might.
            engine = FakeEngine(tokenizer, fail_with=RuntimeError(f"401 Unauthorized for {SECRETS['HF_TOKEN']}"))
            for fake in (FakeEngine(tokenizer), engine):
                service = CaptionService(worker_settings(media_dir, work_dir, debug=debug), FakeEngineSlot(fake))
                for job in jobs:
                    outputs.append(json.dumps(run_like_runpod(loop, make_handler(service), job)))
    finally:
        root.removeHandler(log_handler)
    output_text, log_text = "\n".join(outputs), stream.getvalue()
    assert "401 Unauthorized for " + MASK in output_text  # the debug message, masked
    assert "fetch_error" in output_text and "internal_error" in output_text
    for secret in (*SECRETS.values(), *url_secrets):
        assert secret not in output_text
        assert secret not in log_text
    for secret in url_secrets:  # not even in the raw records, before the formatter masks env secrets
        assert secret not in caplog.text


STREAM_EXAMPLES = 500
# Merged into generated inputs (when they are objects) so the streaming paths get fuzzed too.
STREAM_OPTIONS: list[dict[str, Any]] = [
    {},
    {"stream": True},
    {"stream": True, "mode": "chunked", "chunk_seconds": 1.0, "combine": "concat"},
]


def run_generator_like_runpod(
    loop: asyncio.AbstractEventLoop, handler: Callable[..., Any], job_input: Any
) -> list[dict[str, Any]]:
    """What runpod-python does with a generator handler (rp_job.run_job_generator; the output RunPod and
    the local API return is the list of the parts' outputs), each part as JSON the local API would send."""

    async def collect() -> list[dict[str, Any]]:
        return [part async for part in run_job_generator(handler, {"id": "fuzz-job", "input": job_input})]

    parts = loop.run_until_complete(collect())
    for part in parts:
        json.dumps(part, ensure_ascii=False, allow_nan=False).encode("utf-8")
    return parts


def terminal_outcome(parts: list[dict[str, Any]]) -> str:
    """Exactly one terminal part, the last: every part before it a streamed segment or batch item."""
    assert parts and all(set(p) == {"output"} for p in parts), parts  # no SDK-level "handler:" error
    *streamed, last = (p["output"] for p in parts)
    for part in streamed:
        assert set(part) in ({"segment", "num_chunks"}, {"item", "result"}), part
    if "error" in last:
        return outcome(last)
    assert not {"segment", "item"} & set(last), last
    if "results" in last:
        BatchResult.model_validate(last)
    else:
        CaptionResult.model_validate(last)
        assert "fake caption" in last["caption"], last  # chunked "concat": timestamped segment lines
    return "ok"


def test_fuzzed_inputs_through_the_generator_handler_end_in_one_terminal_part_fake_engine(
    sources: Sources, tokenizer: Any, media_dir: Path, work_dir: Path, loop: asyncio.AbstractEventLoop
) -> None:
    """The handler as RunPod and the local API run it (an async generator): whatever the input, the
    parts end with exactly one result or error, and nothing after it."""
    service = CaptionService(worker_settings(media_dir, work_dir), FakeEngineSlot(FakeEngine(tokenizer)))
    handler = make_stream_handler(service, {}, progress=False)
    seen: Counter[str] = Counter()

    @settings(max_examples=STREAM_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(job_input=job_inputs(sources), options=st.sampled_from(STREAM_OPTIONS))
    def one(job_input: Any, options: dict[str, Any]) -> None:
        if isinstance(job_input, dict):
            job_input = job_input | options
        kind = terminal_outcome(run_generator_like_runpod(loop, handler, job_input))
        assert kind != "internal_error", job_input
        seen[kind] += 1
        assert not list(work_dir.iterdir())

    one()
    # Streams that surely have several parts: 3 one-second segments, then 2 batch items, each then the result.
    chunked = {"video": sources.good_path, "stream": True, "mode": "chunked", "chunk_seconds": 1.0}
    parts = run_generator_like_runpod(loop, handler, chunked | {"combine": "concat", "max_frames": 2})
    assert terminal_outcome(parts) == "ok" and len(parts) > 2, parts
    batch = {"videos": [sources.good_path, "/nowhere.mp4"], "stream": True, "max_frames": 2}
    parts = run_generator_like_runpod(loop, handler, batch)
    assert terminal_outcome(parts) == "ok" and len(parts) == 3, parts
    print(f"\nfuzz (generator handler, fake engine): {sum(seen.values())} inputs: {dict(sorted(seen.items()))}")
    assert sum(seen.values()) >= STREAM_EXAMPLES
