"""GLM-4.1V on a tiny random model of the real HF classes: sandwich norms (post-attention and
post-MLP RMSNorm) as TransformerLens' ``ln1_post`` / ``ln2_post``, partial M-RoPE rotating
adjacent pairs, per-frame timestamp text, video features on ``<|image|>`` tokens.

References: ``Glm4vForConditionalGeneration``'s own forward (eager attention, its own position
ids) on the same token ids and pixels; ``Glm4vProcessor.replace_video_token`` for the video's
text; the HF model with explicit 4D masks per layer for knockouts; the naive sweep for the fast
one; the HF model in bf16.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import mapflow_tl as mf
from family_checks import (check_bf16, check_fast_sweep, check_flow_sweep, check_generate,
                           check_knockout, check_open_ended_knockout)
from mapflow_tl.models import VideoSample, load_videollm
from mapflow_tl.models.backends import default_backend
from test_models_qwen import (OPTIONS, QUESTION, byte_level_tokenizer, check_layout, check_logits,
                              frames_array, hf_model_of, scale_up)

# Runs on both TransformerLens backends (`make test-bridge` includes this module); the tests of
# the hooked restatement's own parts are marked hooked_backend, the bridge's twin is
# test_glm4v_bridge_rotates_with_the_hf_table_layout.

CLASS = "Glm4vForConditionalGeneration"
N_FRAMES = 4
SPECIALS = ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>",
            "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
            "<|image|>", "<|video|>"]


def glm_template() -> str:
    """GLM-4.1V's chat template reduced to what a one-turn prompt uses: ``[gMASK]<sop>``, the
    user turn with the video wrapped in begin/end-of-video, the assistant turn."""
    return (
        "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% for c in m['content'] %}{% if c['type'] == 'video' %}"
        "<|begin_of_video|><|video|><|end_of_video|>"
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def build(path, *, text: dict | None = None):
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration

    tokenizer = byte_level_tokenizer(SPECIALS, {"video_token": "<|video|>",
                                                "image_token": "<|image|>"}, glm_template())
    ids = tokenizer.convert_tokens_to_ids
    config = Glm4vConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                           patch_size=8, spatial_merge_size=2, temporal_patch_size=2,
                           out_hidden_size=48, image_size=32),
        # head_dim 12, half of it rotated: 3 frequency pairs, one per axis (t, h, w)
        text_config=dict(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000.0,
                                          "mrope_section": [1, 1, 1],
                                          "partial_rotary_factor": 0.5}, **(text or {})),
        image_token_id=ids("<|image|>"), video_token_id=ids("<|video|>"),
        image_start_token_id=ids("<|begin_of_image|>"),
        image_end_token_id=ids("<|end_of_image|>"),
        video_start_token_id=ids("<|begin_of_video|>"),
        video_end_token_id=ids("<|end_of_video|>"))
    torch.manual_seed(0)
    model = Glm4vForConditionalGeneration(config).eval()
    scale_up(model)
    with torch.no_grad():  # post norms far from identity, so that leaving one out shows
        for name, parameter in model.named_parameters():
            if "post_self_attn_layernorm" in name or "post_mlp_layernorm" in name:
                parameter.uniform_(0.3, 2.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    # 32×48 frames stay 32×48 (multiples of 16): 4×6 patches merged to 2×3 per token frame.
    (path / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "Glm4vVideoProcessor",
        "size": {"shortest_edge": 16 * 16, "longest_edge": 4 * 64 * 64}, "patch_size": 8,
        "merge_size": 2, "temporal_patch_size": 2, "resample": 3}))
    return path


@pytest.fixture(scope="module")
def glm_dir(tmp_path_factory):
    return build(tmp_path_factory.mktemp("glm4v"))


def sample():
    return VideoSample(frames_array(N_FRAMES, 32, 48), QUESTION, OPTIONS, answer=1)


@pytest.fixture(scope="module")
def glm(glm_dir):
    vlm = load_videollm(glm_dir)
    return vlm, vlm.prepare(sample()), hf_model_of(glm_dir, CLASS)


def test_glm4v_logits_equal_hf_own_forward(glm):
    vlm, x, hf_model = glm
    cfg = vlm.backbone.cfg
    assert cfg.use_normalization_before_and_after and cfg.rotary_adjacent_pairs
    assert cfg.rotary_dim == 6 and cfg.d_head == 12
    positions = x.meta["position_ids"][:, 0]
    assert not torch.equal(positions[1], positions[2])  # the positions really are 3D
    diff = check_logits(vlm, hf_model, x)
    print(f"glm4v fp32 logits max |diff| vs HF: {diff:.2e}")


@pytest.mark.hooked_backend("the HookedTransformer's restated post norms and pair rotation")
def test_glm4v_post_norms_and_pair_rotation_matter(glm):
    """Each ingredient of the restatement changes the logits when left out (so the equality
    above is not an accident of the random model): without a post norm, or rotating halves
    instead of adjacent pairs, the backbone is no longer the HF model."""
    vlm, x, _ = glm
    exact = vlm.run_with_hooks(x)
    block = vlm.backbone.blocks[1]
    for norm in (block.ln1_post, block.ln2_post):
        saved = norm.forward
        norm.forward = lambda t, norm=norm: t  # the plain Llama block
        try:
            assert (vlm.run_with_hooks(x) - exact).abs().max() > 1e-2
        finally:
            norm.forward = saved
    vlm.backbone.cfg.rotary_adjacent_pairs = False
    try:
        assert (vlm.run_with_hooks(x) - exact).abs().max() > 1e-3
    finally:
        vlm.backbone.cfg.rotary_adjacent_pairs = True


@pytest.mark.skipif(default_backend() != "bridge", reason="the bridge's rotary layout")
def test_glm4v_bridge_rotates_with_the_hf_table_layout(glm):
    """On the bridge, TransformerLens reconstructs the attention (so hook_attn_scores edits reach
    the softmax) and rotates adjacent pairs with the HF tables in their own layout: GLM-4.1V's
    M-RoPE module returns them interleaved ([c0, c0, c1, c1, ...], read off the HF module here);
    read as half-duplicated instead, the logits are no longer HF's."""
    vlm, x, hf_model = glm
    rotary = hf_model.model.language_model.rotary_emb
    with torch.no_grad():
        cos, _ = rotary(torch.zeros(1), torch.arange(4)[None])
    assert torch.equal(cos[..., 0::2], cos[..., 1::2])  # HF's own layout: interleaved
    assert not torch.equal(cos[..., :3], cos[..., 3:])
    configs = {id(block.attn.config): block.attn.config for block in vlm.backbone.blocks}
    assert all(c.rotary_interleaved_cos_sin for c in configs.values())
    exact = vlm.run_with_hooks(x)
    for config in configs.values():
        config.rotary_interleaved_cos_sin = False
    try:
        assert (vlm.run_with_hooks(x) - exact).abs().max() > 1e-2
    finally:
        for config in configs.values():
            config.rotary_interleaved_cos_sin = True
    assert torch.equal(vlm.run_with_hooks(x), exact)


