"""Qwen2-VL / Qwen2.5-VL under 3D rotary positions (M-RoPE) on tiny random models of the real HF
classes (Qwen3-VL: tests/test_models_qwen3_vl.py).

References: the HF model's own forward (eager attention, its own M-RoPE position ids) on the same
token ids and pixels; the HF processor's ``replace_video_token``; the HF model with explicit 4D
masks for a knockout.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import mapflow_tl as mf
from family_checks import check_generate, check_open_ended_knockout
from mapflow_tl.models import VideoSample, load_videollm
from mapflow_tl.models.backbone import run_from_embeds
from mapflow_tl.testing import additive_mask, block_mask, hf_logits_with_layer_masks
from test_models_qwen import (OPTIONS, QUESTION, byte_level_tokenizer, check_layout, check_logits,
                              frames_array, hf_model_of, scale_up)

CLASSES = {"qwen2_vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration"),
           "qwen2_5_vl": ("Qwen2_5_VLConfig", "Qwen2_5_VLForConditionalGeneration")}
VISION = {
    "qwen2_vl": dict(depth=2, embed_dim=32, hidden_size=48, num_heads=2, mlp_ratio=2,
                     patch_size=8, spatial_merge_size=2, temporal_patch_size=2),
    "qwen2_5_vl": dict(depth=2, hidden_size=32, out_hidden_size=48, intermediate_size=64,
                       num_heads=2, patch_size=8, spatial_merge_size=2, temporal_patch_size=2,
                       window_size=32, fullatt_block_indexes=[1], tokens_per_second=4),
}


def vision_template() -> str:
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% for c in message['content'] %}{% if c['type'] == 'video' %}"
        "<|vision_start|><|video_pad|><|vision_end|>"
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def build(model_type: str, path):
    import transformers

    config_class, model_class = (getattr(transformers, name) for name in CLASSES[model_type])
    tokenizer = byte_level_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
         "<|video_pad|>", "<|image_pad|>"],
        {"video_token": "<|video_pad|>", "image_token": "<|image_pad|>"}, vision_template())
    ids = tokenizer.convert_tokens_to_ids
    config = config_class(
        vision_config=VISION[model_type],
        text_config=dict(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000.0,
                                          "mrope_section": [2, 2, 2]}),
        video_token_id=ids("<|video_pad|>"), image_token_id=ids("<|image_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(0)
    model = model_class(config).eval()
    scale_up(model)
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.bias.normal_(0, 0.5)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    # 32×48 frames stay 32×48 (multiples of 16); pairs of frames, 4×6 patches merged to 2×3.
    (path / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "Qwen2VLVideoProcessor",
        "size": {"shortest_edge": 16 * 16, "longest_edge": 64 * 64}, "patch_size": 8,
        "merge_size": 2, "temporal_patch_size": 2, "resample": 3, "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3}))
    return path


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def qwen_vl(request, tmp_path_factory):
    path = build(request.param, tmp_path_factory.mktemp(request.param))
    vlm = load_videollm(path)
    x = vlm.prepare(VideoSample(frames_array(4, 32, 48), QUESTION, OPTIONS, answer=1))
    return vlm, x, hf_model_of(path, CLASSES[request.param][1])


def test_mrope_logits_equal_hf(qwen_vl):
    vlm, x, hf_model = qwen_vl
    positions = x.meta["position_ids"][:, 0]
    sequential = torch.arange(x.n_positions)
    assert not torch.equal(positions[0], sequential)  # the positions really are 3D
    assert not torch.equal(positions[1], positions[2])
    check_logits(vlm, hf_model, x)


def test_mrope_layout_follows_the_hf_processor(qwen_vl):
    from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

    vlm, x, hf_model = qwen_vl
    seg = x.segments
    check_layout(x, hf_model.config.video_token_id)
    assert [frame.grid for frame in seg.frames] == [(2, 3), (2, 3)]  # 4 frames → 2 token frames
    assert not seg.separators and x.meta["input_frames_per_frame"] == 2
    assert [frame.source_frames for frame in seg.frames] == [(0, 1), (2, 3)]
    processor = SimpleNamespace(video_processor=SimpleNamespace(merge_size=2),
                                video_token="<|video_pad|>")
    expected = Qwen2VLProcessor.replace_video_token(processor, x.meta["model_inputs"], 0)
    assert vlm.tokenizer.decode(x.input_ids[0, seg.video.start:seg.video.stop]) == expected
    # M-RoPE height/width coordinates follow each frame's grid, row-major.
    positions = x.meta["position_ids"][:, 0]
    for frame in seg.frames:
        rows = positions[1, frame.start:frame.stop] - positions[1, frame.start]
        columns = positions[2, frame.start:frame.stop] - positions[2, frame.start]
        assert rows.tolist() == [0, 0, 0, 1, 1, 1] and columns.tolist() == [0, 1, 2] * 2


def test_mrope_positions_are_bound_to_their_sample(qwen_vl):
    vlm, x, hf_model = qwen_vl
    other = vlm.prepare(VideoSample(frames_array(2, 32, 32, seed=5), "Where is it?",
                                    ["Left.", "Right."], answer=0))
    assert other.n_positions != x.n_positions
    check_logits(vlm, hf_model, x)  # x's own positions again, after another sample was prepared
    check_logits(vlm, hf_model, other)
    with pytest.raises(ValueError, match="not produced by vlm.prepare"):
        run_from_embeds(vlm.backbone, x.embeds + 0.5)
    # A mid-stack forward (the sweep engine's pattern) reuses the sample's positions.
    store = {}
    full = run_from_embeds(vlm.backbone, x.embeds, fwd_hooks=mf.capture(
        "blocks.1.hook_resid_pre", store))
    resumed = vlm.backbone(store["blocks.1.hook_resid_pre"], start_at_layer=1)
    assert (resumed - full).abs().max().item() <= 1e-5


def test_mrope_knockout_equals_hf_with_explicit_masks(qwen_vl):
    vlm, x, hf_model = qwen_vl
    seg = x.segments
    edges = mf.cross_frame(seg) | mf.Edges(src=seg.video, dst=seg.last)
    got = vlm.run_with_hooks(x, mf.knockout(edges, [0, 1]))
    n = x.n_positions
    blocked = block_mask(n, [(seg.frames[0].positions, seg.frames[1].positions),
                             (seg.video.positions, [n - 1])])
    heads = hf_model.config.text_config.num_attention_heads
    masks = {layer: additive_mask(n, blocked, heads) for layer in (0, 1)}
    expected = hf_logits_with_layer_masks(hf_model, masks, additive_mask(n, None, heads),
                                          input_ids=x.input_ids, **x.meta["model_inputs"])
    assert (got - vlm.run_with_hooks(x)).abs().max() > 1e-3
    assert (got - expected).abs().max().item() <= 1e-4


def test_mrope_fast_sweep_equals_naive_sweep(qwen_vl):
    """The fast sweep's mid-stack suffix forwards from a key/value cache keep the sample's 3D
    positions: they give the naive sweep's logits."""
    from mapflow_tl.engine import layer_sweep, sweep

    vlm, x, _ = qwen_vl
    seg = x.segments
    configs = layer_sweep({"cross_frame": mf.cross_frame(seg),
                           "video_to_last": mf.Edges(src=seg.video, dst=seg.last)},
                          vlm.n_layers, k=1)
    fast = sweep(vlm.backbone, x.embeds, configs, method="fast")
    naive = sweep(vlm.backbone, x.embeds, configs, method="naive")
    assert (fast - naive).abs().max().item() <= 1e-4
    assert (naive - vlm.run_with_hooks(x)[0, -1]).abs().max() > 1e-4  # knockouts act


