"""The hand-over of decoded frames from a decoder process to the serving process: the worker's way (the
result pickled into a file, read back by the pool's manager thread) against shared memory
(multiprocessing.shared_memory: the frames stacked straight into a segment, the serving process mapping
it without a copy, or copying out of it so the segment can go at once).

    python bench/handover.py                      # 60 frames of 448x448 RGB (36 MB), 20 rounds
    python bench/handover.py --frames 16 --rounds 50

CPU seconds per hand-over on each side (time.thread_time of the thread doing it), medians over the rounds;
the two sides run in two processes, as in the worker. Ends with one line `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np


def _decoder_side(how: str, frames: int, size: int, folder: str, rounds: int, queue: Any) -> None:
    """Produce ``rounds`` results the way ``how`` says; put (where, CPU seconds) on ``queue`` for each."""
    rng = np.random.default_rng(0)
    planes = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(frames)]
    for i in range(rounds):
        started = time.thread_time()
        if how == "file":
            stacked = np.stack(planes)
            path = Path(folder) / f"{i}.pickle"
            with path.open("wb") as file:
                pickle.dump(stacked, file, protocol=pickle.HIGHEST_PROTOCOL)
            where: Any = str(path)
        else:
            segment = shared_memory.SharedMemory(create=True, size=frames * size * size * 3)
            view = np.ndarray((frames, size, size, 3), np.uint8, buffer=segment.buf)
            np.stack(planes, out=view)  # decoded frames go straight into the segment
            del view
            where = segment.name
            segment.close()  # the serving side unlinks it
        queue.put((where, time.thread_time() - started))


def _serving_side(how: str, where: Any, frames: int, size: int) -> float:
    started = time.thread_time()
    if how == "file":
        path = Path(where)
        with path.open("rb") as file:
            array = pickle.load(file)
        path.unlink()
    else:
        segment = shared_memory.SharedMemory(name=where)
        view = np.ndarray((frames, size, size, 3), np.uint8, buffer=segment.buf)
        if how == "shm_copy":
            array = view.copy()
            del view
            segment.close()
            segment.unlink()
        else:  # shm_view: zero copy; the segment must live as long as the frames (until the request ends)
            array = view
            int(array[0, 0, 0, 0]) + int(array[-1, -1, -1, -1])  # touch it, as a reader would
            del array, view
            segment.close()
            segment.unlink()
    return time.thread_time() - started


def measure(how: str, frames: int, size: int, rounds: int) -> dict[str, float]:
    context = multiprocessing.get_context("forkserver")
    queue = context.Queue()
    with tempfile.TemporaryDirectory(prefix="handover-") as folder:
        producer = context.Process(target=_decoder_side, args=(how, frames, size, folder, rounds, queue))
        producer.start()
        decoder, serving = [], []
        for _ in range(rounds):
            where, spent = queue.get()
            decoder.append(spent)
            serving.append(_serving_side(how, where, frames, size))
        producer.join()
    return {
        "decoder_cpu_ms": round(statistics.median(decoder) * 1000, 2),
        "serving_cpu_ms": round(statistics.median(serving) * 1000, 2),
        "total_cpu_ms": round((statistics.median(decoder) + statistics.median(serving)) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    figures = {how: measure(how, args.frames, args.size, args.rounds) for how in ("file", "shm_copy", "shm_view")}
    result = {
        "bench": "handover",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "device": f"CPU ({os.cpu_count()} cores)",
        "frames": f"{args.frames} x {args.size}x{args.size} RGB uint8 ({args.frames * args.size**2 * 3 / 2**20:.0f} MiB)",
        "tmp_folder": tempfile.gettempdir(),
        "figures": figures,
    }
    print("\n| hand-over | decoder CPU ms | serving CPU ms | total CPU ms |\n|---|---|---|---|")
    for how, f in figures.items():
        print(f"| {how} | {f['decoder_cpu_ms']} | {f['serving_cpu_ms']} | {f['total_cpu_ms']} |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
