"""Cold start, written once: the serverless worker and each bulk engine process start the same logging,
compile caches, decoder processes, engine and caption service, in the order these require."""

from __future__ import annotations

import logging
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType

from worker.api.redact import RedactingFormatter
from worker.compile_cache import configure_compile_caches
from worker.config import Settings
from worker.engine import EngineSlot
from worker.job.service import CaptionService
from worker.media.pool import DecodePool, start_decoders

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    """What a started worker process serves jobs with."""

    settings: Settings
    slot: EngineSlot
    decoder: DecodePool
    service: CaptionService


def exit_on_sigterm(message: str, status: int) -> None:
    """Turn SIGTERM into a normal exit with ``status``, so atexit stops the engine's processes (EngineSlot.start
    registers that). Without it they outlive the process: uvicorn (local API) re-raises SIGTERM after its
    own shutdown, and the default action kills the process before atexit runs."""

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s", message)
        sys.exit(status)

    signal.signal(signal.SIGTERM, stop)


def configure_logging(settings: Settings, log_format: str) -> None:
    """Root logging at INFO (DEBUG with DEBUG=true), every line through the redacting formatter."""
    logging.basicConfig(level=logging.DEBUG if settings.debug else logging.INFO)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(RedactingFormatter(log_format))


def bootstrap(settings: Settings, *, log_format: str, decoder_shares: int = 1) -> Runtime:
    """Start everything a worker process needs, now (cold start), once. The engine's failure to start does
    not raise: ``slot.get()`` reports it, and every job does. ``decoder_shares``: worker processes sharing
    this machine's cores for decoding (bulk's engine processes)."""
    configure_logging(settings, log_format)
    # Before anything imports vLLM or torch (the engine, below), which read the cache locations at import.
    configure_compile_caches(settings.compile_cache_dir)
    # Neither failure below raises: decoding falls back to threads, and jobs report the engine's error.
    # The decoder processes start while the engine does, not before it: both mostly wait on processes of
    # their own (the decoders' fork server, the engine core), so their starts overlap.
    with ThreadPoolExecutor(1, thread_name_prefix="decoders-start") as starter:
        decoders = starter.submit(start_decoders, settings, decoder_shares)
        slot = EngineSlot()
        slot.start(settings)
        decoder = decoders.result()
    return Runtime(settings, slot, decoder, CaptionService(settings, slot, decoder))
