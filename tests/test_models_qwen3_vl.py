"""Qwen3-VL and Qwen3-VL-MoE on tiny random models of the real HF classes: interleaved M-RoPE,
timestamp separators, DeepStack features carried as residual-stream additions, and (MoE) HF's
routing in TransformerLens' MoE blocks.

References: the HF model's own forward (eager attention, its own position ids and DeepStack
features) on the same token ids and pixels; ``Qwen3VLProcessor.replace_video_token`` for the
video's text; the HF model with explicit 4D masks per layer for knockouts; the naive sweep for the
fast one; HF's router outputs for the experts each token is sent to.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import mapflow_tl as mf
from family_checks import check_generate, check_open_ended_knockout
from mapflow_tl.models import VideoSample, load_videollm
from mapflow_tl.models.backbone import run_from_embeds
from mapflow_tl.testing import additive_mask, block_mask, hf_logits_with_layer_masks
from test_models_qwen import (OPTIONS, QUESTION, byte_level_tokenizer, check_layout, check_logits,
                              frames_array, hf_model_of, scale_up)
from test_models_qwen_vl import vision_template

CLASS = "Qwen3VLForConditionalGeneration"
MOE_CLASS = "Qwen3VLMoeForConditionalGeneration"
#: every layer sparse, 4 experts, 2 per token (the real checkpoints: 128 experts, 8 per token)
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
N_FRAMES = 4


def build(path, *, deepstack=(0, 1), moe: dict | None = None):
    """A tiny Qwen3-VL (``moe``: Qwen3-VL-MoE with these text-config fields) saved to ``path``."""
    import transformers

    tokenizer = byte_level_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
         "<|video_pad|>", "<|image_pad|>"],
        {"video_token": "<|video_pad|>", "image_token": "<|image_pad|>"}, vision_template())
    ids = tokenizer.convert_tokens_to_ids
    prefix = "Qwen3VLMoe" if moe is not None else "Qwen3VL"
    config = getattr(transformers, f"{prefix}Config")(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2,
                           patch_size=8, spatial_merge_size=2, temporal_patch_size=2,
                           out_hidden_size=48, num_position_embeddings=64,
                           deepstack_visual_indexes=list(deepstack)),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=12, max_position_embeddings=1024, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000.0,
                                          "mrope_section": [2, 2, 2],
                                          "mrope_interleaved": True}, **(moe or {})),
        video_token_id=ids("<|video_pad|>"), image_token_id=ids("<|image_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    torch.manual_seed(0)
    model = getattr(transformers, f"{prefix}ForConditionalGeneration")(config).eval()
    scale_up(model)
    with torch.no_grad():  # DeepStack features large enough to matter in the random model
        for merger in model.model.visual.deepstack_merger_list:
            merger.linear_fc2.weight.normal_(0, 0.5)
        for name, parameter in model.named_parameters():  # experts as large as a dense MLP
            if "experts" in name:
                parameter.normal_(0, 0.15)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    # 32×48 frames stay 32×48 (multiples of 16): 4×6 patches merged to 2×3 per token frame.
    (path / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "Qwen3VLVideoProcessor",
        "size": {"shortest_edge": 16 * 16, "longest_edge": 4 * 64 * 64}, "patch_size": 8,
        "merge_size": 2, "temporal_patch_size": 2, "resample": 3, "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3}))
    return path


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    return build(tmp_path_factory.mktemp("qwen3_vl"))


@pytest.fixture(scope="module")
def qwen3(qwen3_dir):
    vlm = load_videollm(qwen3_dir)
    x = vlm.prepare(VideoSample(frames_array(N_FRAMES, 32, 48), QUESTION, OPTIONS, answer=1))
    return vlm, x, hf_model_of(qwen3_dir, CLASS)


def knockout_setup(x):
    """Cross-frame ∪ video→question ∪ true option→last, and the same as a blocked-pair list."""
    seg = x.segments
    true = seg.options[x.answer]
    edges = (mf.cross_frame(seg) | mf.video_to_question(seg)
             | mf.Edges(src=true, dst=seg.last))
    question = seg.question_with_options
    pairs = [(seg.frames[0].positions, seg.frames[1].positions),
             (seg.video.positions, question.positions),
             (true.positions, [x.n_positions - 1])]
    return edges, pairs


def test_qwen3_logits_equal_hf_with_deepstack(qwen3):
    vlm, x, hf_model = qwen3
    assert x.meta["deepstack_layers"] == [0, 1]
    positions = x.meta["position_ids"][:, 0]
    assert not torch.equal(positions[1], positions[2])  # the positions really are 3D
    diff = check_logits(vlm, hf_model, x)
    # Without the DeepStack additions the backbone is not the HF model: they matter here.
    additions = vlm.backbone.mapflow_residual_additions()
    assert sorted(additions) == [0, 1]
    vlm.adapter.rotary.register(x.embeds, x.meta["position_ids"])
    try:
        bare = vlm.run_with_hooks(x)
    finally:
        vlm.adapter.rotary.register(x.embeds, x.meta["position_ids"], additions)
    assert (bare - vlm.run_with_hooks(x)).abs().max() > 1e-2
    print(f"qwen3_vl fp32 logits max |diff| vs HF: {diff:.2e}")


def test_qwen3_deepstack_is_in_resid_post_of_its_layers(qwen3):
    """The residual stream HF's decoder layer i+1 reads (layer i's output plus DeepStack) is
    ``blocks.{i}.hook_resid_post``, and a user hook there sees it (the adapter's addition runs
    first). HF's own ``output_hidden_states`` records layer outputs *before* the addition."""
    vlm, x, hf_model = qwen3
    layers = hf_model.model.language_model.layers
    read, handles = {}, []
    def reads(index):
        def hook(module, args, kwargs):
            read[index] = (args[0] if args else kwargs["hidden_states"]).clone()
        return hook

    for index, layer in enumerate(layers):
        handles.append(layer.register_forward_pre_hook(reads(index), with_kwargs=True))
    try:
        with torch.no_grad():
            out = hf_model(input_ids=x.input_ids, output_hidden_states=True,
                           **x.meta["model_inputs"])
    finally:
        for handle in handles:
            handle.remove()
    _, cache = vlm.run_with_cache(x, names_filter=lambda name: name.endswith("resid_post"))
    for layer in range(vlm.n_layers - 1):
        assert (cache["resid_post", layer] - read[layer + 1]).abs().max().item() <= 1e-4
    video = list(x.segments.video.positions)
    assert (out.hidden_states[1][0, video] - read[1][0, video]).abs().max() > 1e-2
    seen = {}
    vlm.run_with_hooks(x, [("blocks.0.hook_resid_post",
                            lambda act, hook: seen.setdefault("act", act.clone()))])
    assert (seen["act"] - read[1]).abs().max().item() <= 1e-4


