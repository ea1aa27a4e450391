"""Qwen2.5-Omni thinker parity (issue 17): the worker end to end against transformers' thinker as the model
card runs it, for a video with its sound (interleaved, ``use_audio_in_video``), a video without sound and an
image; plus the case that used to kill vLLM 0.26's engine (two jobs in flight, same frames, different
sound) and, as a control, the sound appended after the frames, which must differ from the reference.

    python -m worker.devtools.parity.omni OUT.json [--model FOLDER]   # default: tiny folder, seeded weights

The reference is ``Qwen2_5OmniThinkerForConditionalGeneration.generate(do_sample=False)`` with the folder's
processor and chat template, the user turn holding the video then the text (the sound needs no item of its
own with ``use_audio_in_video``), given the worker's frames with their true timing (``fps`` is the rate the
Omni processor times them by; it ignores ``video_metadata`` for that) and the worker's audio samples.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import PIL.Image
import torch

from worker.config import Settings
from worker.devtools.parity.compare import CaseReport, json_default, table
from worker.devtools.parity.harness import Case, check_case
from worker.devtools.parity.records import Media, SideRun, WorkerRun
from worker.devtools.parity.reference import REFERENCES, Reference
from worker.devtools.parity.worker_path import EngineTap, media_of, parity_settings, side_of
from worker.engine import Engine, EngineSlot
from worker.job.service import CaptionService

log = logging.getLogger(__name__)

FAMILY = "qwen2_5_omni"
TOKENS = 24
PROMPT = "Describe what you see and hear."


class OmniReference(Reference):
    """transformers' Qwen2.5-Omni thinker (the part vLLM serves), loaded from the whole checkpoint."""

    families: ClassVar[tuple[str, ...]] = (FAMILY,)

    def load_model(self, transformers: Any) -> torch.nn.Module:
        config = transformers.AutoConfig.from_pretrained(self.folder)
        cls = transformers.Qwen2_5OmniThinkerForConditionalGeneration
        return cls.from_pretrained(self.folder, config=config.thinker_config, dtype=torch.float32)

    def language_model(self) -> torch.nn.Module:
        return self.model.model

    def processor_inputs(self, media: Media | None) -> dict[str, Any]:
        kwargs = super().processor_inputs(media)
        if media is None or media.kind != "video":
            return kwargs
        meta = media.metadata or {}
        if meta:
            # qwen-omni-utils' rule for the rate the frames were taken at: frames / source frames x source fps.
            kwargs["fps"] = len(meta["frames_indices"]) / float(meta["total_num_frames"]) * float(meta["fps"])
        # The worker's frames already have their planned size; the Omni processor's own default floor of
        # 128 x 28 x 28 pixels a frame would upscale smaller ones (docs/correctness.md).
        kwargs["do_resize"] = False
        if media.audio is not None:
            kwargs |= {"audio": [np.asarray(media.audio, dtype=np.float32)], "use_audio_in_video": True}
        return kwargs

    def generate_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {"use_audio_in_video": True} if "input_features" in inputs else {}

    def run(self, *args: Any, **kwargs: Any) -> SideRun:
        side = super().run(*args, **kwargs)
        # vLLM keeps the processor's ``video_second_per_grid`` under Qwen2.5-VL's name.
        if "video_second_per_grid" in side.mm_values:
            side.mm_values["second_per_grid_ts"] = side.mm_values.pop("video_second_per_grid")
        return side


REFERENCES[FAMILY] = OmniReference


class OmniTap(EngineTap):
    """The harness's tap; vLLM's Omni thinker keeps the thinker's config, not the checkpoint's."""

    def positions_config(self, hf_config: Any) -> Any:
        return hf_config.thinker_config

    def positions_of(self, request: Any) -> np.ndarray:
        """Positions of an EngineCoreRequest (the processor cache is off: every item carries its data), as
        the served class computes them (its own ``get_mrope_input_positions`` on a bare instance)."""
        from vllm.model_executor.model_loader.utils import get_model_architecture

        model_config = self.engine.llm.vllm_config.model_config
        cls, _ = get_model_architecture(model_config)
        bare = cls.__new__(cls)
        torch.nn.Module.__init__(bare)
        bare.config = self.positions_config(model_config.hf_config)
        positions, _ = cls.get_mrope_input_positions(bare, list(request.prompt_token_ids), list(request.mm_features))
        return np.asarray(positions, dtype=np.int64)


