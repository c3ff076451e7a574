"""The SynthTV model organism (a tiny ``LlavaNextVideoForConditionalGeneration`` with a word-level
tokenizer) loads as-is through the LLaVA-NeXT-Video adapter, with the exact prompt SynthTV was
trained on and the HF model's own logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mapflow_tl.models import VideoSample, load_videollm

build = pytest.importorskip("mapflow_tl.synthtv.build")


@pytest.fixture(scope="module")
def synthtv_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthtv")
    tokenizer = build.build_tokenizer()
    model = build.build_model(tokenizer=tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    for name, data in build.processor_files().items():
        (path / name).write_text(json.dumps(data))
    return path


def test_synthtv_loads_and_matches_its_hf_model_and_training_prompt(synthtv_dir):
    from transformers import LlavaNextVideoForConditionalGeneration

    vlm = load_videollm(synthtv_dir)
    size = build.ModelConfig().image_size
    frames = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    question, options = "what does the red circle do ?", ["it grows", "it shrinks"]
    x = vlm.prepare(VideoSample(frames, question, options, answer=1))

    # the prompt SynthTV was trained on, token for token
    n_video = build.tokens_per_frame(build.ModelConfig()) * 8
    trained = build.prompt_text(question, options).replace("<video>", "<video>" * n_video)
    assert x.input_ids[0].tolist() == vlm.tokenizer(trained)["input_ids"]
    assert x.answer_ids.tolist() == [vlm.tokenizer.convert_tokens_to_ids(letter)
                                     for letter in ("A", "B")]
    side = int(build.tokens_per_frame(build.ModelConfig()) ** 0.5)
    assert [f.grid for f in x.segments.frames] == [(side, side)] * 8

    # frames already at the model's resolution: the pixels are SynthTV's own normalisation
    pixels = build.normalize_frames(frames)
    assert (x.meta["pixel_values_videos"][0] - pixels).abs().max() <= 1e-5
    hf = LlavaNextVideoForConditionalGeneration.from_pretrained(
        synthtv_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        reference = hf(input_ids=x.input_ids, pixel_values_videos=pixels[None]).logits
    assert (vlm(x) - reference).abs().max() <= 1e-4



def test_n_devices_refused_clearly_without_enough_gpus(synthtv_dir):
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="n_devices must be a positive integer"):
            load_videollm(synthtv_dir, n_devices=bad)
    with pytest.raises(ValueError, match="device='cuda'"):
        load_videollm(synthtv_dir, n_devices=2, device="cpu")
    if torch.cuda.device_count() < 2:
        with pytest.raises(ValueError, match=r"n_devices=2 needs 2 CUDA GPUs; this machine has"):
            load_videollm(synthtv_dir, n_devices=2, device="cuda")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_n_devices_split_matches_one_device(synthtv_dir):
    """``n_devices=2``: the backbone's blocks on two GPUs (vision on the first); clean logits
    and a fast knockout sweep equal the single-GPU model's."""
    from mapflow_tl import edges as E
    from mapflow_tl.engine import layer_sweep, sweep

    one = load_videollm(synthtv_dir, device="cuda")
    two = load_videollm(synthtv_dir, device="cuda", n_devices=2)
    assert {p.device for p in two.backbone.blocks[0].parameters()} != \
        {p.device for p in two.backbone.blocks[-1].parameters()}
    size = build.ModelConfig().image_size
    frames = np.random.default_rng(1).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    sample = VideoSample(frames, "which way does the red circle move ?", ["leftward", "upward"],
                         answer=0)
    x1, x2 = one.prepare(sample), two.prepare(sample)
    assert (one(x1).cpu() - two(x2).cpu()).abs().max() <= 1e-5
    configs = layer_sweep({"cross-frame": E.cross_frame(x1.segments),
                           "question->last": E.question_to_last(x1.segments)},
                          one.n_layers, k=3)
    clean = sweep(one.backbone, x1.embeds, configs).cpu()
    split = sweep(two.backbone, x2.embeds, configs).cpu()
    assert (clean - split).abs().max() <= 1e-5