def test_qwen3_layout_follows_the_hf_processor(qwen3):
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
    from transformers.video_utils import VideoMetadata

    vlm, x, hf_model = qwen3
    seg = x.segments
    check_layout(x, hf_model.config.video_token_id)
    assert [frame.grid for frame in seg.frames] == [(2, 3), (2, 3)]  # 4 frames → 2 token frames
    assert [frame.source_frames for frame in seg.frames] == [(0, 1), (2, 3)]
    processor = SimpleNamespace(
        video_processor=SimpleNamespace(merge_size=2, temporal_patch_size=2),
        video_token="<|video_pad|>", vision_start_token="<|vision_start|>",
        vision_end_token="<|vision_end|>",
        _calculate_timestamps=lambda *a: Qwen3VLProcessor._calculate_timestamps(None, *a))
    inputs = {**x.meta["model_inputs"], "video_metadata": [VideoMetadata(
        total_num_frames=N_FRAMES, fps=None, frames_indices=list(range(N_FRAMES)))]}
    expected = Qwen3VLProcessor.replace_video_token(processor, inputs, 0)
    assert "<0.0 seconds>" in expected and "<0.1 seconds>" in expected
    video = vlm.tokenizer.decode(x.input_ids[0, seg.video.start:seg.video.stop])
    assert video == expected
    # the collapsed template wrapper: no vision start/end around the whole video
    before = vlm.tokenizer.decode(x.input_ids[0, :seg.video.start])
    assert not before.endswith("<|vision_start|>")
    # timestamps and vision start/end are separators, never frame tokens
    decoded = [vlm.tokenizer.decode(x.input_ids[0, s.start:s.stop]) for s in seg.separators]
    assert decoded[0] == "<0.0 seconds><|vision_start|>"
    assert decoded[1] == "<|vision_end|><0.1 seconds><|vision_start|>"
    # each token frame is its own M-RoPE grid, rows and columns row-major
    positions = x.meta["position_ids"][:, 0]
    for frame in seg.frames:
        rows = positions[1, frame.start:frame.stop] - positions[1, frame.start]
        columns = positions[2, frame.start:frame.stop] - positions[2, frame.start]
        assert rows.tolist() == [0, 0, 0, 1, 1, 1] and columns.tolist() == [0, 1, 2] * 2


