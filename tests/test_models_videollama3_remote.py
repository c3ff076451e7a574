"""VideoLLaMA3's remote-code release (``videollama3_qwen2``) loaded without its remote code.

The checkpoint is written by hand the way the remote code saves one: a tiny random native
``VideoLlama3ForConditionalGeneration`` whose weights are renamed to the remote modules' names
(``Videollama3Qwen2ForCausalLM``: ``model.vision_encoder.*``, ``model.mm_projector.readout.*``,
the Qwen2 decoder under ``model.*``), a ``Videollama3Qwen2Config``-style config.json and the remote
processor's ``preprocessor_config.json`` / ``processor_config.json``. References: the native HF
model with the original names (its own forward, and with explicit 4D masks for knockouts), Pillow
for the frames' resize.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_models_qwen import (OPTIONS, QUESTION, byte_level_tokenizer, check_layout, check_logits,
                              frames_array, hf_model_of, qwen_template, scale_up, tiny_qwen2)

import mapflow_tl as mf
from mapflow_tl.errors import InputError
from mapflow_tl.models import VideoSample, load_videollm
from mapflow_tl.testing import additive_mask, block_mask, hf_logits_with_layer_masks

#: Native name → the remote release's, as its modules name them (Videollama3Qwen2ForCausalLM:
#: Qwen2ForCausalLM with ``model.vision_encoder`` and ``model.mm_projector`` beside the decoder).
REMOTE_NAMES = (("model.vision_model.", "model.vision_encoder."),
                ("model.projector.", "model.mm_projector."),
                ("model.language_model.", "model."),
                ("lm_head.", "lm_head."))
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
              patch_size=8)


def remote_name(name: str) -> str:
    native, remote = next(pair for pair in REMOTE_NAMES if name.startswith(pair[0]))
    return remote + name[len(native):]


def write_remote(path, state: dict[str, torch.Tensor], config: dict, tokenizer) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, path / "model.safetensors")
    (path / "config.json").write_text(json.dumps(config))
    tokenizer.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Videollama3ImageProcessor", "patch_size": 8,
        "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "min_tokens": 4, "max_tokens": 64,
        "resample": 3}))
    (path / "processor_config.json").write_text(json.dumps({
        "processor_class": "Videollama3Qwen2Processor", "image_merge_size": 1,
        "video_merge_size": 2, "fps": 1}))


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """(remote dir, native dir, remote config, remote state, tokenizer)."""
    from transformers import VideoLlama3Config, VideoLlama3ForConditionalGeneration

    tokenizer = byte_level_tokenizer(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"],
                                     {}, qwen_template("<image>"))
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    text = tiny_qwen2(len(tokenizer))
    config = VideoLlama3Config(vision_config=VISION, text_config=text, image_token_id=image_id,
                               video_token_id=image_id)
    torch.manual_seed(0)
    model = VideoLlama3ForConditionalGeneration(config).eval()
    scale_up(model)
    native_dir = tmp_path_factory.mktemp("native")
    model.save_pretrained(native_dir)
    state = {remote_name(k): v.clone() for k, v in model.state_dict().items()}
    remote_config = {
        **{k: v for k, v in text.items() if k != "model_type"},
        "model_type": "videollama3_qwen2", "architectures": ["Videollama3Qwen2ForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_videollama3.Videollama3Qwen2Config",
                     "AutoModelForCausalLM": "modeling_videollama3.Videollama3Qwen2ForCausalLM"},
        "vision_encoder": None,
        "vision_encoder_config": {**VISION, "model_type": "videollama3_vision_encoder",
                                  "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6},
        "mm_projector_type": "mlp2x_gelu", "use_token_compression": True,
        "image_token_index": image_id, "tie_word_embeddings": False,
        "torch_dtype": "float32"}
    remote_dir = tmp_path_factory.mktemp("videollama3_qwen2")
    write_remote(remote_dir, state, remote_config, tokenizer)
    return remote_dir, native_dir, remote_config, state, tokenizer


@pytest.fixture(scope="module")
def loaded(remote):
    remote_dir, native_dir = remote[:2]
    vlm = load_videollm(remote_dir)
    frames = frames_array(4, 32, 48, seed=3)
    x = vlm.prepare(VideoSample(frames, QUESTION, OPTIONS, answer=2))
    return vlm, x, hf_model_of(native_dir, "VideoLlama3ForConditionalGeneration")


def test_remote_release_logits_equal_the_native_model(loaded):
    vlm, x, hf_model = loaded
    assert type(vlm.adapter).__name__ == "VideoLlama3RemoteAdapter"
    check_layout(x, hf_model.config.video_token_id)
    assert all(len(frame) == frame.grid[0] * frame.grid[1] for frame in x.segments.frames)
    check_logits(vlm, hf_model, x)


def test_remote_release_knockout_equals_hf_with_explicit_masks(loaded):
    vlm, x, hf_model = loaded
    seg, n = x.segments, x.n_positions
    got = vlm.run_with_hooks(x, mf.knockout(mf.cross_frame(seg, frame_text=False), [1]))
    blocked = block_mask(n, [(seg.frames[s].positions, seg.frames[d].positions)
                             for d in range(len(seg.frames)) for s in range(d)])
    heads = hf_model.config.text_config.num_attention_heads
    expected = hf_logits_with_layer_masks(
        hf_model, {1: additive_mask(n, blocked, heads)}, additive_mask(n, None, heads),
        input_ids=x.input_ids, **x.meta["model_inputs"])
    assert (got - vlm.run_with_hooks(x)).abs().max() > 1e-3
    assert (got - expected).abs().max().item() <= 1e-4


def test_remote_release_frames_are_resized_with_pillow(remote):
    """The remote image processor resizes with Pillow bicubic, rescales, normalises; under the
    checkpoint's own budget (max_tokens 64 tokens of 16×16 px over 4 frames) 36×52 frames go to
    32×48."""
    from PIL import Image

    from mapflow_tl.models.pixels import patchify

    vlm = load_videollm(remote[0], max_visual_tokens=None)
    frames = frames_array(4, 36, 52, seed=5)
    x = vlm.prepare(VideoSample(frames, QUESTION, OPTIONS, answer=0))
    resized = np.stack([np.asarray(Image.fromarray(f).resize((48, 32), Image.BICUBIC))
                        for f in frames]).astype(np.float32)
    pixels = torch.from_numpy((resized / 255 - 0.5) / 0.5).permute(0, 3, 1, 2)
    expected, grid = patchify(pixels, 8, 2, 1)
    assert grid == (4, 4, 6)
    got = x.meta["model_inputs"]["pixel_values_videos"]
    assert (got - expected).abs().max().item() <= 1e-6


def rewrite(remote, tmp_path, *, config=None, state=None):
    remote_dir, _, remote_config, remote_state, tokenizer = remote
    path = tmp_path / "changed"
    write_remote(path, remote_state if state is None else state,
                 {**remote_config, **(config or {})}, tokenizer)
    return path


@pytest.mark.parametrize("change, named", [
    ({"mm_projector_type": "linear"}, "mm_projector_type is 'linear'"),
    ({"vision_encoder_config": {}, "vision_encoder": "DAMO-NLP-SG/SigLIP-NaViT"},
     "vision_encoder_config.*SigLIP-NaViT"),
    ({"architectures": ["Videollama3MistralForCausalLM"]}, "architectures"),
    ({"image_token_index": -1}, "image_token_index"),
])
def test_remote_release_fields_the_native_classes_cannot_hold_are_refused(remote, tmp_path,
                                                                          change, named):
    with pytest.raises(InputError, match=named):
        load_videollm(rewrite(remote, tmp_path, config=change))


def test_remote_release_weights_that_do_not_map_are_refused_by_name(remote, tmp_path):
    state = dict(remote[3])
    state["model.vision_encoder.head.probe"] = torch.zeros(1, 1, 32)
    with pytest.raises(InputError, match=r"unmapped \['model.vision_encoder.head.probe'\]"):
        load_videollm(rewrite(remote, tmp_path, state=state))
    state = dict(remote[3])
    del state["model.mm_projector.readout.2.bias"]
    with pytest.raises(InputError, match="without a source.*model.projector.readout.2.bias"):
        load_videollm(rewrite(remote, tmp_path, state=state))
    shutil.rmtree(tmp_path / "changed")


def test_remote_release_loads_without_asking_to_run_its_code(remote, capfd):
    """Its config.json names remote code (auto_map): the tokenizer load must not offer to run it
    (transformers prints "Do you wish to run the custom code?" and waits for an answer)."""
    load_videollm(remote[0])
    captured = capfd.readouterr()
    assert "custom code" not in captured.out + captured.err
