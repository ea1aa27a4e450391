"""Keeping secrets from the environment (HF_TOKEN, RUNPOD_API_KEY, AWS_SECRET_ACCESS_KEY, ...) out of job
errors and the worker log.

Nothing in the worker formats the environment into a message on purpose; this is the second line, for
text we do not control: exception messages of libraries (a Hub client quoting a request), tracebacks.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL", re.IGNORECASE)
# Shorter values ("true", "1", a region name) are settings, not secrets, and would mangle ordinary text.
_MIN_SECRET_LENGTH = 8
MASK = "[redacted]"


def secret_values() -> list[str]:
    """Values of environment variables whose names mark them as secrets, longest first. Read on every
    call: cheap next to anything that fails, and right even when the environment changes."""
    values = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_SECRET_LENGTH}
    return sorted(values, key=len, reverse=True)


def redact(value: Any) -> Any:
    """``value`` with every secret replaced by MASK, through strings, lists and dicts."""
    secrets = secret_values()
    if not secrets:
        return value
    return _redact(value, secrets)


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, MASK)
        return value
    if isinstance(value, dict):
        return {k: _redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_redact(v, secrets) for v in value)
    return value


class RedactingFormatter(logging.Formatter):
    """Formats as usual, tracebacks included, then masks secrets in the finished line."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
