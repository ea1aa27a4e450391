"""The original video-SALMONN 2 without an engine: the tiny checkpoint holds exactly the authors' tensor
names, each mapped by the plugin (and nothing else accepted); the adapter's prompt, tokenized as the
plugin does, is the authors' ``preprocess_qwen`` output; and the plugin's count of the video's embeddings
equals the length of what the authors' code splices in (tests/video_salmonn2_reference.py), with and without
sound, also where the sound must be stretched over the frames and where it outlasts them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.video_salmonn2_reference import IMAGE_TOKEN_INDEX, Reference, prompt_ids
from worker.devtools.dummy_model import build_dummy_model
from worker.models.adapters.video_salmonn2 import VideoSalmonn2Adapter
from worker.models.vllm_plugin.video_salmonn2_layout import (
    DEFAULT_PLACEHOLDER_ID,
    audio_pieces,
    audio_tokens_per_piece,
    frame_tokens,
    time_strings,
    tokenize_prompt,
    video_token_count,
    vllm_weight_name,
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return Reference(build_dummy_model(tmp_path_factory.mktemp("vs2") / "tiny", "video_salmonn2", "tiny"))


def test_the_checkpoint_holds_the_authors_names(reference: Reference) -> None:
    assert reference.load == {"tensors": 170, "missing": [], "unexpected": []}
    index = json.loads((Path(reference.tokenizer.name_or_path) / "model.safetensors.index.json").read_text())
    names = set(index["weight_map"])
    assert {n.split(".")[0] for n in names} == {
        "model", "lm_head", "speech_encoder", "ln_speech", "speech_Qformer", "speech_query_tokens",
        "speech_llama_proj", "final_linear",
    }  # fmt: skip
    assert "model.vision_tower.vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight" in names
    assert "model.vision_tower.vision_tower.vision_model.encoder.layers.2.mlp.fc2.weight" not in names  # dropped
    mapped = {vllm_weight_name(n) for n in names}
    assert "multi_modal_projector.linear_2.weight" in mapped and "audio.out_head.0.weight" in mapped
    with pytest.raises(ValueError, match="unexpected tensor"):
        vllm_weight_name("speech_Qformer_extra.weight")


@pytest.mark.parametrize("question", ["Describe the video in detail.", "  What is said?  "])
def test_the_prompt_is_the_authors(reference: Reference, question: str) -> None:
    text = VideoSalmonn2Adapter().build_prompt(reference.tokenizer, question, "video", with_audio=True)
    ours = tokenize_prompt(reference.tokenizer, text, DEFAULT_PLACEHOLDER_ID)
    expected = prompt_ids(reference.tokenizer, question)
    assert [IMAGE_TOKEN_INDEX if t == DEFAULT_PLACEHOLDER_ID else t for t in ours] == expected


@pytest.mark.parametrize(
    ("frames", "real_time", "sound_seconds"),
    [(4, 4.0, None), (3, 12.5, None), (3, 2.0, 2.0), (4, 0.7, 0.7), (2, 31.0, 31.0)],
)
def test_the_embedding_count_is_the_authors(
    reference: Reference, frames: int, real_time: float, sound_seconds: float | None
) -> None:
    pixels = np.random.default_rng(0).normal(size=(frames, 3, 384, 384)).astype(np.float32)
    import torch

    from tests.video_salmonn2_reference import spectrogram

    sound = None if sound_seconds is None else np.zeros(int(sound_seconds * 16_000), dtype=np.float32)
    with torch.no_grad():
        mel = None if sound is None else spectrogram(sound, real_time)
        got = reference.media(torch.from_numpy(pixels), real_time, mel).shape[0]
    stamps = time_strings(real_time, frames)
    lengths = [len(reference.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in stamps]
    audio = 0 if sound is None else audio_pieces(min(len(sound), round(16_000 * real_time))) * audio_tokens_per_piece()
    assert video_token_count(frames, real_time, audio, lengths, frame_tokens()) == got
