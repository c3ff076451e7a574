"""Proof of equality for the fast knockout sweep (issue 6).

The fast method (clean residual stream from the first blocked layer on, clean keys/values for the
positions before the first blocked query, batched configurations) must give what one full forward
per configuration gives (``method="naive"``): probabilities within 1e-5 in fp32, identical argmax,
for every paper pathway and every window style.
"""

from __future__ import annotations

import pytest
import torch

from mapflow_tl import edges as E
from mapflow_tl.edges import Edges
from mapflow_tl.errors import InputError
from mapflow_tl.engine import (
    KnockoutConfig,
    layer_sweep,
    plan_sweep,
    recomputed_cells,
    sweep,
)
from mapflow_tl.layers import WINDOW_STYLES
from mapflow_tl.models.backbone import run_from_embeds
from mapflow_tl.models.backends import default_backend
from mapflow_tl.testing import backbone_of
from mapflow_tl.segments import SegmentMap
from mapflow_tl.testing import tiny_llama

N_LAYERS = 6
K = 3
TOLERANCE = 1e-5


def _reinit(hf_model: torch.nn.Module, std: float = 0.2, seed: int = 1) -> None:
    """Larger weights than the default init so that knockouts visibly move the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in hf_model.parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
            elif parameter.dim() == 1 and not torch.all(parameter == 1):  # biases, not norms
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def _segments() -> SegmentMap:
    return SegmentMap.sequential(system=3, frames=[(2, 3)] * 4, separator=1, after_video=2,
                                 question=5, options=[2, 3, 2], true_option=1,
                                 between_options=1, before_last=2)


def _paper_curves(seg: SegmentMap) -> dict[str, Edges]:
    """The paper's information-flow targets (Map the Flow §3), plus the empty question → video
    and edge sets whose first blocked query is the first video token."""
    return {
        "cross-frame": E.cross_frame(seg),
        "video → question": E.video_to_question(seg),
        "video → last": E.video_to_last(seg),
        "question → last": E.question_to_last(seg),
        "last → last": E.last_to_last(seg),
        "non-option question → last": E.non_option_question_to_last(seg),
        "true option → last": E.true_option_to_last(seg),
        "false options → last": E.false_options_to_last(seg),
        "video → non-option question": E.video_to_non_option_question(seg),
        "non-option question → true option": E.non_option_question_to_true_option(seg),
        "video → true option": E.video_to_true_option(seg),
        "question → video": E.question_to_video(seg),
        "intra-frame": E.intra_frame(seg),
        "system → video": Edges(src=seg.system, dst=seg.video),
    }


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama():
    hf = tiny_llama(N_LAYERS, seed=0)
    _reinit(hf)
    return backbone_of(hf.model, hf.lm_head, hf.config)


@pytest.fixture(scope="module")
def inputs(llama):
    seg = _segments()
    generator = torch.Generator().manual_seed(2)
    embeds = torch.randn(1, seg.n_positions, llama.cfg.d_model, generator=generator)
    return seg, embeds


def _assert_equal(fast: torch.Tensor, naive: torch.Tensor, configs,
                  tolerance: float = TOLERANCE) -> None:
    fast_p, naive_p = fast.softmax(-1), naive.softmax(-1)
    difference = (fast_p - naive_p).abs().max(dim=-1).values
    worst = int(difference.argmax())
    assert float(difference[worst]) <= tolerance, (
        f"fast and naive differ by {float(difference[worst]):.3g} at {configs[worst]}")
    mismatch = (fast.argmax(-1) != naive.argmax(-1)).nonzero().flatten().tolist()
    assert not mismatch, f"argmax differs for {[configs[i] for i in mismatch]}"


def test_first_video_token_edge_sets_start_at_video(inputs):
    seg, _ = inputs
    curves = _paper_curves(seg)
    n = seg.n_positions
    assert curves["intra-frame"].first_query(n) == seg.video.start
    assert curves["system → video"].first_query(n) == seg.video.start
    assert curves["question → video"].first_query(n) is None


@pytest.mark.parametrize("style", WINDOW_STYLES)
def test_fast_equals_naive_every_paper_curve(llama, inputs, style):
    seg, embeds = inputs
    curves = _paper_curves(seg)
    configs = layer_sweep(curves, N_LAYERS, k=K, style=style)
    layer_sets = {config.layers for config in configs}
    if style == "center":  # the layer-0 and the last-layer windows are both in the sweep
        assert any(0 in layers for layers in layer_sets)
        assert any(N_LAYERS - 1 in layers for layers in layer_sets)
    naive = sweep(llama, embeds, configs, method="naive")
    fast = sweep(llama, embeds, configs)  # fast is the default
    _assert_equal(fast, naive, configs)

    # The check is not vacuous: every non-empty pathway moves the output somewhere in the sweep.
    clean = run_from_embeds(llama, embeds, grad=False)[0, -1].softmax(-1)
    moved = (naive.softmax(-1) - clean).abs().max(dim=-1).values
    for curve in curves:
        rows = [i for i, config in enumerate(configs) if config.curve == curve]
        if curve == "question → video":
            assert float(moved[rows].max()) == 0.0
        else:
            assert float(moved[rows].max()) > 1e-3, f"knocking out {curve} changed nothing"


def test_single_layer_windows_at_both_ends(llama, inputs):
    seg, embeds = inputs
    curves = _paper_curves(seg)
    configs = [KnockoutConfig(curve, edges, (layer,), layer)
               for curve, edges in curves.items() for layer in (0, N_LAYERS - 1)]
    configs.append(KnockoutConfig("cut everything after the system prompt",
                                  Edges(src=range(3, seg.n_positions),
                                        dst=range(3, seg.n_positions)),
                                  tuple(range(N_LAYERS))))
    _assert_equal(sweep(llama, embeds, configs), sweep(llama, embeds, configs, method="naive"),
                  configs)


def test_batching_and_budget_do_not_change_results(llama, inputs):
    seg, embeds = inputs
    configs = layer_sweep(_paper_curves(seg), N_LAYERS, k=K, style="inverse")
    reference = sweep(llama, embeds, configs, method="naive")
    for options in ({"max_batch": 1}, {"max_batch": 3}, {"batch_budget_mb": 1e-6},
                    {"batch_budget_mb": 1e4}):
        _assert_equal(sweep(llama, embeds, configs, **options), reference, configs)
    # A second run and a reordered sweep give the same numbers: the clean cache is never
    # appended to by the per-configuration runs.
    order = torch.randperm(len(configs), generator=torch.Generator().manual_seed(3)).tolist()
    shuffled = sweep(llama, embeds, [configs[i] for i in order])
    _assert_equal(shuffled, sweep(llama, embeds, configs)[order], [configs[i] for i in order])


@pytest.mark.hooked_backend
def test_empty_edge_set_is_the_clean_run_without_a_forward(llama, inputs):
    seg, embeds = inputs
    configs = layer_sweep({"question → video": E.question_to_video(seg)}, N_LAYERS, k=K)
    calls = []
    llama.add_hook(f"blocks.{N_LAYERS - 1}.hook_resid_post",
                   lambda activation, hook: calls.append(activation.shape[0]),
                   is_permanent=True)
    try:
        logits = sweep(llama, embeds, configs, suffix="hooked")
    finally:
        llama.reset_hooks(including_permanent=True)
    assert len(calls) == 1  # the clean forward only
    clean = run_from_embeds(llama, embeds, grad=False)[0, -1]
    torch.testing.assert_close(logits, clean.expand(len(configs), -1), rtol=0, atol=1e-5)


@pytest.mark.hooked_backend
def test_configs_sharing_first_query_share_batches(llama, inputs):
    seg, embeds = inputs
    curves = {name: edges for name, edges in _paper_curves(seg).items() if name.endswith("→ last")}
    configs = layer_sweep(curves, N_LAYERS, k=K)
    groups, empty = plan_sweep(configs, seg.n_positions)
    assert not empty
    assert all(group.first_query == seg.last.start for group in groups)
    assert len(groups) == len({config.start_layer for config in configs})
    forwards = []
    llama.add_hook(f"blocks.{N_LAYERS - 1}.hook_resid_post",
                   lambda activation, hook: forwards.append(tuple(activation.shape[:2])),
                   is_permanent=True)
    try:
        logits = sweep(llama, embeds, configs, batch_budget_mb=1e4, suffix="hooked")
    finally:
        llama.reset_hooks(including_permanent=True)
    # One clean forward over the whole sequence, then single-position forwards that together
    # hold every configuration — fewer of them than (first layer, first query) groups.
    assert forwards[0] == (1, seg.n_positions)
    assert all(n_queries == 1 for _, n_queries in forwards[1:])
    assert sum(batch for batch, _ in forwards[1:]) == len(configs)
    assert len(forwards) - 1 < len(groups)
    _assert_equal(logits, sweep(llama, embeds, configs, method="naive"), configs)


def test_recomputed_cells_by_hand(inputs):
    seg, _ = inputs
    n = seg.n_positions
    configs = [
        KnockoutConfig("video → last", E.video_to_last(seg), (2, 3, 4), 3),
        KnockoutConfig("cross-frame", E.cross_frame(seg), (0, 1), 0),
        KnockoutConfig("question → video", E.question_to_video(seg), (0,), 0),
    ]
    assert recomputed_cells(configs, n, N_LAYERS, method="naive") == 3 * N_LAYERS * n
    frame_1 = seg.frames[1].start
    assert recomputed_cells(configs, n, N_LAYERS) == (N_LAYERS - 2) * 1 + N_LAYERS * (n - frame_1)


def test_bad_input_names_the_problem(llama, inputs):
    seg, embeds = inputs
    config = KnockoutConfig("video → last", E.video_to_last(seg), (1,), 1)
    with pytest.raises(ValueError, match="unknown sweep method 'slow'"):
        sweep(llama, embeds, [config], method="slow")
    with pytest.raises(ValueError, match=r"embeds must be \[1, pos"):
        sweep(llama, embeds.expand(2, -1, -1), [config])
    with pytest.raises(ValueError, match="max_batch"):
        sweep(llama, embeds, [config], max_batch=0)
    with pytest.raises(ValueError, match=f"layer {N_LAYERS} is outside"):
        sweep(llama, embeds, [KnockoutConfig("late", E.video_to_last(seg), (N_LAYERS,))])
    everything = Edges(src=range(seg.n_positions), dst=seg.last, name="all → last")
    for method in ("fast", "naive"):
        with pytest.raises(ValueError, match="'all → last' block every key"):
            sweep(llama, embeds, [KnockoutConfig("all", everything, (1,))], method=method)


def test_qwen2_backbone_with_biases():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=256, attn_implementation="eager")
    hf = Qwen2ForCausalLM(config).eval()
    _reinit(hf, seed=4)
    assert hf.model.layers[0].self_attn.q_proj.bias is not None
    model = backbone_of(hf.model, hf.lm_head, hf.config)
    seg = _segments()
    embeds = torch.randn(1, seg.n_positions, 64, generator=torch.Generator().manual_seed(5))
    configs = layer_sweep(_paper_curves(seg), 4, k=3, style="center")
    naive = sweep(model, embeds, configs, method="naive")
    _assert_equal(sweep(model, embeds, configs), naive, configs)
    clean = run_from_embeds(model, embeds, grad=False)[0, -1].softmax(-1)
    assert float((naive.softmax(-1) - clean).abs().max()) > 1e-3


@pytest.mark.hooked_backend
def test_out_of_memory_halves_the_batch_and_continues(llama, inputs, caplog):
    """A batch that runs out of memory is split in halves, logged, and the sweep goes on with the
    same results (the OOM is provoked by a hook that refuses batches of more than 2)."""
    seg, embeds = inputs
    configs = layer_sweep({"video → last": E.video_to_last(seg)}, N_LAYERS, k=3)

    def refuse_big_batches(scores, hook):
        if scores.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    llama.add_hook("blocks.0.attn.hook_attn_scores", refuse_big_batches)
    try:
        with caplog.at_level("WARNING", logger="mapflow_tl.engine"):
            fast = sweep(llama, embeds, configs, method="fast", max_batch=8, suffix="hooked")
    finally:
        llama.reset_hooks()
    naive = sweep(llama, embeds, configs, method="naive")
    _assert_equal(fast, naive, configs)
    assert any("halving it" in record.message for record in caplog.records)


@pytest.mark.parametrize("style", WINDOW_STYLES)
def test_fast_equals_naive_on_synthtv(style):
    """The shipped SynthTV model through its real adapter: every paper pathway, every style.

    In float64: the paths differ only in the order of their sums, so they must agree to rounding
    of float64. (In float32 the ninth session's checkpoint, logits up to ±18, differs by 1.2e-5
    in a probability, float32 rounding: the same sweep in float64 agrees to 5e-15.)"""
    import copy

    pytest.importorskip("mapflow_tl.synthtv.generator")
    from mapflow_tl.models import VideoSample, load_videollm
    from mapflow_tl.synthtv import generator as gen

    vlm = load_videollm("synthtv-video-ft")
    item = gen.make_item("moving_direction", 1000, 0)
    x = vlm.prepare(VideoSample(item.frames, item.question, item.candidates,
                                answer=item.answer_index))
    configs = layer_sweep(_paper_curves(x.segments), vlm.n_layers, k=3, style=style)
    backbone = copy.deepcopy(vlm.backbone).to(torch.float64)
    embeds = x.embeds.to(torch.float64)
    fast = sweep(backbone, embeds, configs, method="fast")
    naive = sweep(backbone, embeds, configs, method="naive")
    # on the bridge the naive forwards are HF's modules, whose softmax and RMSNorm compute in
    # float32 whatever the dtype (measured 5.8e-7 in a probability): float32 rounding, not 1e-12
    _assert_equal(fast, naive, configs,
                  tolerance=1e-12 if default_backend() == "hooked" else 1e-5)


def test_layer_sweep_has_one_configuration_per_curve_and_every_centre():
    """Without ``centers`` every layer is a window centre (0 … n_layers − 1), curve by curve,
    each with the paper's window around it (written out by hand for k = 3 of 5 layers)."""
    from mapflow_tl.edges import Edges
    from mapflow_tl.engine import layer_sweep

    a, b = Edges(src=[0], dst=[2]), Edges(src=[1], dst=[3])
    configs = layer_sweep({"a": a, "b": b}, 5, k=3)
    assert [(c.curve, c.center) for c in configs] == [(curve, center) for curve in "ab"
                                                      for center in range(5)]
    assert [c.layers for c in configs[:5]] == [(0, 1), (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4)]
    assert configs[0].edges is a and configs[5].edges is b
    assert [c.start_layer for c in configs[:5]] == [0, 0, 1, 2, 3]
    assert [c.center for c in layer_sweep({"a": a}, 5, k=3, centers=[4, 1])] == [4, 1]
    assert [c.layers for c in layer_sweep({"a": a}, 5, k=3, style="top_down")] == [
        tuple(range(center, 5)) for center in range(5)]


