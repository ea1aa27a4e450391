"""The worker's error hierarchy (their wire format: worker/api/wire.py).

Every failure a caller can see is one of these classes; each has a stable ``type`` string that is part
of the public API (README, "Errors"). Anything else that escapes is reported as ``internal_error``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class WorkerError(Exception):
    type: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, details: Any = None, refresh_worker: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        # Ask RunPod to replace this worker after the job (runpod's ``refresh_worker`` output key).
        self.refresh_worker = refresh_worker


class ValidationError(WorkerError):
    """The job input is malformed: unknown field, wrong type, out of range."""

    type = "validation_error"


class FetchError(WorkerError):
    """The media could not be obtained: download failed, path not allowed or missing, bad base64."""

    type = "fetch_error"


class DecodeError(WorkerError):
    """The media was obtained but is not a decodable video."""

    type = "decode_error"


class UnsupportedInputError(WorkerError):
    """The input is valid but this deployment cannot serve it (e.g. it does not fit the model's context)."""

    type = "unsupported_input"


class EngineError(WorkerError):
    """The inference engine failed to start or failed while serving the job."""

    type = "engine_error"


class InternalError(WorkerError):
    type = "internal_error"


ERROR_TYPES: tuple[str, ...] = tuple(
    cls.type for cls in (ValidationError, FetchError, DecodeError, UnsupportedInputError, EngineError, InternalError)
)

