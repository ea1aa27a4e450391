"""Cold start: process start -> first caption ready, with empty compile caches and with caches pre-built.

    python bench/coldstart.py                        # 7B-shaped dummy model, 2 starts (empty, then pre-built)
    python bench/coldstart.py --model /models/Qwen2.5-VL-7B-Instruct --load-format auto --runs 3
    VLLM_CPU_KVCACHE_SPACE=1 python bench/coldstart.py --size tiny --enforce-eager \\
        --max-model-len 4096                         # CPU smoke run (1 GiB KV cache)
    python bench/coldstart.py --runs 3 --env ENGINE_WARM_UP=after --log /tmp/after.log  # a setting's effect

Each start is `python handler.py --test_input "$(cat test_input.json)"` in a fresh process, exactly what
the README's first command runs, timed from the spawn to the "Job result" line. The compile caches go
where the worker puts them on RunPod (COMPILE_CACHE_DIR on a volume: worker/compile_cache.py), here a
fresh temporary "volume"; HOME and XDG_CACHE_HOME point into it too, so no cache of an earlier run on
this machine is seen (HF_HOME is kept: the weights are not what is measured). The first start fills
the caches, the later ones reuse them. Each start's "phases" are the seconds from the spawn to the
milestones its log shows (MILESTONES: the worker's imports, the engine core's first line, engine ready,
warm-up done, job started, first caption); --log keeps every line with its second. Ends with one line
`RESULT {json}`.
"""

from __future__ import annotations

import argparse
import contextlib
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
# Milestones of a start, each the first log line that marks it (seconds from the spawn, in "phases"):
# the worker's own imports done (its first log line), vLLM imported and the engine configured in the
# serving process, the engine core process up (its first line), the engine ready, vLLM's multimodal
# warm-up done, the job received, the first caption.
MILESTONES: dict[str, re.Pattern[str]] = {
    "worker_imports_done": re.compile(r"compile caches |cold start: "),
    "engine_core_spawned": re.compile(r"EngineCore.*(Initializing a V1 LLM engine|Waiting for init message)"),
    "engine_ready": ENGINE_READY,
    "warm_up_done": re.compile(r"engine warmed up in|warm-up (skipped|off)"),
    "job_started": re.compile(r"Started\.|Local testing|test_input"),
    "first_caption": RESULT_LINE,
}


def _stream(pipe: IO[str], lines: list[tuple[float, str]], started: float, echo: bool) -> None:
    for line in pipe:
        lines.append((time.perf_counter() - started, line.rstrip("\n")))
        if echo:
            sys.stderr.write(line)


def start_once(
    env: dict[str, str], job: str, timeout: float, echo: bool, log: IO[str] | None = None
) -> dict[str, Any]:
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
    if log is not None:
        log.write("".join(f"{at:8.2f} {line}\n" for at, line in lines))
    return {
        "phases": milestones(lines),
        "first_caption_s": round(first_caption, 1) if first_caption is not None and not failed else None,
        # When the engine's log line came, and how long AsyncLLM.from_engine_args itself took.
        "engine_ready_at_s": round(engine_ready[0], 1) if engine_ready else None,
        "engine_build_s": engine_ready[1] if engine_ready else None,
        "process_exit_s": round(exited, 1),
        "returncode": proc.returncode,
        "error": None if not failed else (output or {}).get("error", "no Job result line; tail: " + _tail(lines)),
    }