def build_folder(dest: Path, seed: int = 0) -> Path:
    """The tiny Qwen2.5-Omni folder (real tokenizer, processor and chat-template configs) with seeded
    float32 weights for the whole checkpoint (thinker, talker, token2wav: vLLM loads the thinker)."""
    import transformers

    from worker.devtools.dummy_model import build_dummy_model
    from worker.devtools.parity.weights import write_seeded_weights

    folder = build_dummy_model(dest, FAMILY, "tiny")
    write_seeded_weights(folder, seed=seed, model_class=transformers.Qwen2_5OmniForConditionalGeneration)
    return folder


def make_media(media_dir: Path) -> dict[str, Path]:
    """Clips of 4 s at 10 fps, 112 x 112, whose frames are identical: with a 4 s sound track, with a 2 s
    one starting 1 s in (other sound, fewer tokens), without sound; and a still image."""
    from worker.devtools.media import make_video

    media_dir.mkdir(parents=True, exist_ok=True)
    common = {"seconds": 4.0, "fps": 10, "width": 112, "height": 112, "texture": True, "seed": 5}
    clips = {
        "av": make_video(media_dir / "omni_av.mp4", audio="aac", **common),
        "av_other": make_video(
            media_dir / "omni_av_other.mp4", audio="aac", audio_seconds=2.0, audio_delay=1.0, **common
        ),
        "silent": make_video(media_dir / "omni_silent.mp4", **common),
    }
    image = media_dir / "omni_photo.png"
    PIL.Image.fromarray(np.random.default_rng(7).integers(0, 255, (112, 168, 3), dtype=np.uint8)).save(image)
    return clips | {"image": image}


def cases(media: dict[str, Path]) -> list[Case]:
    video = {"prompt": PROMPT, "max_tokens": TOKENS, "fps": 2.0, "max_frames": 8}
    return [
        Case("omni video + sound", video | {"video": str(media["av"]), "process_audio": True}),
        Case("omni video + other sound", video | {"video": str(media["av_other"]), "process_audio": True}),
        Case("omni video", video | {"video": str(media["silent"])}),
        Case("omni image", {"image": str(media["image"]), "prompt": "Describe this image.", "max_tokens": TOKENS}),
    ]


# Sampling rates for the layout check: a frame pair longer than a 2-second chunk (0.5, 0.625 fps), as long
# (1 fps), shorter (2.5, 4 fps); 2 fps is the parity cases' own. 8 frames from a 10 fps source span a
# whole number of source frames at each.
LAYOUT_RATES = (0.5, 0.625, 1.0, 2.5, 4.0)


@dataclasses.dataclass
class LayoutSample:
    """One synthetic video with sound at ``rate`` as the adapter hands it to the engine."""

    rate: float
    frames: np.ndarray
    metadata: dict[str, Any]
    audio: np.ndarray
    inputs: dict[str, Any]


def layout_samples(engine: Engine, prompt: str) -> list[LayoutSample]:
    """8 frames of 112 x 112 taken at each of LAYOUT_RATES from a 10 fps source, with the sound they span."""
    from worker.media.audio import AudioClip
    from worker.media.frames import DecodedFrames
    from worker.media.probe import Probe

    rng = np.random.default_rng(11)
    samples = []
    for rate in LAYOUT_RATES:
        seconds = 8 / rate
        stamps = [(i + 0.5) / rate for i in range(8)]
        pixels = rng.integers(0, 255, (8, 112, 112, 3), dtype=np.uint8)
        frames = DecodedFrames(pixels, stamps, [int(t * 10) for t in stamps])
        probe = Probe(seconds, 112, 112, 10.0, 0, "h264", 0.0, True, seconds)
        sound = (0.2 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)
        text = engine.adapter.build_prompt(engine.tokenizer, prompt, "video", True)
        inputs = engine.adapter.video_inputs(text, frames, probe, rate, AudioClip(sound, 0.0))
        metadata = inputs["multi_modal_data"]["video"][1]
        samples.append(LayoutSample(rate, frames.frames, dict(metadata), sound, inputs))
    return samples