def test_mrope_bf16_runs_close_to_hf_bf16(qwen_vl, tmp_path):
    vlm, x, hf_model = qwen_vl
    path = tmp_path / "model"
    hf_model.save_pretrained(path)
    vlm.tokenizer.save_pretrained(path)
    (path / "video_preprocessor_config.json").write_text(
        json.dumps(vlm.adapter.video_config))
    low = load_videollm(path, dtype=torch.bfloat16)
    y = low.prepare(VideoSample(frames_array(4, 32, 48), QUESTION, OPTIONS, answer=1))
    assert y.embeds.dtype == torch.bfloat16 and low.backbone.cfg.dtype == torch.bfloat16
    hf_low = hf_model_of(path, CLASSES[vlm.adapter.config["model_type"]][1]).to(torch.bfloat16)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
              for k, v in y.meta["model_inputs"].items()}
    with torch.no_grad():
        expected = hf_low(input_ids=y.input_ids, **inputs).logits.float()
    got = low.run_with_hooks(y).float()
    assert (got - expected).abs().max().item() < 0.15  # bf16 rounding, not wrong positions
    # The same answer up to a bf16 tie: the token we pick is, in HF's own logits, within one bf16
    # step (2^-7 relative) of HF's best (the random model's top two can be one step apart).
    best = expected[0, -1].max()
    ours = expected[0, -1, got[0, -1].argmax()]
    assert best - ours <= best.abs() * 2 ** -7


def test_mrope_generate_and_teacher_forced_answer_equal_hf(qwen_vl):
    """Greedy generation (cache and no cache) = HF's own generate, the appended tokens at HF's
    3D positions, and the teacher-forced answer's logits = HF's forward on the whole sequence."""
    vlm, x, hf_model = qwen_vl
    check_generate(vlm, x, hf_model)


def test_mrope_open_ended_knockout_equals_hf_with_explicit_masks(qwen_vl):
    vlm, x, hf_model = qwen_vl
    check_open_ended_knockout(vlm, x, hf_model)


def test_mrope_knockout_during_generation_cache_equals_no_cache(qwen_vl):
    """A knockout kept on while generating under M-RoPE: the key/value-cached steps (each
    continuing the sample's 3D positions) give the tokens and logits of full recomputation, and
    the first step is the prompt's knockout."""
    from mapflow_tl.hooks import knockout_during_generation

    vlm, x, hf_model = qwen_vl
    cut = mf.Edges(src=x.segments.video, dst=x.segments.last)
    hooks = knockout_during_generation(cut, [0, 1], x.n_positions, n_layers=vlm.n_layers)
    cached, cached_logits = vlm.generate(x, 4, fwd_hooks=hooks, stop_ids=[])
    full, full_logits = vlm.generate(x, 4, fwd_hooks=hooks, use_cache=False, stop_ids=[])
    assert cached.tolist() == full.tolist()
    assert (cached_logits - full_logits).abs().max() <= 1e-4
    first = vlm.run_with_hooks(x, mf.knockout(cut, [0, 1]))[0, -1]
    assert (first - cached_logits[0]).abs().max() <= 1e-4
    assert (first - vlm(x)[0, -1]).abs().max() > 1e-3  # the knockout acts
