"""RunPod serverless entry point: `python -u handler.py` (see README)."""

import runpod

from worker.runpod_handler import build_worker

if __name__ == "__main__":
    # vLLM starts its engine process with spawn, which re-imports this module: build only in the parent.
    runpod.serverless.start(build_worker())