# ---------------------------------------------------------------------- head-resolved sweeps
def test_head_configs_fast_equals_naive_on_both_suffix_forwards(llama, inputs):
    """Head-resolved configurations (one head each, GQA: 4 query heads over 2 key/value heads)
    mixed in one sweep with all-head ones: the lean and the hooked suffix forwards both give the
    naive method's logits, through the folded ("→ last") and the SDPA (many queries) attention."""
    seg, embeds = inputs
    curves = {"cross-frame": E.cross_frame(seg), "video → last": E.video_to_last(seg),
              "video → question": E.video_to_question(seg)}
    configs = layer_sweep(curves, N_LAYERS, k=K, heads=range(llama.cfg.n_heads)) \
        + layer_sweep(curves, N_LAYERS, k=K)
    assert {config.heads for config in configs} == {(0,), (1,), (2,), (3,), None}
    naive = sweep(llama, embeds, configs, method="naive")
    _assert_equal(sweep(llama, embeds, configs, suffix="lean"), naive, configs)
    _assert_equal(sweep(llama, embeds, configs, suffix="hooked"), naive, configs)
    # not vacuous: one head's knockout differs from another's and from the all-head knockout
    by_key = {(c.curve, c.center, c.heads): p for c, p in zip(configs, naive.softmax(-1))}
    for curve in curves:
        spread = max(float((by_key[(curve, center, (0,))] - by_key[(curve, center, (1,))])
                           .abs().max()) for center in range(N_LAYERS))
        assert spread > 1e-4, f"heads 0 and 1 of {curve} give the same output"
        all_heads = max(float((by_key[(curve, center, (2,))] - by_key[(curve, center, None)])
                              .abs().max()) for center in range(N_LAYERS))
        assert all_heads > 1e-4, f"head 2 of {curve} gives the all-head knockout"


