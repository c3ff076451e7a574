"""Perception LM (``perception_lm``) on a tiny random model of the real HF class, saved with its
processor files to a temporary directory and loaded back through ``load_videollm``.

References are independent of the code under test: the HF model's own forward (eager attention)
on the same token ids and pixels, its own ``get_image_features`` for the frame grids, the HF
processor's own ``replace_video_token`` for where the video tokens go, and the HF model run with
explicit 4D masks for knockouts and a flow sweep.

The vision tower. Perception LM's is a timm model behind ``TimmWrapperModel``; timm needs
torchvision, which does not import beside this project's CPU torch. Where timm imports, the
tower is the real ``TimmWrapperModel`` around a tiny ``vit_pe_core`` (Perception Encoder).
Elsewhere a tiny transformers ``ViTModel`` (CLS token + patch tokens, as PE's output) stands in
for it, built in place of the timm model when ``PerceptionLMModel`` builds its tower; everything
else — the projector, the pooling, the splicing, the Llama decoder, loading from the saved
directory — is the real class. The adapter never touches the tower: it runs the HF model's own
forward and captures what reaches the decoder.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from family_checks import check_bf16, check_fast_sweep, check_flow_sweep, check_knockout
from mapflow_tl.models import VideoSample, load_videollm
from test_models_qwen import OPTIONS, QUESTION, check_logits, frames_array, hf_model_of

HF_CLASS = "PerceptionLMForConditionalGeneration"
TEXT = ("system user assistant You are a helpful assistant. Question: What does the cat do in "
        "the video? Options: (A) It runs away. (B) It sits still. (C) It jumps up. Only give the "
        "best option. Best option:(")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>", "<|image|>", "<|video|>"]
#: A Llama-3 conversation with the media entries first in the user turn.
TEMPLATE = (
    "{{- bos_token }}<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful "
    "assistant.<|eot_id|>{% for message in messages %}<|start_header_id|>{{ message['role'] }}"
    "<|end_header_id|>\n\n{% for c in message['content'] %}{% if c['type'] == 'video' %}"
    "<|video|>{% elif c['type'] == 'image' %}<|image|>{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] | trim }}"
    "{% endif %}{% endfor %}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
IMAGE, PATCH, POOLING = 32, 8, 2
GRID = (IMAGE // PATCH // POOLING,) * 2  # 4×4 patches pooled 2×2 → 2×2 tokens per frame
EMBED = 32


def timm_available() -> bool:
    try:
        import timm  # noqa: F401
    except Exception:  # noqa: BLE001 - timm without a working torchvision fails in many ways
        return False
    return True


class _StandInAutoModel:
    """``AutoModel`` for ``modeling_perception_lm``: a tiny ``ViTModel`` for the timm tower's
    config, the real ``AutoModel`` for everything else (the Llama decoder)."""

    @staticmethod
    def from_config(config, **kwargs):
        from transformers import AutoModel, ViTConfig, ViTModel

        if config.model_type != "timm_wrapper":
            return AutoModel.from_config(config, **kwargs)
        args = config.model_args
        return ViTModel(ViTConfig(hidden_size=args["embed_dim"], num_hidden_layers=args["depth"],
                                  num_attention_heads=args["num_heads"],
                                  intermediate_size=2 * args["embed_dim"],
                                  image_size=args["img_size"][0], patch_size=args["patch_size"]),
                        add_pooling_layer=False)


@pytest.fixture(scope="module", autouse=True)
def vision_tower():
    """The real timm tower where timm imports, else the stand-in (module docstring)."""
    if timm_available():
        yield "timm"
        return
    from transformers.models.perception_lm import modeling_perception_lm

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(modeling_perception_lm, "AutoModel", _StandInAutoModel)
        yield "stand-in ViTModel"


def plm_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT], trainer)
    # Like Llama 3's tokenizer, it adds <|begin_of_text|> unless told not to.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[
            ("<|begin_of_text|>", tokenizer.token_to_id("<|begin_of_text|>"))])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",
        extra_special_tokens={"image_token": "<|image|>", "video_token": "<|video|>"})
    fast.chat_template = TEMPLATE
    return fast


def build(path, pooling_ratio=POOLING):
    from transformers import PerceptionLMConfig, PerceptionLMForConditionalGeneration

    tokenizer = plm_tokenizer()
    ids = tokenizer.convert_tokens_to_ids
    config = PerceptionLMConfig(
        vision_config={"model_type": "timm_wrapper",
                       "architecture": "vit_pe_core_tiny_patch16_384",
                       "model_args": {"embed_dim": EMBED, "depth": 2, "num_heads": 2,
                                      "img_size": [IMAGE, IMAGE], "patch_size": PATCH,
                                      "ref_feat_shape": [IMAGE // PATCH] * 2},
                       "label_names": ["unused"]},  # no ImageNet labels looked up (timm)
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=48,
                         intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=1024,
                         rope_theta=500000.0, rms_norm_eps=1e-5),
        vision_use_cls_token=True, projector_pooling_ratio=POOLING,
        image_token_id=ids("<|image|>"), video_token_id=ids("<|video|>"))
    torch.manual_seed(0)
    model = PerceptionLMForConditionalGeneration(config).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # larger weights: attention far from uniform, knockouts show
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2 and "language_model" in name:
                parameter.normal_(0, 0.15)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    # transformers 5's layout: the video processor's settings nested in processor_config.json.
    (path / "processor_config.json").write_text(json.dumps({
        "processor_class": "PerceptionLMProcessor", "patch_size": PATCH,
        "pooling_ratio": pooling_ratio,
        "image_processor": {"image_processor_type": "PerceptionLMImageProcessor",
                            "tile_size": IMAGE, "max_num_tiles": 4,
                            "image_mean": [0.5] * 3, "image_std": [0.5] * 3},
        "video_processor": {"video_processor_type": "PerceptionLMVideoProcessor",
                            "size": {"height": IMAGE, "width": IMAGE}, "resample": 3,
                            "do_resize": True, "do_center_crop": False, "do_rescale": True,
                            "rescale_factor": 1 / 255, "do_normalize": True,
                            "image_mean": [0.5] * 3, "image_std": [0.5] * 3}}))
    return path


@pytest.fixture(scope="module")
def plm_dir(tmp_path_factory):
    return build(tmp_path_factory.mktemp("perception_lm"))


@pytest.fixture(scope="module")
def plm(plm_dir):
    vlm = load_videollm(plm_dir)
    x = vlm.prepare(VideoSample(frames_array(), QUESTION, OPTIONS, answer=1))
    return vlm, x, hf_model_of(plm_dir, HF_CLASS)


def test_perception_lm_logits_equal_hf(plm, vision_tower):
    vlm, x, hf_model = plm
    assert vlm.family == "Perception LM"
    print(f"perception_lm ({vision_tower}) logits max abs diff "
          f"{check_logits(vlm, hf_model, x):.1e}")


def test_perception_lm_prompt_is_the_checkpoint_template(plm):
    vlm, x, _ = plm
    options = "".join(f"({label}) {text}\n" for label, text in zip("ABC", OPTIONS))
    assert x.prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful "
        "assistant.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n<|video|>Question: "
        f"{QUESTION}\nOptions:\n{options}Only give the best option.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nBest option:(")
    seg, ids, decode = x.segments, x.input_ids[0], vlm.tokenizer.decode
    bos = vlm.tokenizer.bos_token_id
    assert vlm.tokenizer("a")["input_ids"][0] == bos  # the tokenizer would add one
    assert int(ids[0]) == bos and int((ids == bos).sum()) == 1  # the template's BOS only
    assert decode(ids[seg.question.start:seg.question.stop]).strip() == QUESTION
    assert [decode(ids[o.start:o.stop]).strip() for o in seg.options] == [
        f"({label}) {text}" for label, text in zip("ABC", OPTIONS)]
    assert seg.true_option.label == "B" and seg.last.start == x.n_positions - 1
    assert [decode([int(i)]) for i in x.answer_ids] == ["A", "B", "C"]


def test_perception_lm_video_layout_follows_the_hf_processor_and_model(plm):
    from transformers.models.perception_lm.processing_perception_lm import PerceptionLMProcessor

    vlm, x, hf_model = plm
    seg, ids = x.segments, x.input_ids[0]
    video_id = hf_model.config.video_token_id
    assert [frame.grid for frame in seg.frames] == [GRID] * 4 and not seg.separators
    assert [(f.start, f.stop) for f in seg.frames] == [
        (seg.video.start + 4 * t, seg.video.start + 4 * t + 4) for t in range(4)]
    assert bool((ids[seg.video.start:seg.video.stop] == video_id).all())
    assert int((ids == video_id).sum()) == 16  # nothing outside the video is a video token
    # Where the HF processor puts the video: its own replace_video_token on our pixels.
    inputs = x.meta["model_inputs"]
    assert inputs["pixel_values_videos"].shape == (1, 4, 3, IMAGE, IMAGE)
    processor = SimpleNamespace(patch_size=PATCH, pooling_ratio=POOLING, video_token="<|video|>")
    expected = PerceptionLMProcessor.replace_video_token(processor, inputs, 0)
    assert vlm.tokenizer.decode(ids[seg.video.start:seg.video.stop]) == expected
    # The grid the model used: its own pooled features [T, H, W, d] at frame.position.
    with torch.no_grad():
        features = hf_model.model.get_image_features(
            inputs["pixel_values_videos"]).pooler_output
    grid = features.reshape(4, *GRID, -1)
    for frame in seg.frames:
        for h in range(GRID[0]):
            for w in range(GRID[1]):
                assert torch.equal(x.embeds[0, frame.position(h, w)], grid[frame.index, h, w])


def test_perception_lm_knockout_equals_hf_with_explicit_masks(plm):
    vlm, x, hf_model = plm
    print(f"perception_lm knockout max abs diff {check_knockout(vlm, x, hf_model):.1e}")


def test_perception_lm_fast_sweep_equals_naive_sweep(plm):
    vlm, x, _ = plm
    print(f"perception_lm fast vs naive sweep max abs diff {check_fast_sweep(vlm, x):.1e}")


def test_perception_lm_flow_sweep_matches_hf_with_explicit_masks(plm):
    vlm, x, hf_model = plm
    print(f"perception_lm flow sweep p_true max abs diff "
          f"{check_flow_sweep(vlm, x, hf_model):.1e}")


def test_perception_lm_bf16_runs_close_to_hf_bf16(plm_dir):
    check_bf16(plm_dir, HF_CLASS, VideoSample(frames_array(), QUESTION, OPTIONS, answer=1),
               hf_model_of)


def test_perception_lm_refuses_a_processor_with_another_pooling(tmp_path):
    path = build(tmp_path / "model", pooling_ratio=1)
    with pytest.raises(ValueError, match="pooling_ratio 1 is not the model's"):
        load_videollm(path)


@pytest.mark.parametrize("resample, torchvision_digests", [
    (3, {(5, 6): "3eb6cdb97ef81ca3b386c6f5f7edc6de62b9049bc33fdf3ed6aaddd9f1dba23b",
         (16, 20): "8321183cd9e416df0a8dd9922eca0063c1c3654963d6504c938333de64dab675"}),
    (1, {(5, 6): "9ade38d0e2e5117cab2bc5c5fdf99ba205cb8c339a9165e3235696cfdb5907f3",
         (16, 20): "45a4b0848047f8b02999a09734ffacf73f0696b4b337315eb00634427ab81f4c"}),
], ids=["bicubic", "lanczos"])
def test_resize_is_torchvisions(resample, torchvision_digests):
    """Frames resized as torchvision 0.29.1 resizes them on CPU (``F.resize``, antialias, uint8
    in and out), the processors' path where torchvision is installed: bicubic (Perception LM &
    co.) and LANCZOS (SmolVLM2). The references are sha256 digests of torchvision's own outputs
    for these frames (regenerate with ``hashlib.sha256(F.resize(x, size, interpolation=...,
    antialias=True).numpy().tobytes())``); a float resize rounded back to uint8 is up to 13
    grey levels off for bicubic, Pillow's LANCZOS one level."""
    import hashlib

    import numpy as np

    from mapflow_tl.models.pixels import resize_and_normalize

    frames = torch.from_numpy(np.random.RandomState(7).randint(0, 256, (2, 3, 11, 13),
                                                               dtype=np.uint8))
    for size, digest in torchvision_digests.items():
        resized = resize_and_normalize(frames, size, resample=resample, do_rescale=False,
                                       do_normalize=False).to(torch.uint8)
        assert hashlib.sha256(resized.contiguous().numpy().tobytes()).hexdigest() == digest


def test_perception_lm_defaults_are_the_video_processors():
    """Settings a checkpoint's file leaves out take PerceptionLMVideoProcessor's own defaults."""
    from transformers.models.perception_lm.video_processing_perception_lm import (
        PerceptionLMVideoProcessor,
    )

    from mapflow_tl.models.perception_lm import PerceptionLMAdapter

    processor, ours = PerceptionLMVideoProcessor(), PerceptionLMAdapter.video_defaults
    assert ours["size"] == {k: v for k, v in dict(processor.size).items() if v is not None}
    assert ours["resample"] == processor.resample
    assert ours["image_mean"] == list(processor.image_mean)
    assert ours["image_std"] == list(processor.image_std)
    assert not processor.do_center_crop and processor.do_resize and processor.do_normalize