def test_qwen3_processor_cross_check_keeps_our_frames(qwen3, monkeypatch):
    """Where torchvision exists, prepare() checks its ids against Qwen3VLProcessor's, which must
    not re-sample the frames at 2 fps (it would keep 4 of 8 frames of an array)."""
    import mapflow_tl.models.loading as loading

    vlm, x, _ = qwen3
    calls = []

    def processor(**kwargs):
        calls.append(kwargs)
        return {"input_ids": x.input_ids}

    monkeypatch.setattr(loading, "torchvision_available", lambda: True)
    monkeypatch.setattr(vlm.adapter, "processor", processor)
    vlm.prepare(VideoSample(frames_array(N_FRAMES, 32, 48), QUESTION, OPTIONS, answer=1))
    assert calls and calls[0]["do_sample_frames"] is False
    assert calls[0]["videos"][0].shape[0] == N_FRAMES


def test_qwen3_timestamps_of_a_file_average_each_temporal_patch():
    from mapflow_tl.models.qwen3_vl import token_frame_times
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    indices, fps = [0, 7, 15, 22, 30], 10.0
    ours = token_frame_times(np.asarray(indices) / fps, 2)
    assert ours == pytest.approx(Qwen3VLProcessor._calculate_timestamps(None, indices, fps, 2))


def test_qwen3_knockout_in_deepstack_layers_equals_hf_with_explicit_masks(qwen3):
    vlm, x, hf_model = qwen3
    edges, pairs = knockout_setup(x)
    layers = [0, 1]  # both layers where DeepStack adds features
    got = vlm.run_with_hooks(x, mf.knockout(edges, layers))
    n = x.n_positions
    heads = hf_model.config.text_config.num_attention_heads
    blocked = additive_mask(n, block_mask(n, pairs), heads)
    with torch.no_grad():
        expected = hf_logits_with_layer_masks(hf_model, {layer: blocked for layer in layers},
                                              additive_mask(n, None, heads),
                                              input_ids=x.input_ids, **x.meta["model_inputs"])
    assert (got - vlm.run_with_hooks(x)).abs().max() > 1e-3  # the knockout acts
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-4, diff
    print(f"qwen3_vl knockout max |diff| vs HF with masks: {diff:.2e}")


def test_qwen3_positions_and_deepstack_are_bound_to_their_sample(qwen3):
    vlm, x, hf_model = qwen3
    other = vlm.prepare(VideoSample(frames_array(2, 32, 32, seed=5), "Where is it?",
                                    ["Left.", "Right."], answer=0))
    assert other.n_positions != x.n_positions
    check_logits(vlm, hf_model, x)  # x's own positions and features again
    check_logits(vlm, hf_model, other)
    with pytest.raises(ValueError, match="not produced by vlm.prepare"):
        run_from_embeds(vlm.backbone, x.embeds + 0.5)
    # A mid-stack start (the sweep engine's pattern) still gets the additions of its layers.
    store = {}
    full = run_from_embeds(vlm.backbone, x.embeds, fwd_hooks=mf.capture(
        "blocks.1.hook_resid_pre", store))
    resumed = vlm.backbone(store["blocks.1.hook_resid_pre"], start_at_layer=1)
    assert (resumed - full).abs().max().item() <= 1e-5


