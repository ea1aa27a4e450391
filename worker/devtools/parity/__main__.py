"""Run a parity spec in its own process (vLLM builds its engine under ``__main__``) and write the reports:

    python -m worker.devtools.parity SPEC.json OUT.json

SPEC: ``{"settings": {Settings fields; model_name required}, "cases": [{"name", "job", "processor"?}],
"family"?: str, "device"?: "cpu", "min_tokens"?: 16}``. OUT: ``{"reports": [CaseReport.to_json()],
"table": str}``. tests/test_parity.py runs it; bench/parity.py is the command for people.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from worker.config import Settings
from worker.devtools.parity.compare import json_default, table
from worker.devtools.parity.harness import Case, run_parity


def main(argv: list[str]) -> int:
    spec_path, out_path = Path(argv[0]), Path(argv[1])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spec = json.loads(spec_path.read_text())
    cases = [Case(c["name"], c["job"], c.get("processor", {})) for c in spec["cases"]]
    reports = run_parity(
        Settings(**spec["settings"]),
        cases,
        device=spec.get("device", "cpu"),
        min_tokens=spec.get("min_tokens", 16),
        family=spec.get("family"),
    )
    text = table(reports)
    logging.getLogger(__name__).info("parity:\n%s", text)
    payload = {"reports": [r.to_json() for r in reports], "table": text}
    out_path.write_text(json.dumps(payload, default=json_default))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
