"""Starting and calling the runpod SDK's local API (`python handler.py --rp_serve_api`) from tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_api(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """A worker serving the local API with ``env``; yields its URL. On exit it is stopped with SIGTERM,
    which must also stop every engine process it started (asserted)."""
    port = free_port()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "handler.py", "--rp_serve_api", "--rp_api_host", "127.0.0.1", "--rp_api_port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"worker exited with {proc.returncode}:\n{log_path.read_text()[-5000:]}")
            try:
                requests.get(f"{url}/docs", timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"worker did not start:\n{log_path.read_text()[-5000:]}")
                time.sleep(2)
        yield url
    finally:
        proc.terminate()
        leftovers = stop_session(proc)
    assert proc.returncode == 0 and not leftovers, (proc.returncode, leftovers, log_path.read_text()[-3000:])


def session_pids(sid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 of /proc/PID/stat: session id
            pids.append(int(stat.parent.name))
    return pids


def stop_session(proc: subprocess.Popen[bytes]) -> list[int]:
    """Wait for the worker to exit; return (and kill) whatever of its session is still running after 60 s."""
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 60
    while (left := session_pids(proc.pid)) and time.monotonic() < deadline:
        time.sleep(1)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left


def runsync(api: str, job_input: dict[str, Any]) -> dict[str, Any]:
    """The /runsync body as it comes: ``output`` is the list of the parts the handler yielded."""
    response = requests.post(f"{api}/runsync", json={"input": job_input}, timeout=600)
    response.raise_for_status()
    return response.json()


def result_of(body: dict[str, Any]) -> dict[str, Any]:
    """The complete result of a finished job: the last part of its output (README, "Output"); a job that
    does not stream has exactly one part."""
    assert body["status"] == "COMPLETED", body
    output = body["output"]
    assert isinstance(output, list) and output and "error" not in output[-1], body
    return output[-1]


def error_of(body: dict[str, Any]) -> dict[str, Any]:
    """A failed job's structured error. On RunPod the job is FAILED with ``error`` a JSON string; the SDK's
    local API (1.10.0) does not check a generator's parts for errors, so there the job is COMPLETED and
    the error is its last (only) part: ``{"error": "<JSON>"}``."""
    assert body["status"] == "COMPLETED", body
    output = body["output"]
    assert isinstance(output, list) and len(output) == 1 and set(output[0]) == {"error"}, body
    return json.loads(output[0]["error"])


