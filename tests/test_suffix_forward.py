"""The lean suffix forward (``sweep(..., suffix="lean")``) equals the Hugging Face model run with
explicit 4D masks, for every decoder family the adapters load and every window style.

Reference (independent of mapflow_tl's forward code): the HF causal LM itself, eager attention,
fed the same input embeddings, with an additive ``[1, heads, pos, pos]`` mask in each knocked-out
layer (``reference.hf_logits_with_layer_masks``) whose blocked (query, key) pairs are built by hand
from positions (``reference.block_mask``). fp32: probabilities within 1e-5, argmax equal.
"""

from __future__ import annotations

import pytest
import torch

import mapflow_tl as mf
from mapflow_tl import engine, suffix_forward
from mapflow_tl.edges import Edges
from mapflow_tl.engine import KnockoutConfig, layer_sweep, sweep
from mapflow_tl.layers import WINDOW_STYLES
from mapflow_tl.testing import backbone_of
from mapflow_tl.segments import SegmentMap
from mapflow_tl.testing import additive_mask, block_mask, hf_logits_with_layer_masks

TOLERANCE = 1e-5
N_LAYERS = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def _segments() -> SegmentMap:
    return SegmentMap.sequential(system=3, frames=[(2, 3)] * 3, separator=1, after_video=2,
                                 question=5, options=[2, 3], true_option=1,
                                 between_options=1, before_last=2)


def _curves(seg: SegmentMap) -> dict[str, tuple[Edges, list]]:
    """Edge sets of the paper's targets with their (keys, queries) pairs written out by hand:
    first blocked queries at the second frame (cross-frame), the question, and the last token."""
    n = seg.n_positions
    frames = [list(frame.positions) for frame in seg.frames]
    video, question, last = list(seg.video.positions), list(seg.question.positions), [n - 1]
    return {
        "cross-frame": (mf.cross_frame(seg),
                        [(frames[i], frames[j]) for i in range(3) for j in range(i + 1, 3)]),
        "video → question": (Edges(src=seg.video, dst=seg.question), [(video, question)]),
        "video → last": (Edges(src=seg.video, dst=seg.last), [(video, last)]),
        "question → last": (Edges(src=seg.question, dst=seg.last), [(question, last)]),
    }


def _reference(hf_model, embeds, pairs, layers, n_heads) -> torch.Tensor:
    n = embeds.shape[1]
    blocked = block_mask(n, pairs)
    masks = {layer: additive_mask(n, blocked, n_heads) for layer in layers}
    return hf_logits_with_layer_masks(hf_model, masks, additive_mask(n, None, n_heads),
                                      inputs_embeds=embeds)[0, -1]