def _hand_blocked(seg: SegmentMap, curve: str) -> torch.Tensor:
    """The curve's blocked (query, key) pairs, written out from the layout's spans."""
    n = seg.n_positions
    blocked = torch.zeros(n, n, dtype=torch.bool)
    frames = [list(frame.positions) for frame in seg.frames]
    if curve == "cross-frame":
        for t in range(1, len(frames)):
            earlier = [p for frame in frames[:t] for p in frame]
            blocked[torch.tensor(frames[t])[:, None], torch.tensor(earlier)[None]] = True
    else:  # video → last
        blocked[n - 1, torch.tensor([p for frame in frames for p in frame])] = True
    return blocked


@pytest.mark.parametrize("curve", ["cross-frame", "video → last"])
@pytest.mark.parametrize("suffix", ["lean", "hooked"])
def test_head_knockout_equals_hf_with_a_per_head_mask(tiny_hf_llama, tiny_backbone, layout,
                                                      curve, suffix):
    """A head-resolved sweep point equals the Hugging Face model run with an explicit additive
    mask that blocks the curve's pairs in that head only (GQA: heads 1 and 2 belong to different
    key/value heads)."""
    from mapflow_tl.testing import additive_mask, hf_logits_with_layer_masks

    n, n_heads = layout.n_positions, tiny_backbone.cfg.n_heads
    edges = {"cross-frame": E.cross_frame, "video → last": E.video_to_last}[curve](layout)
    generator = torch.Generator().manual_seed(4)
    embeds = torch.randn(1, n, tiny_backbone.cfg.d_model, generator=generator)
    configs = [KnockoutConfig(curve, edges, (1, 2), heads=(head,)) for head in (1, 2)]
    ours = sweep(tiny_backbone, embeds, configs, suffix=suffix)
    blocked = _hand_blocked(layout, curve)
    for row, head in enumerate((1, 2)):
        reference = hf_logits_with_layer_masks(
            tiny_hf_llama, {layer: additive_mask(n, blocked, n_heads, heads=[head])
                            for layer in (1, 2)},
            additive_mask(n, None, n_heads), inputs_embeds=embeds)[0, -1]
        assert (ours[row] - reference).abs().max() <= 1e-4, f"head {head}"
    assert (ours[0] - ours[1]).abs().max() > 1e-3, "the two heads' knockouts should differ"


