"""RunPod serverless entry point: `python -u handler.py` (see README)."""

if __name__ == "__main__":
    # Imported here, not at the top: vLLM's engine process and the decoder processes start with spawn or
    # a fork server, which re-import this module in every one of them; there it must cost nothing.
    import runpod

    from worker.runpod_handler import build_worker

    runpod.serverless.start(build_worker())
