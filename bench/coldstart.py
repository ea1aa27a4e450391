"""Cold start: process start -> first caption ready, with empty compile caches and with caches pre-built.

    python bench/coldstart.py                        # 7B-shaped dummy model, 2 starts (empty, then pre-built)
    python bench/coldstart.py --model /models/Qwen2.5-VL-7B-Instruct --load-format auto --runs 3
    VLLM_CPU_KVCACHE_SPACE=1 python bench/coldstart.py --size tiny --enforce-eager \\
        --max-model-len 4096                         # CPU smoke run (1 GiB KV cache)

Each start is `python handler.py --test_input "$(cat test_input.json)"` in a fresh process, exactly what
the README's first command runs, timed from the spawn to the "Job result" line. The compile caches go
where the worker puts them on RunPod (COMPILE_CACHE_DIR on a volume: worker/compile_cache.py), here a
fresh temporary "volume"; HOME and XDG_CACHE_HOME point into it too, so no cache of an earlier run on
this machine is seen (HF_HOME is kept: the weights are not what is measured). The first start fills
the caches, the later ones reuse them. Ends with one line `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RESULT_LINE = re.compile(r"Job result: (\{.*\})\s*$")
ENGINE_READY = re.compile(r"engine ready in ([0-9.]+) s")


def _stream(pipe: IO[str], lines: list[tuple[float, str]], started: float, echo: bool) -> None:
    for line in pipe:
        lines.append((time.perf_counter() - started, line.rstrip("\n")))
        if echo:
            sys.stderr.write(line)


def start_once(env: dict[str, str], job: str, timeout: float, echo: bool) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "handler.py", "--test_input", job],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=_stream, args=(proc.stdout, lines, started, echo), daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    exited = time.perf_counter() - started
    reader.join(timeout=10)
    first_caption = engine_ready = None
    output: dict[str, Any] | None = None
    for at, line in lines:
        if engine_ready is None and (m := ENGINE_READY.search(line)):
            engine_ready = (at, float(m.group(1)))
        if first_caption is None and (m := RESULT_LINE.search(line)):
            first_caption = at
            output = _parse_output(m.group(1))
    failed = output is None or "error" in output
    return {
        "first_caption_s": round(first_caption, 1) if first_caption is not None and not failed else None,
        # When the engine's log line came, and how long AsyncLLM.from_engine_args itself took.
        "engine_ready_at_s": round(engine_ready[0], 1) if engine_ready else None,
        "engine_build_s": engine_ready[1] if engine_ready else None,
        "process_exit_s": round(exited, 1),
        "returncode": proc.returncode,
        "error": None if not failed else (output or {}).get("error", "no Job result line; tail: " + _tail(lines)),
    }


def _parse_output(text: str) -> dict[str, Any] | None:
    import ast

    try:
        value = ast.literal_eval(text)  # rp_local logs the output as a Python dict
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, dict) else None


def _tail(lines: list[tuple[float, str]]) -> str:
    return " | ".join(line for _, line in lines[-5:])[-800:]


def cache_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or id (default: a dummy qwen2_5_vl folder of --size)")
    parser.add_argument("--size", default="7b", help="dummy model size when --model is not given")
    parser.add_argument("--load-format", default="dummy")
    parser.add_argument("--runs", type=int, default=2, help="starts in a row; the first has empty caches")
    parser.add_argument("--max-model-len", type=int, default=32768)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.90)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra worker env")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per start")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="empty or absent folder to hold the caches, kept afterwards (bench/e2e.py --compile-cache-dir "
        "DIR/vllm-cache then starts warm); default: a temporary one, removed",
    )
    parser.add_argument("--quiet", action="store_true", help="do not echo the worker's log")
    parser.add_argument("--out", type=Path, help="also write the RESULT json to this file")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bench-coldstart-"))
    volume = args.cache_dir or base / "volume"
    if volume.exists() and any(volume.iterdir()):
        parser.error(f"--cache-dir {volume} is not empty: the first start must find no cache")
    (base / "home").mkdir(parents=True)
    volume.mkdir(parents=True, exist_ok=True)
    if args.model:
        model = args.model
    else:
        from worker.devtools.dummy_model import build_dummy_model

        model = str(build_dummy_model(base / f"qwen2_5_vl-{args.size}", "qwen2_5_vl", args.size))
    env = {k: v for k, v in os.environ.items() if k not in _CACHE_ENV}
    env.setdefault("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    env.update(
        MODEL_NAME=model,
        LOAD_FORMAT=args.load_format,
        MAX_MODEL_LEN=str(args.max_model_len),
        GPU_MEMORY_UTILIZATION=str(args.gpu_memory_utilization),
        ENFORCE_EAGER="true" if args.enforce_eager else "false",
        COMPILE_CACHE_DIR=str(volume / "vllm-cache"),
        HOME=str(base / "home"),
        XDG_CACHE_HOME=str(base / "home" / ".cache"),
        WORK_DIR=str(base / "jobs"),
        PYTHONUNBUFFERED="1",
    )
    for item in args.env:
        name, _, value = item.partition("=")
        env[name] = value
    job = (ROOT / "test_input.json").read_text()

    runs = []
    try:
        for i in range(args.runs):
            print(f"# start {i + 1}/{args.runs} ({'empty' if i == 0 else 'pre-built'} caches)", file=sys.stderr)
            got = start_once(env, job, args.timeout, echo=not args.quiet)
            got["caches"] = "empty" if i == 0 else "pre-built"
            got["cache_mib_after"] = round(cache_size(volume) / 2**20, 1)
            runs.append(got)
            print(f"# {got}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    cold = runs[0]["first_caption_s"]
    warm = [r["first_caption_s"] for r in runs[1:] if r["first_caption_s"] is not None]
    warm_s = statistics.median(warm) if warm else None
    result = {
        "bench": "coldstart",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "device": _device(),
        "model": model if args.model else f"qwen2_5_vl {args.size} dummy weights",
        "enforce_eager": args.enforce_eager,
        "max_model_len": args.max_model_len,
        "runs": runs,
        "first_caption_empty_caches_s": cold,
        "first_caption_prebuilt_caches_s": warm_s,
        "empty_over_prebuilt": round(cold / warm_s, 2) if cold and warm_s else None,
        "target_prebuilt_le_60s": warm_s is not None and warm_s <= 60,
    }
    print("\n| start | caches | first caption s | engine built s (AsyncLLM) | process exit s | cache MiB after |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(runs, 1):
        print(
            f"| {i} | {r['caches']} | {r['first_caption_s']} | {r['engine_build_s']} | {r['process_exit_s']} | "
            f"{r['cache_mib_after']} |"
        )
    print(f"\nempty / pre-built: {result['empty_over_prebuilt']}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("RESULT " + json.dumps(result), flush=True)
    if any(r["error"] for r in runs):
        sys.exit(1)


# Cache locations of the parent environment; the starts must not inherit them.
_CACHE_ENV = {"VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "CUDA_CACHE_PATH", "XDG_CACHE_HOME"}


def _device() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return f"CPU ({os.cpu_count()} cores)"


if __name__ == "__main__":
    main()