def test_qwen3_bad_residual_additions_are_refused_with_their_shape(qwen3):
    vlm, x, _ = qwen3
    positions = torch.tensor([5, 6])
    for layer, values in ((0, torch.zeros(3, 48)), (0, torch.zeros(2, 7)), (9, torch.zeros(2, 48))):
        with pytest.raises(ValueError, match="residual addition of layer"):
            vlm.adapter.rotary.register(x.embeds, x.meta["position_ids"],
                                        {layer: (positions, values)})


@pytest.mark.parametrize("suffix", ["lean", "hooked"])
def test_qwen3_fast_sweep_equals_naive_sweep(qwen3, suffix):
    """The fast sweep's suffix forwards add DeepStack when they recompute layers 0 and 1 (from a
    key/value cache, over the recomputed positions only): they give the naive sweep's logits."""
    from mapflow_tl.engine import layer_sweep, sweep

    vlm, x, _ = qwen3
    seg = x.segments
    configs = layer_sweep({"cross_frame": mf.cross_frame(seg),
                           "video_to_question": mf.video_to_question(seg),
                           "video_to_last": mf.Edges(src=seg.video, dst=seg.last)},
                          vlm.n_layers, k=1)
    fast = sweep(vlm.backbone, x.embeds, configs, method="fast", suffix=suffix)
    naive = sweep(vlm.backbone, x.embeds, configs, method="naive")
    assert (naive - vlm.run_with_hooks(x)[0, -1]).abs().max() > 1e-4  # knockouts act
    diff = (fast - naive).abs().max().item()
    assert diff <= 1e-4, diff
    print(f"qwen3_vl fast ({suffix}) vs naive sweep max |diff|: {diff:.2e}")


def test_qwen3_fast_sweep_of_two_samples_keeps_each_samples_deepstack(qwen3):
    from mapflow_tl.engine import layer_sweep, sweep, sweep_samples

    vlm, x, _ = qwen3
    other = vlm.prepare(VideoSample(frames_array(2, 32, 32, seed=5), "Where is it?",
                                    ["Left.", "Right."], answer=0))
    configs = [layer_sweep({"video_to_last": mf.Edges(src=y.segments.video, dst=y.segments.last),
                            "cross_frame": mf.cross_frame(y.segments)}, vlm.n_layers, k=1)
               for y in (x, other)]
    together = sweep_samples(vlm.backbone, [x.embeds, other.embeds], configs, method="fast",
                             suffix="lean")
    for y, got, sample_configs in zip((x, other), together, configs):
        naive = sweep(vlm.backbone, y.embeds, sample_configs, method="naive")
        assert (got - naive).abs().max().item() <= 1e-4


def test_qwen3_flow_sweep_runs_unchanged(qwen3):
    """The paper's circuits and analyses run on Qwen3-VL without naming the family."""
    from mapflow_tl import analyses as A
    from mapflow_tl.circuits import load_circuit

    vlm, x, _ = qwen3
    rows = A.flow_sweep(vlm, x, load_circuit("cross-frame"), k=1)
    naive = A.flow_sweep(vlm, x, load_circuit("cross-frame"), k=1, method="naive")
    assert len(rows) == len(naive) > 0
    for row, reference in zip(rows, naive):
        assert row["layer"] == reference["layer"] and row["token"] == reference["token"]
        assert row["p_pred"] == pytest.approx(reference["p_pred"], abs=1e-5)