def test_glm4v_attn_out_is_what_hf_adds_to_the_residual(glm):
    """``hook_attn_out`` holds HF's post-norm attention output (what is added to the stream)."""
    vlm, x, hf_model = glm
    layer = hf_model.model.language_model.layers[1]
    seen = {}
    handle = layer.post_self_attn_layernorm.register_forward_hook(
        lambda module, args, out: seen.setdefault("hf", out.clone()))
    try:
        with torch.no_grad():
            hf_model(input_ids=x.input_ids, **x.meta["model_inputs"])
    finally:
        handle.remove()
    _, cache = vlm.run_with_cache(x, names_filter="blocks.1.hook_attn_out")
    assert (cache["blocks.1.hook_attn_out"] - seen["hf"]).abs().max().item() <= 1e-5


def test_glm4v_layout_follows_the_hf_processor(glm):
    from transformers.models.glm4v.processing_glm4v import Glm4vProcessor
    from transformers.video_utils import VideoMetadata

    vlm, x, hf_model = glm
    seg = x.segments
    check_layout(x, hf_model.config.image_token_id)
    assert [frame.grid for frame in seg.frames] == [(2, 3), (2, 3)]  # 4 frames → 2 token frames
    assert [frame.source_frames for frame in seg.frames] == [(0, 1), (2, 3)]
    processor = SimpleNamespace(
        video_processor=SimpleNamespace(merge_size=2), image_token="<|image|>",
        replace_frame_token_id=lambda *a, **k: Glm4vProcessor.replace_frame_token_id(
            SimpleNamespace(image_token="<|image|>"), *a, **k))
    inputs = {**x.meta["model_inputs"], "video_metadata": [VideoMetadata(
        total_num_frames=N_FRAMES, fps=None, frames_indices=list(range(N_FRAMES)))]}
    expected = Glm4vProcessor.replace_video_token(processor, inputs, 0)
    video = vlm.tokenizer.decode(x.input_ids[0, seg.video.start:seg.video.stop])
    assert video == expected
    # the template's own wrapper stays around the expansion
    assert vlm.tokenizer.decode(x.input_ids[0, :seg.video.start]).endswith("<|begin_of_video|>")
    assert vlm.tokenizer.decode(x.input_ids[0, seg.video.stop]) == "<|end_of_video|>"
    decoded = [vlm.tokenizer.decode(x.input_ids[0, s.start:s.stop]) for s in seg.separators]
    assert decoded == ["<|begin_of_image|>", "<|end_of_image|>0<|begin_of_image|>",
                       "<|end_of_image|>0"]
    # the processor's token types, from which HF computes M-RoPE
    ids = x.input_ids[0]
    types = x.meta["model_inputs"]["mm_token_type_ids"][0]
    assert torch.equal(types == 2, ids == hf_model.config.image_token_id)
    positions = x.meta["position_ids"][:, 0]
    for frame in seg.frames:
        rows = positions[1, frame.start:frame.stop] - positions[1, frame.start]
        columns = positions[2, frame.start:frame.stop] - positions[2, frame.start]
        assert rows.tolist() == [0, 0, 0, 1, 1, 1] and columns.tolist() == [0, 1, 2] * 2