def milestones(lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds from the spawn to the first line of each milestone that the log shows (MILESTONES)."""
    seen: dict[str, float] = {}
    for at, line in lines:
        for name, pattern in MILESTONES.items():
            if name not in seen and pattern.search(line):
                seen[name] = round(at, 1)
    return {name: seen[name] for name in MILESTONES if name in seen}


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
    parser.add_argument(
        "--prebuilt",
        action="store_true",
        help="--cache-dir holds an earlier run's caches: every start is a pre-built one (no empty start)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not echo the worker's log")
    parser.add_argument("--out", type=Path, help="also write the RESULT json to this file")
    parser.add_argument(
        "--alternate",
        metavar="NAME=A,B",
        help="a worker setting taking each value in turn over the pre-built starts, the first value also for "
        "the empty start, e.g. ENGINE_WARM_UP=early,after: both measured under the same load (a busy machine)",
    )
    parser.add_argument("--log", type=Path, help="write every start's log here, each line with its second")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bench-coldstart-"))
    volume = args.cache_dir or base / "volume"
    if volume.exists() and any(volume.iterdir()) and not args.prebuilt:
        parser.error(f"--cache-dir {volume} is not empty: the first start must find no cache (or --prebuilt)")
    first_prebuilt = 0 if args.prebuilt else 1  # the index of the first start that finds the caches built
    (base / "home").mkdir(parents=True)
    volume.mkdir(parents=True, exist_ok=True)
    if args.model:
        model = args.model
    else:
        from worker.devtools.dummy_model import cached_dummy_model

        # One folder per size on this machine: vLLM keys the compile cache by the model's path, so a later
        # run with --prebuilt finds the graphs an earlier one compiled.
        model = str(cached_dummy_model("qwen2_5_vl", args.size))
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

    alternate_name, _, values = (args.alternate or "").partition("=")
    alternate = [v for v in values.split(",") if v]
    runs = []
    try:
        for i in range(args.runs):
            caches = "empty" if i < first_prebuilt else "pre-built"
            print(f"# start {i + 1}/{args.runs} ({caches} caches)", file=sys.stderr)
            if alternate:
                env[alternate_name] = alternate[max(0, i - first_prebuilt) % len(alternate)]
            with open(args.log, "a") if args.log else contextlib.nullcontext() as log:
                if log is not None:
                    setting = f" {alternate_name}={env[alternate_name]}" if alternate else ""
                    log.write(f"# start {i + 1}/{args.runs}{setting}\n")
                got = start_once(env, job, args.timeout, echo=not args.quiet, log=log)
            if alternate:
                got["alternate"] = env[alternate_name]
            got["caches"] = caches
            got["cache_mib_after"] = round(cache_size(volume) / 2**20, 1)
            runs.append(got)
            print(f"# {got}", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    cold = runs[0]["first_caption_s"] if first_prebuilt else None
    # With --alternate, the headline figure is the first value's (the one under test), each value's apart.
    prebuilt = runs[first_prebuilt:]
    chosen = [r for r in prebuilt if r.get("alternate") in (None, alternate[0] if alternate else None)]
    warm = [r["first_caption_s"] for r in chosen if r["first_caption_s"] is not None]
    warm_s = statistics.median(warm) if warm else None
    by_value: dict[str, float | None] = {}
    for value in alternate:
        seconds = [r["first_caption_s"] for r in prebuilt if r.get("alternate") == value and r["first_caption_s"]]
        by_value[value] = statistics.median(seconds) if seconds else None
    result = {
        "bench": "coldstart",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "device": _device(),
        "model": model if args.model else f"qwen2_5_vl {args.size} dummy weights",
        "enforce_eager": args.enforce_eager,
        "max_model_len": args.max_model_len,
        "env": args.env,  # the worker settings given with --env (ENGINE_WARM_UP=off, ...)
        "runs": runs,
        "first_caption_empty_caches_s": cold,
        "first_caption_prebuilt_caches_s": warm_s,
        **({"alternate": alternate_name, "first_caption_prebuilt_caches_s_by_value": by_value} if alternate else {}),
        "empty_over_prebuilt": round(cold / warm_s, 2) if cold and warm_s else None,
        "target_prebuilt_le_45s": warm_s is not None and warm_s <= 45,  # issue 21
    }
    print("\n| start | caches | first caption s | engine built s (AsyncLLM) | process exit s | cache MiB after |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(runs, 1):
        print(
            f"| {i} | {r['caches']} | {r['first_caption_s']} | {r['engine_build_s']} | {r['process_exit_s']} | "
            f"{r['cache_mib_after']} |"
        )
    print(f"\nempty / pre-built: {result['empty_over_prebuilt']}")
    print("\nseconds from the spawn to: " + " | ".join(MILESTONES))
    for i, r in enumerate(runs, 1):
        print(f"start {i}: " + " | ".join(str(r["phases"].get(name, "-")) for name in MILESTONES))
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
