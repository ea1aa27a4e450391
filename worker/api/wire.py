"""The one owner of a job's output on the wire: the structured error, how it travels through RunPod's API
and back, and ``refresh_worker``. Everything else passes ``JobOutput`` objects around.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from typing import Any

from worker.api.errors import InternalError, WorkerError
from worker.api.redact import redact

# The error type a client gives an answer that is not one of the worker's own errors (README, "Errors").
ENDPOINT_ERROR = "endpoint_error"


@dataclass(frozen=True)
class JobOutput:
    """A job's complete output: its result, or ``{"error": {...}}``. ``refresh_worker`` asks RunPod for a
    new worker after the job (the engine died and could not be rebuilt); it never enters ``body``."""

    body: dict[str, Any]
    refresh_worker: bool = False

    @property
    def error_type(self) -> str | None:
        return error_type(self.body)


def error_payload(exc: BaseException, *, debug: bool) -> dict[str, Any]:
    """The ``{"error": {...}}`` body a job returns for ``exc``."""
    if isinstance(exc, WorkerError):
        body: dict[str, Any] = {"type": exc.type, "message": exc.message}
        if exc.details is not None:
            body["details"] = exc.details
    else:
        # Unexpected exceptions may carry internals in their text; the type name is enough for a caller
        # and the full story is in the worker log.
        body = {"type": InternalError.type, "message": f"internal error: {type(exc).__name__}"}
        if debug:
            body["message"] = f"internal error: {type(exc).__name__}: {exc}"
    body["traceback"] = "".join(traceback.format_exception(exc)) if debug else None
    return {"error": redact(body)}


def error_type(output: Any) -> str | None:
    """The ``type`` of the structured error in ``output`` (a result, error body or bulk record), else None."""
    error = output.get("error") if isinstance(output, dict) else None
    if error is None:
        return None
    return error.get("type", "?") if isinstance(error, dict) else "?"


def to_runpod(part: dict[str, Any], *, refresh_worker: bool = False) -> dict[str, Any]:
    """One output part as the runpod SDK takes it. RunPod marks a job FAILED when the output has "error",
    and its API carries that error as a string (the SDK's local API rejects anything else), so the
    structured error travels as JSON text: ``parse_error(response["error"])`` gives it back."""
    wired = {"error": json.dumps(part["error"])} if "error" in part else dict(part)
    if refresh_worker:
        # A coroutine handler's output key; runpod turns it into "stopPod" (see runpod_handler for generators).
        wired["refresh_worker"] = True
    return wired


def parse_error(error: Any) -> dict[str, Any]:
    """The worker's ``{"type", "message", ...}`` from a RunPod answer's error, where it travels as JSON text;
    anything else (a gateway's message, RunPod's own failure) becomes an ``endpoint_error``."""
    if isinstance(error, str):
        try:
            parsed = json.loads(error)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and "type" in parsed:
            return parsed
        return {"type": ENDPOINT_ERROR, "message": error}
    if isinstance(error, dict) and "type" in error:
        return error
    return {"type": ENDPOINT_ERROR, "message": json.dumps(error)[:1000]}