def worker_layouts(engine: Engine, tap: "OmniTap", samples: list[LayoutSample]) -> list[dict[str, Any]]:
    """vLLM's prompt ids and positions for each sample: the engine's own input processor, no generation."""
    from vllm import SamplingParams

    out = []
    for sample in samples:
        request = engine.llm.input_processor.process_inputs(
            f"layout-{sample.rate:g}", sample.inputs, SamplingParams(max_tokens=1), supported_tasks=("generate",)
        )
        out.append({"ids": list(request.prompt_token_ids), "positions": tap.positions_of(request)})
    return out


def reference_layout(reference: OmniReference, sample: LayoutSample, prompt: str) -> dict[str, Any]:
    """transformers' prompt ids and positions for a sample (its processor and ``get_rope_index``)."""
    media = Media("video", sample.frames, sample.metadata, sample.audio)
    messages = reference.messages(prompt, media)
    text = reference.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = reference.processor(text=[text], **reference.processor_inputs(media), return_tensors="pt")
    positions, _ = reference.model.get_rope_index(
        inputs["input_ids"],
        None,
        inputs["video_grid_thw"],
        inputs["attention_mask"],
        True,
        inputs["feature_attention_mask"].sum(-1),
        torch.as_tensor(inputs["video_second_per_grid"]),
    )
    return {"ids": inputs["input_ids"][0].tolist(), "positions": positions[:, 0].numpy()}