@pytest.mark.parametrize("which", ["qwen3_dir", "qwen3_moe_dir"])
def test_qwen3_bf16_runs_close_to_hf_bf16(which, request):
    qwen3_dir = request.getfixturevalue(which)
    low = load_videollm(qwen3_dir, dtype=torch.bfloat16)
    y = low.prepare(VideoSample(frames_array(N_FRAMES, 32, 48), QUESTION, OPTIONS, answer=1))
    assert y.embeds.dtype == torch.bfloat16 and low.backbone.cfg.dtype == torch.bfloat16
    hf_low = hf_model_of(qwen3_dir, MOE_CLASS if "moe" in which else CLASS).to(torch.bfloat16)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
              for k, v in y.meta["model_inputs"].items()}
    with torch.no_grad():
        expected = hf_low(input_ids=y.input_ids, **inputs).logits.float()
    got = low.run_with_hooks(y).float()
    # MoE: a bf16 rounding difference flips the near-tie routing of a few tokens to another
    # expert (measured: 4 tokens in layer 1, 2 in layer 2; logits there off by up to 0.17), so
    # the answer position is compared there.
    where = (slice(None),) if "moe" not in which else (slice(None), -1)
    diff = (got[where] - expected[where]).abs().max().item()
    assert diff < 0.15, diff  # bf16 rounding, not missing features or wrong positions
    best = expected[0, -1].max()
    ours = expected[0, -1, got[0, -1].argmax()]
    assert best - ours <= best.abs() * 2 ** -7
    print(f"{which} bf16 logits max |diff| vs HF bf16: {diff:.2e}")


# ---------------------------------------------------------------------------- Qwen3-VL-MoE
@pytest.fixture(scope="module")
def qwen3_moe_dir(tmp_path_factory):
    return build(tmp_path_factory.mktemp("qwen3_vl_moe"), moe=MOE)


@pytest.fixture(scope="module")
def qwen3_moe(qwen3_moe_dir):
    path = qwen3_moe_dir
    vlm = load_videollm(path)
    x = vlm.prepare(VideoSample(frames_array(N_FRAMES, 32, 48), QUESTION, OPTIONS, answer=1))
    return vlm, x, hf_model_of(path, MOE_CLASS)


def test_qwen3_moe_logits_and_routing_equal_hf(qwen3_moe):
    vlm, x, hf_model = qwen3_moe
    assert vlm.backbone.cfg.num_experts == 4 and x.meta["deepstack_layers"] == [0, 1]
    routed, handles = {}, []
    for index, layer in enumerate(hf_model.model.language_model.layers):
        handles.append(layer.mlp.gate.register_forward_hook(
            lambda module, args, out, index=index: routed.__setitem__(index, out)))
    try:
        diff = check_logits(vlm, hf_model, x)
    finally:
        for handle in handles:
            handle.remove()
    _, cache = vlm.run_with_cache(x, names_filter=lambda name: "expert" in name)
    for layer, (_, weights, indices) in routed.items():
        ours = cache[f"blocks.{layer}.mlp.hook_expert_indices"].reshape(indices.shape)
        assert torch.equal(ours, indices)  # the same experts, in the same order, per token
        assert len(set(indices.flatten().tolist())) > 1  # routing really varies
    print(f"qwen3_vl_moe fp32 logits max |diff| vs HF: {diff:.2e}")


def test_qwen3_moe_knockout_equals_hf_with_explicit_masks(qwen3_moe):
    vlm, x, hf_model = qwen3_moe
    edges, pairs = knockout_setup(x)
    layers = [1, 2]
    got = vlm.run_with_hooks(x, mf.knockout(edges, layers))
    n = x.n_positions
    heads = hf_model.config.text_config.num_attention_heads
    blocked = additive_mask(n, block_mask(n, pairs), heads)
    with torch.no_grad():
        expected = hf_logits_with_layer_masks(hf_model, {layer: blocked for layer in layers},
                                              additive_mask(n, None, heads),
                                              input_ids=x.input_ids, **x.meta["model_inputs"])
    assert (got - vlm.run_with_hooks(x)).abs().max() > 1e-3
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-4, diff
    print(f"qwen3_vl_moe knockout max |diff| vs HF with masks: {diff:.2e}")


