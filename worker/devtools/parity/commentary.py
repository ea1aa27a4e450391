"""The worker's side of commentary parity (issue 19): jobs through ``CaptionService`` as the handler runs
them, on one engine, every engine request recorded at the engine boundary (``EngineTap``): the prompt ids
vLLM made of it, the ids it generated with their top two log-probs, the prefix-cache hit, and the frames
of the request's newest clip, which the reference (tests/commentary_reference.py, seed 004's loop) is
then given. vLLM builds its engine under ``__main__``, so this runs as a process of its own:

    python -m worker.devtools.parity.commentary SPEC.json OUT_DIR

SPEC: ``{"settings": {Settings fields}, "jobs": {name: job input}}``, run one after another (a string
``"@answer:NAME@"`` in a job stands for job NAME's caption: a follow-up question). OUT_DIR gets
``out.json`` (per job: ``parts``, ``progress``, ``requests``) and ``NAME-I.npz`` (request I's newest clip:
``frames``, ``timestamps``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from worker.config import Settings
from worker.devtools.parity.worker_path import EngineTap
from worker.engine import EngineSlot
from worker.job.service import CaptionService

log = logging.getLogger(__name__)


def newest_clip(inputs: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The last video item of a prompt dict (a commentary turn's new clip; a plain job's only video)."""
    video = (inputs.get("multi_modal_data") or {}).get("video")
    if video is None:
        return None
    item = video[-1] if isinstance(video, list) else video
    frames, metadata = item if isinstance(item, tuple) else (item, {})
    return np.asarray(frames), dict(metadata or {})


def request_record(record: Any, name: str, number: int, out_dir: Path) -> dict[str, Any]:
    """One recorded request as JSON, its newest clip saved beside it."""
    output = record.output
    completion = output.outputs[0] if output is not None and output.outputs else None
    steps = []
    for step in (completion.logprobs or []) if completion is not None else []:
        ranked = sorted(((float(lp.logprob), int(tid)) for tid, lp in step.items()), reverse=True)
        ranked.append((float("-inf"), -1))
        steps.append([ranked[0][1], ranked[0][0], ranked[1][1], ranked[1][0]])
    clip = newest_clip(record.inputs)
    frames_file = None
    if clip is not None:
        frames_file = f"{name}-{number}.npz"
        frames, metadata = clip
        np.savez(out_dir / frames_file, frames=frames, indices=np.asarray(metadata.get("frames_indices", [])))
    video = (record.inputs.get("multi_modal_data") or {}).get("video")
    return {
        "sent_ids": list(record.inputs.get("prompt_token_ids") or []),
        "prompt_token_ids": list(output.prompt_token_ids if output is not None else record.prompt_token_ids),
        "token_ids": list(completion.token_ids) if completion is not None else [],
        "text": completion.text if completion is not None else "",
        "cached_tokens": getattr(output, "num_cached_tokens", None),
        "steps": steps,
        "num_videos": len(video) if isinstance(video, list) else int(video is not None),
        "uuids": list((record.inputs.get("multi_modal_uuids") or {}).get("video") or []),
        "frames_file": frames_file,
    }


async def _run_jobs(service: CaptionService, tap: EngineTap, jobs: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, template in jobs.items():
        job = _with_answers(template, results)
        before = len(tap.requests)
        progress: list[dict[str, Any]] = []
        parts = [part.body async for part in service.run(job, f"parity-{name}", progress.append)]
        records = tap.requests[before:]
        results[name] = {
            "parts": parts,
            "progress": progress,
            "requests": [request_record(r, name, i, out_dir) for i, r in enumerate(records)],
        }
        log.info("job %s: %d parts, %d engine requests", name, len(parts), len(records))
    return results


def _with_answers(job: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """``job`` with each ``"@answer:NAME@"`` string replaced by job NAME's caption (a follow-up question
    carries the earlier answer as the client would)."""
    text = json.dumps(job)
    for name, result in results.items():
        caption = result["parts"][-1].get("caption", "")
        text = text.replace(f'"@answer:{name}@"', json.dumps(caption))
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def main(argv: list[str]) -> int:
    spec_path, out_dir = Path(argv[0]), Path(argv[1])
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    spec = json.loads(spec_path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(**spec["settings"])
    slot = EngineSlot()
    slot.start(settings)
    engine = slot.get()
    tap = EngineTap(engine)
    service = CaptionService(settings, slot)
    try:
        results = asyncio.run(_run_jobs(service, tap, spec["jobs"], out_dir))
    finally:
        engine.shutdown()
        service.decoder.shutdown()
    (out_dir / "out.json").write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
