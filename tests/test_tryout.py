"""The README's CPU try-out, exactly as written: its first command is the test environment's setup (which
this suite runs in), its second one is run here as it stands, in an environment with none of the worker's
settings (GPU_MEMORY_UTILIZATION left unset, as a new user leaves it)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path

import pytest

from worker.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def tryout_commands() -> tuple[str, str]:
    """The README's try-out block (the bash block that runs setup_test_env.sh alone first): that first line,
    and the rest of the block as written."""
    readme = (ROOT / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        setup, _, rest = block.partition("\n")
        if setup.strip() == "bash setup_test_env.sh":
            return setup.strip(), rest
    raise AssertionError("README has no try-out block starting with `bash setup_test_env.sh`")


def test_the_readme_tryout_is_the_test_setup_then_one_command() -> None:
    setup, serve = tryout_commands()
    assert setup == "bash setup_test_env.sh"
    lines = serve.replace("\\\n", " ").strip().splitlines()
    assert len(lines) == 1, "one command after the setup"
    assert "handler.py --test_input" in lines[0] and "LOAD_FORMAT=dummy" in lines[0]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash setup_test_env.sh" in ci  # the suite runs after exactly that setup


@pytest.mark.engine
@pytest.mark.timeout(900)
def test_the_readme_cpu_tryout_serves_the_tiny_model() -> None:
    _, serve = tryout_commands()
    settings = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in settings and k != "VLLM_CPU_KVCACHE_SPACE"}
    proc = subprocess.run(["bash", "-c", serve], cwd=ROOT, env=env, capture_output=True, text=True, timeout=840)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    match = re.search(r"Job result: (\{.*\})\s*$", log, re.M)
    assert match, log[-3000:]
    output = ast.literal_eval(match.group(1))["output"]
    assert isinstance(output["caption"], str) and output["metadata"]["completion_tokens"] >= 1
    assert "GPU_MEMORY_UTILIZATION unset: KV cache of" in log  # the CPU default chose the budget