def _scale(hf_model, seed: int) -> None:
    """Weights large enough that knockouts move the output; non-zero biases where there are
    biases; norm weights away from 1 so that a dropped norm weight would show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in hf_model.named_parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
            elif "norm" in name:
                parameter.copy_(torch.rand(parameter.shape, generator=generator) + 0.5)
            else:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)


def _llama(tied: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=N_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=tied, attn_implementation="eager"))


def _mistral():
    from transformers import MistralConfig, MistralForCausalLM
    return MistralForCausalLM(MistralConfig(
        vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=N_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        sliding_window=128, attn_implementation="eager"))


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=N_LAYERS,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        rope_theta=50000.0, attn_implementation="eager"))


def _qwen3():
    from transformers import Qwen3Config, Qwen3ForCausalLM
    return Qwen3ForCausalLM(Qwen3Config(
        vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=N_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        rope_theta=1e6, attn_implementation="eager"))


def _phi3(rope: str):
    from transformers import Phi3Config, Phi3ForCausalLM
    common = dict(vocab_size=64, hidden_size=64, intermediate_size=96,
                  num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2,
                  rms_norm_eps=1e-5, pad_token_id=0, tie_word_embeddings=False,
                  attn_implementation="eager")
    if rope == "longrope":  # Phi-3-mini-128k's layout; HF's own tables are installed on load
        config = Phi3Config(**common, max_position_embeddings=4096, sliding_window=262144,
                            original_max_position_embeddings=512,
                            rope_scaling=dict(type="su", original_max_position_embeddings=512,
                                              short_factor=[1.0 + 0.05 * i for i in range(8)],
                                              long_factor=[4.0 + i for i in range(8)]))
    else:  # partial rotary: half of each head's dimensions rotate
        config = Phi3Config(**common, max_position_embeddings=1024, sliding_window=None,
                            partial_rotary_factor=0.5)
    return Phi3ForCausalLM(config)


FAMILIES = {
    "llama-gqa-untied": lambda: _llama(tied=False),
    "llama-tied": lambda: _llama(tied=True),
    "mistral-gqa": _mistral,
    "qwen2-qkv-bias": _qwen2,
    "qwen3-qk-norm": _qwen3,
    "phi3-partial-rotary": lambda: _phi3("partial"),
    "phi3-longrope": lambda: _phi3("longrope"),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    torch.manual_seed(0)
    hf_model = FAMILIES[request.param]().eval()
    _scale(hf_model, seed=len(request.param))
    if hf_model.config.tie_word_embeddings:
        assert hf_model.lm_head.weight.data_ptr() == hf_model.model.embed_tokens.weight.data_ptr()
    tied = hf_model.config.tie_word_embeddings
    backbone = backbone_of(hf_model.model, None if tied else hf_model.lm_head, hf_model.config)
    seg = _segments()
    embeds = torch.randn(1, seg.n_positions, hf_model.config.hidden_size,
                         generator=torch.Generator().manual_seed(7))
    return request.param, hf_model, backbone, seg, embeds


def _check(got: torch.Tensor, expected: torch.Tensor, what) -> None:
    difference = (got.softmax(-1) - expected.softmax(-1)).abs().max().item()
    assert difference <= TOLERANCE, f"{what}: |Δp| {difference:.3g}"
    assert int(got.argmax()) == int(expected.argmax()), f"{what}: argmax differs"


@pytest.mark.parametrize("style", WINDOW_STYLES)
def test_lean_sweep_equals_hf_with_explicit_masks(family, style):
    name, hf_model, backbone, seg, embeds = family
    curves = _curves(seg)
    configs = layer_sweep({curve: edges for curve, (edges, _) in curves.items()}, N_LAYERS, k=1,
                          style=style)
    got = sweep(backbone, embeds, configs, suffix="lean")
    heads = hf_model.config.num_attention_heads
    clean = hf_model(inputs_embeds=embeds).logits[0, -1].detach()
    moved = 0.0
    for config, logits in zip(configs, got):
        expected = _reference(hf_model, embeds, curves[config.curve][1], config.layers, heads)
        _check(logits, expected, (name, config))
        moved = max(moved, (expected.softmax(-1) - clean.softmax(-1)).abs().max().item())
    assert moved > 1e-3, f"{name}: no knockout moved the output; the check would be vacuous"


@pytest.mark.parametrize("attention", ["sdpa", "sdpa-chunked", "folded"])
@pytest.mark.parametrize("name", ["llama-gqa-untied", "qwen2-qkv-bias"])
def test_both_attention_forms_equal_hf(name, attention, monkeypatch):
    """Every configuration through one attention form (SDPA on concatenated keys/values — whole,
    or in chunks of 3 queries that each see only the keys up to their last query — or the
    batch-folded form with the clean prefix read once), batched several at a time. The forms do
    not depend on the family: GQA and MHA suffice."""
    torch.manual_seed(0)
    hf_model = FAMILIES[name]().eval()
    _scale(hf_model, seed=11)
    backbone = backbone_of(hf_model.model, hf_model.lm_head, hf_model.config)
    seg = _segments()
    embeds = torch.randn(1, seg.n_positions, hf_model.config.hidden_size,
                         generator=torch.Generator().manual_seed(7))
    monkeypatch.setattr(suffix_forward, "SDPA_MIN_QUERIES",
                        10**9 if attention == "folded" else 1)
    monkeypatch.setattr(suffix_forward, "SDPA_QUERY_CHUNK",
                        3 if attention == "sdpa-chunked" else 10**9)
    curves = _curves(seg)
    configs = layer_sweep({curve: edges for curve, (edges, _) in curves.items()}, N_LAYERS, k=2,
                          style="center")
    got = sweep(backbone, embeds, configs, suffix="lean", batch_budget_mb=1e4)
    heads = hf_model.config.num_attention_heads
    for config, logits in zip(configs, got):
        _check(logits, _reference(hf_model, embeds, curves[config.curve][1], config.layers,
                                  heads), (name, attention, config))


def test_lean_equals_hooked_path(family):
    name, _, backbone, seg, embeds = family
    configs = layer_sweep({curve: edges for curve, (edges, _) in _curves(seg).items()},
                          N_LAYERS, k=2, style="inverse")
    lean = sweep(backbone, embeds, configs, suffix="lean").softmax(-1)
    hooked = sweep(backbone, embeds, configs, suffix="hooked").softmax(-1)
    assert (lean - hooked).abs().max().item() <= TOLERANCE
    assert torch.equal(lean.argmax(-1), hooked.argmax(-1))


@pytest.mark.parametrize("model_type", ["qwen2_vl", "qwen2_5_vl"])
def test_mrope_lean_sweep_equals_hf_with_explicit_masks(tmp_path_factory, model_type):
    """Qwen2-VL's and Qwen2.5-VL's (time-scaled) 3D rotary positions reach the lean forward
    through the tables the adapter installs: the lean sweep equals the HF VLM (its own M-RoPE
    positions) with explicit masks."""
    from test_models_qwen_vl import CLASSES, build
    from test_models_qwen import OPTIONS, QUESTION, frames_array, hf_model_of

    path = build(model_type, tmp_path_factory.mktemp(model_type))
    vlm = mf.load_videollm(path)
    hf_model = hf_model_of(path, CLASSES[model_type][1])
    x = vlm.prepare(mf.VideoSample(frames_array(4, 32, 48), QUESTION, OPTIONS, answer=1))
    # another sample prepared after x: the sweep must still use x's positions
    vlm.prepare(mf.VideoSample(frames_array(2, 32, 32, seed=5), "Where?", ["L.", "R."]))
    seg = x.segments
    n = x.n_positions
    curves = {"cross-frame": (mf.cross_frame(seg), [(list(seg.frames[0].positions),
                                                     list(seg.frames[1].positions))]),
              "video → last": (Edges(src=seg.video, dst=seg.last),
                               [(list(seg.video.positions), [n - 1])])}
    heads = hf_model.config.text_config.num_attention_heads
    for style in WINDOW_STYLES:
        configs = layer_sweep({c: e for c, (e, _) in curves.items()}, vlm.n_layers, k=1,
                              style=style)
        got = sweep(vlm.backbone, x.embeds, configs, suffix="lean")
        for config, logits in zip(configs, got):
            blocked = block_mask(n, curves[config.curve][1])
            masks = {layer: additive_mask(n, blocked, heads) for layer in config.layers}
            expected = hf_logits_with_layer_masks(
                hf_model, masks, additive_mask(n, None, heads), input_ids=x.input_ids,
                **x.meta["model_inputs"])[0, -1]
            _check(logits, expected, (model_type, config))


@pytest.fixture()
def llama_family():
    torch.manual_seed(0)
    hf_model = _llama().eval()
    _scale(hf_model, seed=3)
    backbone = backbone_of(hf_model.model, hf_model.lm_head, hf_model.config)
    seg = _segments()
    embeds = torch.randn(1, seg.n_positions, 64, generator=torch.Generator().manual_seed(7))
    configs = layer_sweep({c: e for c, (e, _) in _curves(seg).items()}, N_LAYERS, k=1)
    return backbone, embeds, configs


@pytest.mark.hooked_backend
def test_user_hooks_fall_back_to_the_hooked_path_and_say_so_once(llama_family, caplog,
                                                                 monkeypatch):
    backbone, embeds, configs = llama_family
    monkeypatch.setattr(engine, "_WARNED", set())
    calls = []

    def scale_mlp(activation, hook):  # a user intervention: it must act in every forward
        calls.append(activation.shape)
        return activation * 0.5

    hooks = [("blocks.1.hook_mlp_out", scale_mlp)]
    with caplog.at_level("WARNING", logger="mapflow_tl.engine"):
        fast = sweep(backbone, embeds, configs, fwd_hooks=hooks)
        sweep(backbone, embeds, configs, fwd_hooks=hooks)
    warnings = [r for r in caplog.records if "hooked path" in r.message]
    assert len(warnings) == 1 and "blocks.1.hook_mlp_out" in warnings[0].message
    assert calls  # the user's hook ran
    naive = sweep(backbone, embeds, configs, method="naive", fwd_hooks=hooks)
    assert (fast.softmax(-1) - naive.softmax(-1)).abs().max().item() <= TOLERANCE
    unhooked = sweep(backbone, embeds, configs, method="naive")
    assert (naive - unhooked).abs().max().item() > 1e-3  # the hook did change the output
    with pytest.raises(ValueError, match="lean suffix forward cannot run this sweep"):
        sweep(backbone, embeds, configs, fwd_hooks=hooks, suffix="lean")

    # hooks attached to the model's hook points count too
    backbone.add_hook("blocks.0.hook_resid_post", lambda activation, hook: None)
    try:
        with caplog.at_level("WARNING", logger="mapflow_tl.engine"):
            sweep(backbone, embeds, configs[:2])
    finally:
        backbone.reset_hooks()
    assert any("blocks.0.hook_resid_post" in r.message for r in caplog.records)


def test_lean_path_runs_no_hooked_forward(llama_family, monkeypatch):
    """Without user hooks the sweep never calls the HookedTransformer (sequential rotary): every
    cell is computed by the lean forward."""
    backbone, embeds, configs = llama_family

    def refuse(*args, **kwargs):
        raise AssertionError("the lean sweep called the hooked model")

    monkeypatch.setattr(backbone, "forward", refuse)
    sweep(backbone, embeds, configs)


def test_weights_are_prepared_once_and_follow_edits(llama_family):
    backbone, embeds, configs = llama_family
    first = suffix_forward.backbone_weights(backbone)
    assert suffix_forward.backbone_weights(backbone).layers[0].W_qkv is first.layers[0].W_qkv
    before = sweep(backbone, embeds, configs[:1])
    # the model's own W_Q: a HookedTransformer's parameter, or a view of the bridge's HF q_proj
    W_Q = suffix_forward._parameters(backbone)["blocks.0.attn.W_Q"]
    with torch.no_grad():
        W_Q.mul_(2.0)  # an in-place edit of a packed weight
    try:
        assert suffix_forward.backbone_weights(backbone).layers[0].W_qkv \
            is not first.layers[0].W_qkv
        after = sweep(backbone, embeds, configs[:1])
        hooked = sweep(backbone, embeds, configs[:1], suffix="hooked")
        assert (after - hooked).abs().max().item() <= 1e-4
        assert (after - before).abs().max().item() > 1e-3
    finally:
        with torch.no_grad():
            W_Q.mul_(0.5)


def test_large_backbones_project_from_their_own_qkv_weights(llama_family, monkeypatch):
    """Above PACKED_QKV_MAX_MB no packed copy is made (Q/K/V are projected from the model's own
    weights): the same logits, and the hooked path agrees."""
    backbone, embeds, configs = llama_family
    kept = sweep(backbone, embeds, configs)
    layers = suffix_forward.backbone_weights(backbone).layers
    assert all(layer.W_qkv is not None for layer in layers)
    monkeypatch.setattr(suffix_forward, "PACKED_QKV_MAX_MB", 0)
    weights = suffix_forward.backbone_weights(backbone)
    assert all(layer.W_qkv is None for layer in weights.layers)
    own_W_Q = suffix_forward._parameters(backbone)["blocks.0.attn.W_Q"]
    assert weights.layers[0].qkv_parts[0].data_ptr() == own_W_Q.data_ptr()  # not a copy
    own = sweep(backbone, embeds, configs)
    hooked = sweep(backbone, embeds, configs, suffix="hooked")
    assert (own.softmax(-1) - kept.softmax(-1)).abs().max().item() <= 1e-6
    assert (own.softmax(-1) - hooked.softmax(-1)).abs().max().item() <= TOLERANCE


def test_out_of_memory_on_the_lean_path_halves_the_batch(llama_family, monkeypatch, caplog):
    backbone, embeds, configs = llama_family
    reference = sweep(backbone, embeds, configs, suffix="hooked")
    real = engine.suffix_logits

    def refuse_big_batches(weights, clean, start, blocked, active, samples, **options):
        if len(blocked) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(weights, clean, start, blocked, active, samples, **options)

    monkeypatch.setattr(engine, "suffix_logits", refuse_big_batches)
    with caplog.at_level("WARNING", logger="mapflow_tl.engine"):
        got = sweep(backbone, embeds, configs, batch_budget_mb=1e4)
    assert any("halving it" in r.message for r in caplog.records)
    assert (got.softmax(-1) - reference.softmax(-1)).abs().max().item() <= TOLERANCE


def test_bad_suffix_names_the_choices(llama_family):
    backbone, embeds, configs = llama_family
    with pytest.raises(ValueError, match="unknown suffix forward 'fastest'"):
        sweep(backbone, embeds, configs, suffix="fastest")


def test_single_layer_windows_at_both_ends_and_a_full_cut(llama_family):
    """First and last layer alone, and every edge after the system prompt cut in every layer
    (the first blocked query is position 3: almost the whole sequence is recomputed)."""
    backbone, embeds, _ = llama_family
    seg = _segments()
    n = seg.n_positions
    configs = [KnockoutConfig("video → last", Edges(src=seg.video, dst=seg.last), (layer,))
               for layer in (0, N_LAYERS - 1)]
    configs.append(KnockoutConfig("cut", Edges(src=range(3, n), dst=range(3, n)),
                                  tuple(range(N_LAYERS))))
    lean = sweep(backbone, embeds, configs, suffix="lean")
    naive = sweep(backbone, embeds, configs, method="naive")
    assert (lean.softmax(-1) - naive.softmax(-1)).abs().max().item() <= TOLERANCE


def test_empty_edge_sets_get_the_clean_logits(llama_family):
    """Question → video has no causal edge: the lean sweep returns the clean run's logits (the
    hooked model's own forward as the reference)."""
    backbone, embeds, _ = llama_family
    seg = _segments()
    configs = layer_sweep({"question → video": Edges(src=seg.question, dst=seg.video)},
                          N_LAYERS, k=1)
    got = sweep(backbone, embeds, configs, suffix="lean")
    clean = backbone(embeds, start_at_layer=0)[0, -1].detach()
    assert (got - clean).abs().max().item() <= 1e-5