def test_qwen3_moe_fast_sweep_falls_back_to_the_hooked_path_and_equals_naive(qwen3_moe):
    from mapflow_tl.engine import layer_sweep, sweep
    from mapflow_tl.suffix_forward import lean_unsupported

    vlm, x, _ = qwen3_moe
    assert lean_unsupported(vlm.backbone) == "mixture-of-experts MLPs"
    with pytest.raises(ValueError, match="mixture-of-experts"):
        sweep(vlm.backbone, x.embeds, [], suffix="lean")
    seg = x.segments
    configs = layer_sweep({"cross_frame": mf.cross_frame(seg),
                           "video_to_last": mf.Edges(src=seg.video, dst=seg.last)},
                          vlm.n_layers, k=1)
    fast = sweep(vlm.backbone, x.embeds, configs, method="fast")
    naive = sweep(vlm.backbone, x.embeds, configs, method="naive")
    assert (naive - vlm.run_with_hooks(x)[0, -1]).abs().max() > 1e-4
    diff = (fast - naive).abs().max().item()
    assert diff <= 1e-4, diff
    from mapflow_tl import analyses as A
    from mapflow_tl.circuits import load_circuit

    assert A.flow_sweep(vlm, x, load_circuit("cross-frame"), k=1)  # analyses run unchanged
    print(f"qwen3_vl_moe fast (hooked) vs naive sweep max |diff|: {diff:.2e}")


def test_qwen3_moe_mixing_dense_layers_is_refused(tmp_path):
    path = build(tmp_path, moe={**MOE, "mlp_only_layers": [0]})
    with pytest.raises(ValueError, match="mixes dense and mixture-of-experts"):
        load_videollm(path)


def test_qwen3_generate_and_teacher_forced_answer_equal_hf(qwen3):
    """Greedy generation (cache and no cache) = HF's own generate, the appended tokens at HF's
    3D positions, and the teacher-forced answer's logits = HF's forward on the whole sequence."""
    vlm, x, hf_model = qwen3
    check_generate(vlm, x, hf_model)


def test_qwen3_open_ended_knockout_equals_hf_with_explicit_masks(qwen3):
    vlm, x, hf_model = qwen3
    check_open_ended_knockout(vlm, x, hf_model)


def test_qwen3_open_ended_flow_fast_equals_naive(qwen3_dir):
    """The experiment code, unchanged, on an M-RoPE family with DeepStack: the open-ended flow
    over a teacher-forced answer gives the same rows with the fast (lean suffix) and the naive
    sweep, and its knockouts act."""
    from mapflow_tl import analyses

    vlm = load_videollm(qwen3_dir)
    x = vlm.prepare(VideoSample(frames_array(N_FRAMES, 32, 48), QUESTION))
    given = vlm.generate(x, 8, stop_ids=[])[0].tolist()
    kwargs = dict(n_anchors=4, k=1, answer_ids=given, anchors="words",
                  words=sorted({vlm.tokenizer.decode([i]) for i in given}))
    fast = analyses.open_ended_flow(vlm, x, "open-ended", **kwargs)
    naive = analyses.open_ended_flow(vlm, x, "open-ended", method="naive", **kwargs)
    assert fast["answer"]["traced"] and len(fast["rows"]) == len(naive["rows"]) > 0
    assert max(abs(row["change"]) for row in fast["rows"]) > 1e-2
    for a, b in zip(fast["rows"], naive["rows"]):
        assert (a["curve"], a["layer"], a["anchor_order"]) == (b["curve"], b["layer"],
                                                               b["anchor_order"])
        assert abs(a["p"] - b["p"]) <= 1e-5


def test_qwen3_moe_generate_and_teacher_forced_answer_equal_hf(qwen3_moe):
    vlm, x, hf_model = qwen3_moe
    check_generate(vlm, x, hf_model)