def test_head_configs_bad_input_names_the_problem(llama, inputs):
    seg, embeds = inputs
    with pytest.raises(InputError, match="heads"):
        KnockoutConfig("x", E.video_to_last(seg), (1,), heads=())
    with pytest.raises(InputError, match="heads"):
        KnockoutConfig("x", E.video_to_last(seg), (1,), heads=(-1,))
    with pytest.raises(InputError, match="outside the model's 4 heads"):
        sweep(llama, embeds, [KnockoutConfig("x", E.video_to_last(seg), (1,), heads=(4,))])
    with pytest.raises(InputError, match="heads"):
        layer_sweep({"x": E.video_to_last(seg)}, N_LAYERS, heads=[])


def test_head_resolved_batches_budget_for_their_per_head_masks(llama, inputs, monkeypatch):
    """A head-resolved batch's knockout mask is per head: under the same memory budget its
    batches are smaller than those of the same configurations over all heads, and the results
    are unchanged."""
    import mapflow_tl.engine as engine

    seg, embeds = inputs
    n = seg.n_positions
    edges = E.cross_frame(seg)
    first = edges.first_query(n)
    all_heads = [KnockoutConfig("cf", edges, (2,), 2)] * 8
    per_head = [KnockoutConfig("cf", edges, (2,), 2, heads=(h % 4,)) for h in range(8)]
    budget = 4 * engine._lean_working_bytes_per_config(llama, n - first, n) / 2**20
    sizes = []
    real = engine.suffix_logits

    def counting(*args, **kwargs):
        sizes.append(len(args[3]))
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "suffix_logits", counting)
    sweep(llama, embeds, all_heads, batch_budget_mb=budget, suffix="lean")
    assert sizes == [4, 4]
    sizes.clear()
    fast = sweep(llama, embeds, per_head, batch_budget_mb=budget, suffix="lean")
    assert max(sizes) < 4 and sum(sizes) == 8
    _assert_equal(fast, sweep(llama, embeds, per_head, method="naive"), per_head)