def test_bfloat16_lean_sweep_stays_at_bfloat16_rounding():
    """In bf16 the lean and the naive sweeps round differently; they must stay within bf16
    rounding of the fp32 HF reference and of each other."""
    torch.manual_seed(0)
    hf_model = _llama().eval()
    _scale(hf_model, seed=5)
    backbone = backbone_of(hf_model.model, hf_model.lm_head, hf_model.config,
                              dtype=torch.bfloat16)
    seg = _segments()
    embeds = torch.randn(1, seg.n_positions, 64, generator=torch.Generator().manual_seed(7))
    curves = _curves(seg)
    configs = layer_sweep({curve: edges for curve, (edges, _) in curves.items()}, N_LAYERS, k=1)
    lean = sweep(backbone, embeds.to(torch.bfloat16), configs, suffix="lean").float().softmax(-1)
    naive = sweep(backbone, embeds.to(torch.bfloat16), configs,
                  method="naive").float().softmax(-1)
    heads = hf_model.config.num_attention_heads
    reference = torch.stack([
        _reference(hf_model, embeds, curves[config.curve][1], config.layers, heads)
        for config in configs]).softmax(-1)
    assert (lean - naive).abs().max().item() < 0.03
    assert (lean - reference).abs().max().item() < 0.03
    assert (naive - reference).abs().max().item() < 0.03