def test_glm4v_each_frame_holds_its_own_features(glm):
    """Frame t's positions receive the t-th token frame of the model's own video features."""
    vlm, x, hf_model = glm
    inputs = x.meta["model_inputs"]
    with torch.no_grad():
        features = hf_model.model.get_video_features(
            inputs["pixel_values_videos"], inputs["video_grid_thw"]).pooler_output[0]
    cursor = 0
    for frame in x.segments.frames:
        count = frame.stop - frame.start
        got = x.embeds[0, frame.start:frame.stop]
        assert (got - features[cursor:cursor + count]).abs().max().item() == 0.0
        cursor += count
    assert cursor == features.shape[0]
    assert (features[:6] - features[6:12]).abs().max() > 1e-3  # frames differ


def test_glm4v_odd_frame_count_repeats_the_last_frame(glm):
    vlm, _, hf_model = glm
    y = vlm.prepare(VideoSample(frames_array(5, 32, 48, seed=3), QUESTION, OPTIONS, answer=0))
    assert [frame.source_frames for frame in y.segments.frames] == [(0, 1), (2, 3), (4, 4)]
    check_logits(vlm, hf_model, y)


def test_glm4v_frame_seconds_follow_the_processor():
    from mapflow_tl.models.glm4v import glm4v_frame_seconds

    # timestamps[::2] truncated to whole seconds; an odd count's last token frame has its own
    assert glm4v_frame_seconds([0.0, 0.7, 1.4, 2.1, 2.8], 2, 3) == [0, 1, 2]
    assert glm4v_frame_seconds([0.5, 3.9], 2, 2) == [0, 0]


def test_glm4v_knockout_equals_hf_with_explicit_masks(glm):
    vlm, x, hf_model = glm
    diff = check_knockout(vlm, x, hf_model, layers=(0, 2))
    print(f"glm4v knockout max |diff| vs HF with masks: {diff:.2e}")


def test_glm4v_fast_sweep_falls_back_to_the_hooked_path_and_equals_naive(glm):
    from mapflow_tl.engine import sweep
    from mapflow_tl.suffix_forward import lean_unsupported

    vlm, x, _ = glm
    assert lean_unsupported(vlm.backbone) == "norms after attention and MLP (GLM-4 sandwich norms)"
    with pytest.raises(ValueError, match="sandwich norms"):
        sweep(vlm.backbone, x.embeds, [], suffix="lean")
    diff = check_fast_sweep(vlm, x)
    print(f"glm4v fast (hooked) vs naive sweep max |diff|: {diff:.2e}")


def test_glm4v_flow_sweep_runs_unchanged(glm):
    vlm, x, hf_model = glm
    diff = check_flow_sweep(vlm, x, hf_model)
    print(f"glm4v flow sweep p_true max |diff| vs HF with masks: {diff:.2e}")


def test_glm4v_bf16_runs_close_to_hf_bf16(glm_dir):
    check_bf16(glm_dir, CLASS, sample(), hf_model_of)


def test_glm4v_feature_tokens_outside_the_video_are_refused(glm):
    vlm, x, _ = glm
    ids = x.input_ids.clone()
    ids[0, x.segments.video.stop + 1] = vlm.adapter.hf_config.image_token_id
    with pytest.raises(ValueError, match="outside <\\|begin_of_video\\|>"):
        vlm.adapter.extra_model_inputs(ids)


def test_glm4v_head_dim_unlike_the_attention_split_is_refused(tmp_path):
    from mapflow_tl.models.backbone import backbone_config_fields
    from transformers import Glm4vTextConfig

    config = Glm4vTextConfig(hidden_size=48, num_attention_heads=4, num_key_value_heads=2,
                             vocab_size=64, num_hidden_layers=1, intermediate_size=96)
    config.head_dim = 16
    with pytest.raises(ValueError, match="attention and rotary disagree"):
        backbone_config_fields(config, positions="per_sample")  # both backends' config


def test_glm4v_generate_and_teacher_forced_answer_equal_hf(glm):
    """Greedy generation (cache and no cache) = HF's own generate, the appended tokens at HF's
    3D positions, and the teacher-forced answer's logits = HF's forward on the whole sequence."""
    vlm, x, hf_model = glm
    check_generate(vlm, x, hf_model)


def test_glm4v_open_ended_knockout_equals_hf_with_explicit_masks(glm):
    vlm, x, hf_model = glm
    check_open_ended_knockout(vlm, x, hf_model)
