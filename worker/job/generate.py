"""Talking to the engine for a job: its sampling parameters, one request sent to whichever engine is live,
token counts, and the answer read back as JSON when the job asked for structured output.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from worker.api.schema import CaptionRequest
from worker.engine import Engine, Generation
from worker.job.context import JobContext


def sampling_params(request: CaptionRequest) -> dict[str, Any]:
    """The request's sampling parameters as the engine takes them (those left unset are the model's).
    ``top_p`` 0 (the video-SALMONN 2 guide's range starts there) keeps only the likeliest token: greedy
    decoding, which vLLM spells temperature 0 (its top_p must be above 0)."""
    greedy = request.top_p == 0.0
    params: dict[str, Any] = {
        "temperature": 0.0 if greedy else request.temperature,
        "top_p": 1.0 if greedy else request.top_p,
        "max_tokens": request.max_tokens,
        "stop": request.stop_list,
    }
    optional = {"top_k": request.top_k, "repetition_penalty": request.repetition_penalty, "seed": request.seed}
    params.update({k: v for k, v in optional.items() if v is not None})
    return params


async def generate(job: JobContext, inputs: dict[str, Any], json_schema: dict[str, Any] | None) -> Generation:
    """One engine request of the job."""
    # The engine may have died and been rebuilt since the job began; a request not yet in it waits for
    # the new one rather than failing with the old. The adapter and limits are the same.
    live = await job.engines.acquire()
    # vLLM request ids must be unique among requests in flight; a retried RunPod job keeps its id.
    request_id = f"{job.job_id}-{uuid.uuid4().hex[:8]}"
    if json_schema is None:
        return await live.generate(inputs, sampling_params(job.request), request_id)
    return await live.generate(inputs, sampling_params(job.request), request_id, json_schema)


def count_tokens(engine: Engine, text: str) -> int:
    """Tokens of ``text`` as the model reads it (no special tokens added). Blocking for long texts."""
    return len(engine.tokenizer.encode(text, add_special_tokens=False))


def parse_structured(request: CaptionRequest, generation: Generation, warnings: list[str], what: str) -> Any:
    """The answer as JSON when the job gave a json_schema, else None; None with a warning when it is cut
    or not JSON."""
    if request.json_schema is None:
        return None
    try:
        return json.loads(generation.text)
    except json.JSONDecodeError:
        reason = "cut at max_tokens" if generation.finish_reason == "length" else "not valid JSON"
        warnings.append(f"json_schema: {what} is {reason}; structured is null")
        return None
