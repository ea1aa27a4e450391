"""The comparison of one case's two sides, and the report: prompt ids (text and placeholder counts), the
visual grid, per-item numbers, processed pixels, M-RoPE positions and the greedy ids; where ids part, the
step's top-2 margins on both sides, so a difference is measured, never waved away."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker.devtools.parity.records import SideRun, Step

# Tokens whose counts are the placeholders of the media (present in every Qwen-family tokenizer or not).
PLACEHOLDERS = ("<|image_pad|>", "<|video_pad|>", "<|AUDIO|>", "<|audio_pad|>", "<|vision_start|>", "<|vision_end|>")


# A divergence whose top-2 margin is under this many times the case's measured noise is a rounding tie.
NEAR_TIE = 10


@dataclass
class CaseReport:
    name: str
    family: str
    kind: str
    prompt_ids_equal: bool
    prompt_lengths: tuple[int, int]  # (worker, reference)
    first_prompt_difference: int | None
    placeholders: dict[str, tuple[int, int]]
    grid_equal: bool
    grids: dict[str, Any]
    values_equal: bool
    values: dict[str, Any]
    pixels_max_difference: float | None
    positions_equal: bool | None  # worker vs transformers as it is; None: not readable on a side
    positions_equal_qwen_rule: bool | None  # worker vs Qwen's original rule (Qwen2-VL, Qwen2.5-VL)
    first_position_difference: dict[str, Any] | None
    temporal_positions: dict[str, list[int]]  # the temporal index of each visual group, per side
    tokens_compared: int
    tokens_equal: bool
    divergence: dict[str, Any] | None
    min_margin: dict[str, float | None]  # smallest top-2 margin over the compared steps, per side
    # How far the two sides' raw top-2 margins are apart over the steps where both rank the same two
    # tokens first: the measured numerical noise between the paths, to set beside min_margin.
    margin_noise: float | None
    worker_ids: list[int]
    reference_ids: list[int]
    reference: str = "transformers"  # which reference the ids were compared with
    media: dict[str, Any] = field(default_factory=dict)  # the worker's frames and timing vs the file's
    notes: list[str] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        positions = self.positions_equal is not False or self.positions_equal_qwen_rule is True
        return self.prompt_ids_equal and self.grid_equal and self.values_equal and positions and self.tokens_equal

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"equal": self.equal}


def compare(
    name: str,
    family: str,
    kind: str,
    worker: SideRun,
    reference: SideRun,
    tokenizer: Any,
    *,
    min_tokens: int = 16,
    reference_label: str = "transformers",
) -> CaseReport:
    """Everything the two sides of one case computed, side by side. Margins and noise are taken over the
    steps before the ids part (after that the two sides continue different texts)."""
    w_ids, r_ids = worker.prompt_token_ids, reference.prompt_token_ids
    placeholder_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in PLACEHOLDERS}
    known = {t: i for t, i in placeholder_ids.items() if isinstance(i, int) and i != tokenizer.unk_token_id}
    video_id = known.get("<|video_pad|>")
    image_id = known.get("<|image_pad|>")
    worker_values = {k: _rounded(v) for k, v in worker.mm_values.items()}
    reference_values = {k: _rounded(v) for k, v in reference.mm_values.items()}
    n = min(len(worker.token_ids), len(reference.token_ids))
    parted = _first_difference(worker.token_ids, reference.token_ids)
    agreed = n if parted is None else min(parted + 1, n)  # the parting step itself is compared too
    report = CaseReport(
        name=name,
        family=family,
        kind=kind,
        prompt_ids_equal=w_ids == r_ids,
        prompt_lengths=(len(w_ids), len(r_ids)),
        first_prompt_difference=_first_difference(w_ids, r_ids),
        placeholders={t: (w_ids.count(i), r_ids.count(i)) for t, i in known.items()},
        grid_equal=worker.grids == reference.grids,
        grids={"worker": worker.grids, "reference": reference.grids},
        values_equal=worker_values == reference_values,
        values={"worker": worker_values, "reference": reference_values},
        pixels_max_difference=_pixels_difference(worker.pixels, reference.pixels),
        positions_equal=_equal_arrays(worker.positions, reference.positions),
        positions_equal_qwen_rule=_equal_arrays(worker.positions, reference.qwen_rule_positions),
        first_position_difference=_first_position_difference(worker.positions, reference.positions),
        temporal_positions={
            "worker": _temporal(worker.positions, w_ids, {video_id, image_id}),
            "reference": _temporal(reference.positions, r_ids, {video_id, image_id}),
            "qwen_rule": _temporal(reference.qwen_rule_positions, r_ids, {video_id, image_id}),
        },
        tokens_compared=n,
        tokens_equal=worker.token_ids == reference.token_ids,
        divergence=_divergence(worker, reference),
        min_margin={"worker": _min_margin(worker.steps[:agreed]), "reference": _min_margin(reference.steps[:agreed])},
        margin_noise=_margin_noise(worker.steps[:agreed], reference.raw_steps[:agreed]),
        worker_ids=worker.token_ids,
        reference_ids=reference.token_ids,
        reference=reference_label,
        notes=worker.notes + reference.notes,
    )
    divergence, noise = report.divergence, report.margin_noise
    if divergence is not None and noise is not None and "margin" in divergence.get("reference_raw", {}):
        # Set beside the noise measured on this very case: a margin within it is a rounding tie; one far
        # above it means the two paths computed different things.
        divergence["near_tie"] = divergence["reference_raw"]["margin"] < NEAR_TIE * noise
    if n < min_tokens and not _stopped_early(worker, reference, tokenizer):
        report.notes.append(f"only {n} tokens compared (< {min_tokens}) without both sides ending the answer")
        report.tokens_equal = False
    return report


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 6) for v in values]


def _first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _equal_arrays(a: np.ndarray | None, b: np.ndarray | None) -> bool | None:
    if a is None or b is None:
        return None
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _first_position_difference(worker: np.ndarray | None, reference: np.ndarray | None) -> dict[str, Any] | None:
    if worker is None or reference is None or _equal_arrays(worker, reference):
        return None
    if worker.shape != reference.shape:
        return {"shapes": [list(worker.shape), list(reference.shape)]}
    column = int(np.nonzero((worker != reference).any(axis=0))[0][0])
    return {"index": column, "worker": worker[:, column].tolist(), "reference": reference[:, column].tolist()}


def _temporal(positions: np.ndarray | None, ids: list[int], visual: set[int | None]) -> list[int]:
    """The temporal position of each visual group, relative to the first: distinct values of axis 0 over
    the visual tokens, in order."""
    if positions is None or positions.shape[-1] != len(ids):
        return []
    mask = np.array([i in visual for i in ids])
    if not mask.any():
        return []
    values = list(dict.fromkeys(int(v) for v in positions[0][mask]))
    return [v - values[0] for v in values]


def _pixels_difference(worker: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float | None:
    shared = [k for k in worker if k in reference]
    if not shared:
        return None
    worst = 0.0
    for key in shared:
        if worker[key].shape != reference[key].shape:
            return float("inf")
        worst = max(worst, float(np.abs(worker[key] - reference[key]).max()))
    return worst


def _min_margin(steps: list[Step]) -> float | None:
    return float(f"{min(s.margin for s in steps):.3g}") if steps else None


def _margin_noise(worker: list[Step], reference_raw: list[Step]) -> float | None:
    gaps = [
        abs(w.margin - r.margin)
        for w, r in zip(worker, reference_raw)
        if (w.token, w.runner_up) == (r.token, r.runner_up)
    ]
    return float(f"{max(gaps):.3g}") if gaps else None


def _divergence(worker: SideRun, reference: SideRun) -> dict[str, Any] | None:
    step = _first_difference(worker.token_ids, reference.token_ids)
    if step is None:
        return None
    out: dict[str, Any] = {"step": step}
    for label, steps, ids in (
        ("worker", worker.steps, worker.token_ids),
        ("reference", reference.steps, reference.token_ids),
        ("reference_raw", reference.raw_steps, reference.token_ids),
    ):
        if step < len(steps):
            s = steps[step]
            out[label] = {"top2": [s.token, s.runner_up], "margin": round(s.margin, 6)}
        else:
            out[label] = {"ended": len(ids)}
    return out


def _stopped_early(worker: SideRun, reference: SideRun, tokenizer: Any) -> bool:
    """Both sides ended the answer themselves (an end-of-turn token) at the same step."""
    return worker.token_ids == reference.token_ids and bool(worker.token_ids) and (
        worker.token_ids[-1] in _eos_ids(tokenizer)
    )


def _eos_ids(tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    for token in ("<|im_end|>", "<|endoftext|>"):
        ids.add(tokenizer.convert_tokens_to_ids(token))
    return {i for i in ids if isinstance(i, int)}


def table(reports: list[CaseReport]) -> str:
    """Family x (prompt ids, grid, positions, first N ids) as a plain-text table."""
    header = f"{'case':34} {'family':20} {'prompt ids':>10} {'grid':>5} {'positions':>12} {'first N ids':>12}"
    rows = [header, "-" * len(header)]
    for r in reports:
        positions = _mark(r.positions_equal)
        if r.positions_equal is False and r.positions_equal_qwen_rule:
            positions = "qwen-rule"
        ids = f"{_mark(r.tokens_equal)} {r.tokens_compared}"
        if r.reference != "transformers":
            ids += "*"
        rows.append(
            f"{r.name:34} {r.family:20} {_mark(r.prompt_ids_equal):>10} {_mark(r.grid_equal):>5} "
            f"{positions:>12} {ids:>12}"
        )
    rows.append("positions 'qwen-rule': equal to Qwen's original rule, not to transformers 5.17 (docs/correctness.md);")
    rows.append("ids '*': compared with the reference run on Qwen's original positions")
    return "\n".join(rows)


def _mark(value: bool | None) -> str:
    return {True: "equal", False: "DIFFER", None: "n/a"}[value]


def result_line(reports: list[CaseReport], **extra: Any) -> str:
    payload = {"parity": [r.to_json() for r in reports], "all_equal": all(r.equal for r in reports), **extra}
    return "RESULT " + json.dumps(payload, default=json_default)


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for parity records: numpy arrays and scalars, paths."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer | np.floating):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")
