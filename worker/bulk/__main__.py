"""``python -m worker.bulk``: bulk captioning from a JSONL manifest (README, "Bulk captioning")."""

import sys

if __name__ == "__main__":
    # vLLM starts its engine with spawn, which re-imports the main module: work only in the real main.
    from worker.bulk.cli import main

    sys.exit(main())