def compare_layout(rate: float, worker: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    w, r = worker["positions"], reference["positions"]
    return {
        "fps": rate,
        "prompt_tokens": [len(worker["ids"]), len(reference["ids"])],
        "prompt_ids_equal": worker["ids"] == reference["ids"],
        "positions_equal": w is not None and w.shape == r.shape and bool(np.array_equal(w, r)),
    }


def run(settings: Settings, media: dict[str, Path], device: str = "cpu") -> dict[str, Any]:
    """Everything on one engine: each parity case alone, then the two sound cases in flight together, then
    the appended-sound control; the engine is stopped before the reference loads."""
    all_cases = cases(media)
    jobs = [case.worker_job() for case in all_cases]
    slot = EngineSlot()
    slot.start(settings)
    engine = slot.get()
    tap = OmniTap(engine)
    service = CaptionService(settings, slot)
    started = time.perf_counter()
    try:
        solo, together, alive = asyncio.run(_worker_jobs(service, engine, tap, jobs))
        samples = layout_samples(engine, PROMPT)
        layouts = worker_layouts(engine, tap, samples)
    finally:
        engine.shutdown()
        service.decoder.shutdown()
    worker_seconds = time.perf_counter() - started
    records = tap.requests
    if len(records) != len(jobs) + 3:
        raise RuntimeError(f"expected {len(jobs) + 3} engine requests, saw {len(records)}")
    runs = [
        WorkerRun(job=j, output=o, inputs=r.inputs, media=media_of(r.inputs), side=side_of(r, engine.tokenizer))
        for j, o, r in zip(jobs, solo, records, strict=False)
    ]
    # The pair's requests reach the engine in whichever order their decodes finish: match them by sound.
    first = _sound_length(runs[0].inputs)
    pair = sorted(records[len(jobs) : len(jobs) + 2], key=lambda r: _sound_length(r.inputs) != first)
    pair = [side_of(r, engine.tokenizer) for r in pair]
    started = time.perf_counter()
    reference = OmniReference(Path(settings.model_name), device=device)
    reports = [check_case(reference, FAMILY, case, r) for case, r in zip(all_cases, runs, strict=True)]
    appended = dataclasses.replace(runs[0], side=side_of(records[-1], engine.tokenizer))
    control = check_case(reference, FAMILY, all_cases[0], appended)
    control.name = "omni sound appended (control)"
    rates = [compare_layout(x.rate, w, reference_layout(reference, x, PROMPT)) for x, w in zip(samples, layouts)]
    return {
        "reports": reports,
        "control": control,
        "in_flight_together": {
            "errors": [o.get("error") for o in together],
            "engine_alive": alive,
            # Each job of the pair exactly as when it ran alone: its own layout, not the other's.
            "prompt_ids_as_alone": [p.prompt_token_ids == runs[i].side.prompt_token_ids for i, p in enumerate(pair)],
            "ids_as_alone": [p.token_ids == runs[i].side.token_ids for i, p in enumerate(pair)],
            "prompt_lengths": [len(p.prompt_token_ids) for p in pair],
        },
        "rates": rates,
        "seconds": {"worker": round(worker_seconds, 1), "reference": round(time.perf_counter() - started, 1)},
    }


async def _worker_jobs(
    service: CaptionService, engine: Engine, tap: EngineTap, jobs: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    solo = []
    for job in jobs:
        output = await service.handle(job)
        if "error" in output:
            raise RuntimeError(f"the worker failed job {job}: {output['error']}")
        solo.append(output)
    # The case that killed vLLM 0.26's engine with its processor cache on: the same frames with other
    # sound, both in flight.
    together = await asyncio.gather(service.handle(jobs[0]), service.handle(jobs[1]))
    alive = engine.healthy
    # The control: the first case's frames and sound as the worker used to send them, the sound after.
    appended = _appended(engine, tap.requests[0].inputs, jobs[0]["prompt"])
    await engine.generate(appended, {"temperature": 0.0, "max_tokens": TOKENS}, "appended-control")
    return solo, list(together), alive


def _appended(engine: Engine, sent: dict[str, Any], prompt: str) -> dict[str, Any]:
    """The prompt dict of ``sent`` (an interleaved video with sound) with the sound as its own item after
    the frames: the worker's layout before interleaving (Qwen25OmniAdapter(audio_in_video=False))."""
    from worker.models.adapters.qwen2_5_omni import Qwen25OmniAdapter

    interleaving = ("use_audio_in_video", "second_per_grid_ts")
    kwargs = {k: v for k, v in sent["mm_processor_kwargs"].items() if k not in interleaving}
    return {
        "prompt": Qwen25OmniAdapter(audio_in_video=False).build_prompt(engine.tokenizer, prompt, "video", True),
        "multi_modal_data": dict(sent["multi_modal_data"]),
        "mm_processor_kwargs": kwargs,
    }


def _sound_length(inputs: dict[str, Any]) -> int:
    audio = (inputs.get("multi_modal_data") or {}).get("audio")
    return len(audio[0]) if audio is not None else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.devtools.parity.omni", description=__doc__)
    parser.add_argument("out", type=Path, help="where to write the JSON result")
    parser.add_argument("--model", type=Path, help="a Qwen2.5-Omni folder (default: the tiny one, seeded weights)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a new temporary one)")
    parser.add_argument("--device", default="cpu", help="the reference's device (the engine is stopped first)")
    parser.add_argument("--kv-cache-gib", type=float, default=1.0, help="the CPU engine's VLLM_CPU_KVCACHE_SPACE")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import os

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", f"{args.kv_cache_gib:g}")
    work = args.work or Path(tempfile.mkdtemp(prefix="parity-omni-"))
    folder = args.model or build_folder(work / "tiny-qwen2_5_omni")
    media = make_media(work / "media")
    settings = parity_settings(folder, [work / "media"], work / "jobs", max_num_seqs=4)
    result = run(settings, media, args.device)
    reports: list[CaseReport] = result["reports"]
    text = table([*reports, result["control"]])
    log.info("parity:\n%s\nin flight together: %s", text, result["in_flight_together"])
    log.info("layout by rate: %s", result["rates"])
    payload = {
        "reports": [r.to_json() for r in reports],
        "control": result["control"].to_json(),
        "in_flight_together": result["in_flight_together"],
        "rates": result["rates"],
        "seconds": result["seconds"],
        "table": text,
    }
    args.out.write_text(json.dumps(payload, default=json_default))
    return 0


if __name__ == "__main__":
    sys.exit(main())
