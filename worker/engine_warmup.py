"""vLLM's front-end warm-up started the moment vLLM builds its front end, so that it runs while the engine
core process starts (its imports, weights, compile, memory profile) instead of after it: at cold start the
serving process only waits for the engine core then, and the warm-up is otherwise paid in full by the start
or the first job. Imported only where the engine is built: it imports vLLM."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from vllm.renderers.hf import HfRenderer
from vllm.renderers.params import ChatParams
from vllm.renderers.registry import RENDERER_REGISTRY
from vllm.utils.system_utils import get_mp_context

log = logging.getLogger(__name__)

# The renderer mode of Hugging Face tokenizers, which every family this worker serves uses; vLLM's others
# (mistral, deepseek, ...) keep their renderers and warm up after the engine is ready.
RENDERER_MODE = "hf"


class EarlyWarmRenderer(HfRenderer):
    """vLLM's HF renderer, whose warm-up (``BaseRenderer.warmup``: the chat template, then one dummy input
    per modality through the multimodal processor, which builds the model's HF processor) runs in a thread
    from the moment the engine core process is started. AsyncLLM builds its renderer right before it starts
    that process and then blocks until it is ready, so the thread has the serving process to itself meanwhile.
    ``wait_warm`` must return before the first request: warm-up clears the processor cache at its end."""

    def __init__(self, config: Any, tokenizer: Any) -> None:
        super().__init__(config, tokenizer)
        self.warm_up_ok = False
        self.warm_up_seconds: float | None = None
        self._warmed = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if get_mp_context().get_start_method() == "fork":  # vLLM's choice for its engine core (GPU, CUDA idle)
            # Start right after that fork, not before: a child forked while a thread works can inherit the
            # locks that thread held. The callback cannot be removed: it holds the renderer weakly, once.
            ref = weakref.ref(self)
            os.register_at_fork(after_in_parent=lambda: (renderer := ref()) is not None and renderer.start())
        else:  # spawned: the child shares nothing with this process
            self.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start the warm-up thread, once."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._warm_up, name="renderer-warm-up", daemon=True)
                self._thread.start()

    def _warm_up(self) -> None:
        started = time.perf_counter()
        try:
            self.warmup(ChatParams())
            self.warm_up_ok = True
        except Exception:
            log.warning("engine warm-up failed; the first job will pay for the set-up", exc_info=True)
        finally:
            self.warm_up_seconds = time.perf_counter() - started
            self._warmed.set()

    def wait_warm(self) -> bool:
        """Block until the warm-up has ended (starting it, if no fork has yet); whether it succeeded."""
        self.start()
        self._warmed.wait()
        return self.warm_up_ok


@contextlib.contextmanager
def early_warm_up(enabled: bool = True) -> Iterator[None]:
    """Within the block (around building one AsyncLLM), vLLM builds ``EarlyWarmRenderer`` for HF tokenizers;
    other engines of the process (a test's own ``vllm.LLM``, which would not wait for it) keep vLLM's. Set on
    the registry's table directly: ``RENDERER_REGISTRY.register`` warns that it overrides, at every start."""
    table = RENDERER_REGISTRY.renderers
    before = table.get(RENDERER_MODE)
    if enabled:
        table[RENDERER_MODE] = (__name__, EarlyWarmRenderer.__name__)
    try:
        yield
    finally:
        if before is not None:
            table[RENDERER_MODE] = before