@pytest.mark.parametrize("suffix", ["lean", "hooked"])
def test_pathway_configs_equal_hf_with_each_layers_own_mask(tiny_hf_llama, tiny_backbone,
                                                            layout, suffix):
    """An effective pathway as one engine configuration (KnockoutConfig.from_pathway: different
    edges blocked in different layers) equals the Hugging Face model run with each layer's own
    explicit additive mask, built with plain loops; several pathways, batched together, each
    keep their own layers' masks; a pathway that blocks nothing is the clean run."""
    from mapflow_tl.hooks import PathwaySpec
    from mapflow_tl.testing import additive_mask, block_mask, hf_logits_with_layer_masks

    n, n_heads, n_layers = layout.n_positions, tiny_backbone.cfg.n_heads, 4
    video = list(range(layout.video.start, layout.video.stop))
    question = list(layout.question_with_options.positions)
    last = [n - 1]
    frames = [list(frame.positions) for frame in layout.frames]
    cross = [(sum(frames[:t], []), frames[t]) for t in range(1, len(frames))]
    specs = [
        (PathwaySpec(n_layers).keep(E.cross_frame(layout), [1, 2])
         .keep(E.video_to_last(layout), [3]).block(E.question_to_last(layout), [0, 2])),
        PathwaySpec(n_layers).keep(E.video_to_question(layout), [0]),
        PathwaySpec(n_layers),
    ]
    hand = [  # per layer: (keys, queries) pairs blocked, written out from the rules above
        {0: cross + [(video, last), (question, last)], 1: [(video, last)],
         2: [(video, last), (question, last)], 3: cross},
        {layer: [(video, question)] for layer in (1, 2, 3)},
        {},
    ]
    generator = torch.Generator().manual_seed(5)
    embeds = torch.randn(1, n, tiny_backbone.cfg.d_model, generator=generator)
    configs = [KnockoutConfig.from_pathway(spec, f"p{i}", n) for i, spec in enumerate(specs)]
    ours = sweep(tiny_backbone, embeds, configs, suffix=suffix)
    for row, blocked in enumerate(hand):
        reference = hf_logits_with_layer_masks(
            tiny_hf_llama, {layer: additive_mask(n, block_mask(n, pairs), n_heads)
                            for layer, pairs in blocked.items()},
            additive_mask(n, None, n_heads), inputs_embeds=embeds)[0, -1]
        assert (ours[row] - reference).abs().max() <= 1e-4, f"pathway {row}"
    assert (ours[0] - ours[2]).abs().max() > 1e-3, "the pathway should change the answer"
