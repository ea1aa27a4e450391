"""Every supported model family end to end: tiny offline model folder, real CPU engine, jobs through the
runpod SDK's local API. (Qwen2.5-VL, the default, is covered in depth by test_local_api.py.)"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from tests.local_api import result_of, runsync, serve_api
from worker.devtools.dummy_model import build_dummy_model

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

FAMILIES = ("qwen2_vl", "qwen3_vl", "qwen2_5_omni")


@pytest.fixture(scope="module", params=FAMILIES)
def family_api(
    request: pytest.FixtureRequest, worker_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(family, URL) of a worker serving that family's tiny model; one family at a time."""
    family: str = request.param
    model = build_dummy_model(tmp_path_factory.mktemp("models") / f"tiny-{family}", family, "tiny")
    with serve_api(worker_env | {"MODEL_NAME": str(model)}, tmp_path_factory.mktemp("logs") / f"{family}.log") as url:
        yield family, url


@pytest.fixture(scope="module")
def av_clip(video: Callable[..., Path]) -> Path:
    return video("family_av.mp4", seconds=6.0, fps=10, width=96, height=64, audio="aac")


def caption(api: str, job: dict[str, object]) -> dict[str, object]:
    return result_of(runsync(api, {"max_tokens": 4, "seed": 0} | job))


def test_video_job(family_api: tuple[str, str], av_clip: Path) -> None:
    family, api = family_api
    out = caption(api, {"video": str(av_clip), "fps": 2.0, "max_frames": 8})
    meta = out["metadata"]
    assert isinstance(out["caption"], str) and meta["completion_tokens"] >= 1
    assert meta["num_frames"] == 8 and meta["media_type"] == "video"
    width, height = meta["frame_size"]
    factor = 32 if family == "qwen3_vl" else 28
    assert width % factor == 0 and height % factor == 0
    # At least the 4 temporal steps of (h/factor) x (w/factor) visual tokens reached the model.
    assert meta["prompt_tokens"] > 4 * (height // factor) * (width // factor)


def test_image_job(family_api: tuple[str, str], media_dir: Path) -> None:
    family, api = family_api
    path = media_dir / "family_photo.jpg"
    PIL.Image.fromarray(np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(path)
    meta = caption(api, {"image": str(path)})["metadata"]
    assert (meta["media_type"], meta["num_frames"], meta["video"]["codec"]) == ("image", 1, "jpeg")
    width, height = meta["frame_size"]
    factor = 32 if family == "qwen3_vl" else 28
    assert meta["prompt_tokens"] > (height // factor) * (width // factor)


def test_process_audio(family_api: tuple[str, str], av_clip: Path, video: Callable[..., Path]) -> None:
    family, api = family_api
    job = {"video": str(av_clip), "fps": 2.0, "max_frames": 4}
    without = caption(api, job)["metadata"]
    with_audio = caption(api, job | {"process_audio": True})["metadata"]
    if family != "qwen2_5_omni":
        assert with_audio["audio_processed"] is False and with_audio["prompt_tokens"] == without["prompt_tokens"]
        assert any(family in w and "no audio input" in w for w in with_audio["warnings"])
        return
    # The whole 6 s the 4 frames stand for is heard: 25 audio tokens per second, all of them in the prompt.
    assert with_audio["audio_processed"] is True
    assert not [w for w in with_audio["warnings"] if "process_audio" in w]
    assert with_audio["audio_seconds"] == pytest.approx(6.0, abs=0.05)
    assert with_audio["audio_tokens"] == pytest.approx(150, abs=1)
    assert with_audio["prompt_tokens"] - without["prompt_tokens"] >= with_audio["audio_tokens"]
    # Same frames, a shorter sound track: the prompt shrinks by exactly the audio tokens saved.
    short = video("family_av_short.mp4", seconds=6.0, fps=10, width=96, height=64, audio="aac", audio_seconds=2.0)
    short_meta = caption(api, {"video": str(short), "fps": 2.0, "max_frames": 4, "process_audio": True})["metadata"]
    assert short_meta["audio_seconds"] == pytest.approx(2.0, abs=0.05)
    assert with_audio["prompt_tokens"] - short_meta["prompt_tokens"] == (
        with_audio["audio_tokens"] - short_meta["audio_tokens"]
    )
    # No audio track at all: a plain visual caption, said so, no error.
    silent = video("family_silent.mp4", seconds=4.0, fps=10, width=96, height=64)
    silent_meta = caption(api, {"video": str(silent), "max_frames": 4, "process_audio": True})["metadata"]
    assert silent_meta["audio_processed"] is False and silent_meta["audio_seconds"] == 0.0
    assert any("no audio track" in w for w in silent_meta["warnings"])
