import pytest
import torch

import mapflow_tl.edges as E
from mapflow_tl.edges import Edges, causal_edge_count
from mapflow_tl.errors import InputError
from mapflow_tl.hooks import PathwaySpec, knockout, random_knockout
from mapflow_tl.layers import window
from mapflow_tl.models.backbone import run_from_embeds
from mapflow_tl.testing import additive_mask, block_mask, hf_logits_with_layer_masks


# ---------------------------------------------------------------- windows
def test_window_styles_by_hand():
    assert window(10, n_layers=32) == list(range(6, 15))           # l-4 … l+4
    assert window(0, n_layers=32) == list(range(0, 5))             # clipped at the bottom
    assert window(31, n_layers=32) == list(range(27, 32))          # clipped at the top
    assert window(10, n_layers=32, style="inverse") == [*range(0, 6), *range(15, 32)]
    assert window(10, n_layers=32, style="top_down") == list(range(10, 32))
    assert window(10, n_layers=32, style="bottom_up") == list(range(0, 11))
    assert window(5, n_layers=32, k=1) == [5]
    assert window(5, n_layers=32, k=4) == [3, 4, 5, 6]


@pytest.mark.parametrize("kwargs, message", [
    (dict(center=32, n_layers=32), "window center 32 is outside \\[0, 32\\)"),
    (dict(center=-1, n_layers=32), "outside"),
    (dict(center=3, n_layers=32, k=0), "positive int"),
    (dict(center=3, n_layers=32, style="diagonal"), "unknown window style"),
    (dict(center=3, n_layers=4, k=9, style="inverse"), "covers no layer"),
])
def test_window_errors(kwargs, message):
    center = kwargs.pop("center")
    with pytest.raises(ValueError, match=message):
        window(center, **kwargs)


def test_window_as_deep_as_the_model_warns_like_a_deeper_one():
    """A centred window of k >= n_layers blocks every layer at every centre (a flat sweep): k ==
    n_layers warns exactly as k > n_layers does; k = n_layers - 1 does not."""
    import warnings

    from mapflow_tl.layers import covers_every_layer

    for k in (8, 9):
        with pytest.warns(UserWarning, match=f"k={k} layers covers all 8 layers"):
            assert window(3, n_layers=8, k=k) == list(range(0, min(8, 4 + (k - 1) // 2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert window(3, n_layers=8, k=7) == list(range(0, 7))
        assert window(0, n_layers=1, k=1) == [0]  # one layer: nothing to sweep, no warning
        window(3, n_layers=8, k=8, style="top_down")  # only the centred window is flat
    assert covers_every_layer(8, 8) and covers_every_layer(9, 8)
    assert not covers_every_layer(7, 8) and not covers_every_layer(1, 1)


def test_layer_range_and_early_to_middle_by_hand():
    """The paper's 1-based inclusive "L6–15" is 0-based 5 … 14; the bounds themselves fit."""
    from mapflow_tl.layers import check_layer, early_to_middle_layers, layer_range

    assert list(layer_range(6, 15, 32)) == list(range(5, 15))
    assert list(layer_range(1, 32, 32)) == list(range(32))
    assert list(layer_range(7, 7, 8)) == [6]
    for first, last in ((0, 3), (3, 33), (5, 4)):
        with pytest.raises(ValueError, match=f"L{first}–{last}"):
            layer_range(first, last, 32, circuit="c")
    assert early_to_middle_layers(32) == list(range(16))
    assert early_to_middle_layers(9) == list(range(4))
    assert early_to_middle_layers(1) == [0]
    assert check_layer(0, 4) == 0 and check_layer(3, 4) == 3
    for bad in (4, -1, True, 1.0):
        with pytest.raises(ValueError):
            check_layer(bad, 4)


# ---------------------------------------------------------------- check_hooks
def test_check_hooks_accepts_a_filter_that_matches_some_hook_points(tiny_backbone):
    """A name filter attaches to every hook point it accepts (TransformerLens): one that accepts
    a single hook point, or a few, is valid; only one that accepts none is refused."""
    from mapflow_tl.hooks import check_hooks

    def noop(activation, hook):
        return None

    names = list(tiny_backbone.hook_dict)
    check_hooks(tiny_backbone, [(lambda name: name == "blocks.1.hook_resid_pre", noop)])
    check_hooks(tiny_backbone, [(lambda name: name.startswith("blocks.0."), noop)])
    check_hooks(tiny_backbone, [(lambda name: name in names, noop)])
    check_hooks(tiny_backbone, [("blocks.3.attn.hook_attn_scores", noop), ("hook_embed", noop)])
    with pytest.raises(ValueError, match="accepts none of this model's"):
        check_hooks(tiny_backbone, [(lambda name: name == "blocks.4.hook_resid_pre", noop)])
    with pytest.raises(ValueError, match="layer 4 is outside \\[0, 4\\)"):
        check_hooks(tiny_backbone, [("blocks.4.hook_resid_pre", noop)])
    with pytest.raises(ValueError, match="did you mean 'blocks.0.hook_resid_pre'"):
        check_hooks(tiny_backbone, [("blocks.0.hook_resid_pree", noop)])
    with pytest.raises(ValueError, match="is not callable"):
        check_hooks(tiny_backbone, [("blocks.0.hook_resid_pre", None)])


def test_videollm_runs_a_filter_that_matches_some_hook_points(tiny_backbone):
    """Through the backbone's run: a filter matching one hook point runs its hook exactly
    there (and is not refused for leaving the others out)."""
    from mapflow_tl.hooks import check_hooks

    seen = []

    def record(activation, hook):
        seen.append(hook.name)

    hooks = [(lambda name: name == "blocks.2.hook_resid_pre", record)]
    check_hooks(tiny_backbone, hooks)
    run_from_embeds(tiny_backbone, embeds_for(tiny_backbone, 5), fwd_hooks=hooks)
    # the hook point's own name: on a TransformerLens 4 bridge the canonical one of the alias
    assert seen == [tiny_backbone.hook_dict["blocks.2.hook_resid_pre"].name]


# ---------------------------------------------------------------- knockout against HF
def embeds_for(model, n, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, n, model.cfg.d_model, generator=generator)


def spans_of(seg):
    # the official coarse question: from the question through the end of the last option (this
    # layout has no "Question:" tokens); the instruction before the last position is not in it
    video, question = seg.video.positions, range(seg.question.start, seg.options[-1].stop)
    frames = [f.positions for f in seg.frames]
    return {
        "cross-frame": [(k, q) for t in range(1, len(frames)) for k, q in
                        [([p for f in frames[:t] for p in f], frames[t])]],
        "video→question": [(video, question)],
        "video→last": [(video, seg.last.positions)],
        "question→last": [(question, seg.last.positions)],
        "last→last": [(seg.last.positions, seg.last.positions)],
    }


CASES = [
    ("cross-frame", [0, 1]),
    ("video→question", [1, 2]),
    ("video→last", [0]),
    ("question→last", [3]),
    ("last→last", [0, 1, 2, 3]),
]


@pytest.mark.parametrize("curve, layers", CASES)
def test_knockout_equals_hf_with_explicit_4d_masks(tiny_hf_llama, tiny_backbone, layout, curve,
                                                  layers):
    n, heads = layout.n_positions, tiny_backbone.cfg.n_heads
    edges = {
        "cross-frame": E.cross_frame, "video→question": E.video_to_question,
        "video→last": E.video_to_last, "question→last": E.question_to_last,
        "last→last": E.last_to_last,
    }[curve](layout)
    embeds = embeds_for(tiny_backbone, n)
    ours = run_from_embeds(tiny_backbone, embeds, fwd_hooks=knockout(edges, layers, n_layers=4))
    blocked = block_mask(n, spans_of(layout)[curve])
    masks = {layer: additive_mask(n, blocked, heads) for layer in layers}
    reference = hf_logits_with_layer_masks(tiny_hf_llama, masks, additive_mask(n, None, heads),
                                           inputs_embeds=embeds)
    clean = run_from_embeds(tiny_backbone, embeds)
    assert (ours - reference).abs().max() <= 1e-4
    assert (ours - clean).abs().max() > 1e-3, "the knockout should change the output"


def test_union_knockout_and_window(tiny_hf_llama, tiny_backbone, layout):
    n, heads = layout.n_positions, tiny_backbone.cfg.n_heads
    cut = E.cross_frame(layout) | E.video_to_question(layout)
    layers = window(1, n_layers=4, k=3)
    embeds = embeds_for(tiny_backbone, n, seed=2)
    ours = run_from_embeds(tiny_backbone, embeds, fwd_hooks=knockout(cut, layers))
    blocked = block_mask(n, spans_of(layout)["cross-frame"] + spans_of(layout)["video→question"])
    reference = hf_logits_with_layer_masks(
        tiny_hf_llama, {l: additive_mask(n, blocked, heads) for l in layers},
        additive_mask(n, None, heads), inputs_embeds=embeds)
    assert (ours - reference).abs().max() <= 1e-4


def test_head_level_knockout_equals_hf(tiny_hf_llama, tiny_backbone, layout):
    n, heads = layout.n_positions, tiny_backbone.cfg.n_heads
    embeds = embeds_for(tiny_backbone, n, seed=3)
    ours = run_from_embeds(tiny_backbone, embeds,
                           fwd_hooks=knockout(E.video_to_last(layout), [1, 2], heads=[0, 3]))
    blocked = block_mask(n, spans_of(layout)["video→last"])
    reference = hf_logits_with_layer_masks(
        tiny_hf_llama, {l: additive_mask(n, blocked, heads, heads=[0, 3]) for l in (1, 2)},
        additive_mask(n, None, heads), inputs_embeds=embeds)
    assert (ours - reference).abs().max() <= 1e-4


def test_knocking_out_nothing_equals_the_clean_run_exactly(tiny_backbone, layout):
    embeds = embeds_for(tiny_backbone, layout.n_positions)
    clean = run_from_embeds(tiny_backbone, embeds)
    empty = run_from_embeds(tiny_backbone, embeds,
                            fwd_hooks=knockout(E.question_to_video(layout), range(4)))
    assert torch.equal(clean, empty)


def test_clean_run_equals_hf(tiny_hf_llama, tiny_backbone, layout):
    embeds = embeds_for(tiny_backbone, layout.n_positions)
    with torch.no_grad():
        reference = tiny_hf_llama(inputs_embeds=embeds).logits
    assert (run_from_embeds(tiny_backbone, embeds) - reference).abs().max() <= 1e-4


def test_hook_lists_compose_in_either_order(tiny_backbone, layout):
    embeds = embeds_for(tiny_backbone, layout.n_positions)
    a = knockout(E.cross_frame(layout), [1, 2])
    b = knockout(E.video_to_last(layout), [2, 3])
    both = knockout(E.cross_frame(layout), [1]) + knockout(
        E.cross_frame(layout) | E.video_to_last(layout), [2]) + knockout(E.video_to_last(layout), [3])
    ab = run_from_embeds(tiny_backbone, embeds, fwd_hooks=a + b)
    ba = run_from_embeds(tiny_backbone, embeds, fwd_hooks=b + a)
    union = run_from_embeds(tiny_backbone, embeds, fwd_hooks=both)
    assert torch.equal(ab, ba)
    assert (ab - union).abs().max() <= 1e-6


@pytest.mark.hooked_backend
def test_suffix_forward_with_kv_cache_indexes_the_right_rows(tiny_backbone, layout):
    from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

    model, n = tiny_backbone, layout.n_positions
    embeds = embeds_for(model, n)
    edges = E.video_to_last(layout) | E.question_to_last(layout)
    hooks = knockout(edges, [1, 2])
    full = run_from_embeds(model, embeds, fwd_hooks=hooks)
    split = n - 3  # the suffix holds the last three positions, only one of which is blocked
    cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    with torch.no_grad():
        model(embeds[:, :split], start_at_layer=0, past_kv_cache=cache, return_type=None)
        suffix = model.run_with_hooks(embeds[:, split:], start_at_layer=0, past_kv_cache=cache,
                                      fwd_hooks=hooks)
    assert (suffix - full[:, split:]).abs().max() <= 1e-5


def test_hooks_are_removed_after_an_exception(tiny_backbone, layout):
    def explode(scores, hook):
        raise RuntimeError("boom")

    hooks = knockout(E.cross_frame(layout), [0, 1]) + [("blocks.2.attn.hook_attn_scores", explode)]
    with pytest.raises(RuntimeError, match="boom"):
        run_from_embeds(tiny_backbone, embeds_for(tiny_backbone, layout.n_positions),
                        fwd_hooks=hooks)
    assert all(not point.fwd_hooks for point in tiny_backbone.hook_dict.values())


def test_knockout_bad_input(tiny_backbone, layout):
    edges = E.cross_frame(layout)
    with pytest.raises(ValueError, match="layer 4 is outside \\[0, 4\\)"):
        knockout(edges, [2, 4], n_layers=4)
    with pytest.raises(ValueError, match="layer 7 is outside \\[0, 4\\)"):
        run_from_embeds(tiny_backbone, embeds_for(tiny_backbone, layout.n_positions),
                        fwd_hooks=knockout(edges, [7]))
    with pytest.raises(ValueError, match="at least one layer"):
        knockout(edges, [])
    with pytest.raises(ValueError, match="beyond the sequence"):
        run_from_embeds(tiny_backbone, embeds_for(tiny_backbone, 10),
                        fwd_hooks=knockout(edges, [0]))
    with pytest.raises(ValueError, match="block every key of query position 0"):
        run_from_embeds(tiny_backbone, embeds_for(tiny_backbone, 5),
                        fwd_hooks=knockout(Edges(src=[0], dst=[0]), [0]))


# ---------------------------------------------------------------- pathway specs
def test_retained_fraction_by_hand():
    # 6 positions, 3 layers: 21 causal edges per layer, 63 in all.
    # keep [0,1]→[4,5] (4 edges) only in layer 1 → blocked in layers 0 and 2;
    # block 5→5 (1 edge) in every layer → 5 + 1 + 5 = 11 blocked, 52 kept.
    a = Edges(src=[0, 1], dst=[4, 5])
    b = Edges(src=[5], dst=[5])
    spec = PathwaySpec(3).keep(a, [1]).block(b, range(3))
    assert spec.blocked_counts(6) == [5, 1, 5]
    assert spec.edge_accounting(6) == (63 - 11, 63)
    assert spec.retained_fraction(6) == pytest.approx(52 / 63)
    assert spec.blocked(0).count(6) == 5 and spec.blocked(1).same_as(b, 6)


def test_overlapping_rules_are_not_double_counted():
    spec = PathwaySpec(2).block(Edges(src=range(3), dst=range(3)), [0]).block(
        Edges(src=[0], dst=[2]), [0, 1])
    assert spec.blocked_counts(3) == [6, 1]


def test_spec_hooks_equal_per_layer_knockouts(tiny_backbone, layout):
    embeds = embeds_for(tiny_backbone, layout.n_positions)
    spec = (PathwaySpec(4).keep(E.cross_frame(layout), [1, 2])
            .block(E.video_to_last(layout) | E.last_to_last(layout), range(4)))
    manual = (knockout(E.cross_frame(layout) | E.video_to_last(layout) | E.last_to_last(layout),
                       [0, 3]) + knockout(E.video_to_last(layout) | E.last_to_last(layout), [1, 2]))
    ours = run_from_embeds(tiny_backbone, embeds, fwd_hooks=spec.hooks())
    reference = run_from_embeds(tiny_backbone, embeds, fwd_hooks=manual)
    assert (ours - reference).abs().max() <= 1e-6
    # 0-based blocks, the paper's 1-based ranges beside: blocks 1–2 are its L2–3
    assert spec.describe().splitlines() == [
        "keep cross-frame in blocks 1–2 (paper L2–3)",
        "block (video → last | last → last) in blocks 0–3 (paper L1–4)"]


def test_head_level_pathway_equals_hf_with_per_head_masks(tiny_hf_llama, tiny_backbone, layout):
    """A head-level keep: cross-frame open only in head 1 (GQA: key/value head 0) of blocks 1–2,
    blocked in every head elsewhere; video → last blocked everywhere. Against the HF model with
    explicit per-head additive masks; the same edge accounting as the all-head pathway."""
    n, heads = layout.n_positions, tiny_backbone.cfg.n_heads
    spans = spans_of(layout)
    cross, to_last = block_mask(n, spans["cross-frame"]), block_mask(n, spans["video→last"])
    spec = (PathwaySpec(4).keep(E.cross_frame(layout), [1, 2], heads=[1])
            .block(E.video_to_last(layout), range(4)))
    embeds = embeds_for(tiny_backbone, n, seed=6)
    ours = run_from_embeds(tiny_backbone, embeds, fwd_hooks=spec.hooks())
    closed = additive_mask(n, cross | to_last, heads)
    open_in_one = torch.minimum(additive_mask(n, to_last, heads),
                                additive_mask(n, cross, heads, heads=[0, 2, 3]))
    reference = hf_logits_with_layer_masks(tiny_hf_llama, {0: closed, 1: open_in_one,
                                                           2: open_in_one, 3: closed},
                                           additive_mask(n, None, heads), inputs_embeds=embeds)
    assert (ours - reference).abs().max() <= 1e-4
    all_heads = (PathwaySpec(4).keep(E.cross_frame(layout), [1, 2])
                 .block(E.video_to_last(layout), range(4)))
    other = run_from_embeds(tiny_backbone, embeds, fwd_hooks=all_heads.hooks())
    assert (ours - other).abs().max() > 1e-3, "keeping one head should differ from keeping all"
    assert spec.edge_accounting(n) == all_heads.edge_accounting(n)
    assert spec.describe().splitlines()[0] == ("keep cross-frame in blocks 1–2 (paper L2–3), "
                                               "heads 1 only")
    with pytest.raises(InputError, match="heads"):
        PathwaySpec(4).keep(E.cross_frame(layout), [1], heads=[])
    bad = PathwaySpec(4).keep(E.cross_frame(layout), [1], heads=[4])
    with pytest.raises(InputError, match="has 4 heads"):
        run_from_embeds(tiny_backbone, embeds, fwd_hooks=bad.hooks())


def test_from_mapping_modes():
    a, b = Edges(src=[0], dst=[1]), Edges(src=[1], dst=[2])
    keep = PathwaySpec.from_mapping(3, {a: [0], b: [1, 2]})
    assert keep.blocked_counts(3) == [1, 1, 1]
    block = PathwaySpec.from_mapping(3, {a: [0], b: [1, 2]}, mode="block")
    assert block.blocked_counts(3) == [1, 1, 1] and block.blocked(0).same_as(a, 3)
    with pytest.raises(ValueError, match="layer 3 is outside"):
        PathwaySpec(3).keep(a, [3])


def test_random_like_official_uniform_and_per_layer_matched(layout):
    n = layout.n_positions
    region = Edges(src=range(layout.video.start, n), dst=range(layout.video.start, n))
    spec = (PathwaySpec(4).keep(E.cross_frame(layout), [1, 2])
            .block(E.video_to_last(layout), range(4)))
    triangle = n * (n + 1) // 2
    blocked = [int(block_mask(n, pairs).sum()) for pairs in (
        [*_cross_pairs(layout), _video_last(layout)], [_video_last(layout)],
        [_video_last(layout)], [*_cross_pairs(layout), _video_last(layout)])]
    # official: the same int(ratio · n(n+1)/2) in every layer, ratio = the blocked fraction
    count = int(sum(blocked) / (4 * triangle) * triangle)
    baseline = spec.random_like(region, n, seed=7)
    assert baseline.blocked_counts(n) == [count] * 4
    assert spec.random_like(region, n, seed=7, ratio=0.1).blocked_counts(n) \
        == [int(0.1 * triangle)] * 4
    matched = spec.random_like(region, n, seed=7, baseline="per-layer-matched")
    assert matched.blocked_counts(n) == blocked
    again = spec.random_like(region, n, seed=7)
    other = spec.random_like(region, n, seed=8)
    assert all(baseline.blocked(l).same_as(again.blocked(l), n) for l in range(4))
    assert not all(baseline.blocked(l).same_as(other.blocked(l), n) for l in range(4))
    assert not baseline.blocked(0).same_as(baseline.blocked(1), n)  # fresh per layer
    inside = region.dense(n)
    assert all(not (baseline.blocked(l).dense(n) & ~inside).any() for l in range(4))
    with pytest.raises(ValueError, match="random baseline must be one of"):
        spec.random_like(region, n, seed=0, baseline="uniform")
    with pytest.raises(ValueError, match="cannot draw"):
        spec.random_like(region, n, seed=0, ratio=1.0)


def _cross_pairs(layout):
    frames = [range(f.start, f.stop) for f in layout.frames]
    return [([p for f in frames[:t] for p in f], frames[t]) for t in range(1, len(frames))]


def _video_last(layout):
    return (range(layout.video.start, layout.video.stop), [layout.n_positions - 1])


def test_random_knockout_official_count_and_seed(layout):
    n = layout.n_positions
    region = Edges(src=range(layout.video.start, n), dst=range(layout.video.start, n))
    hooks = random_knockout(0.25, seed=3, region=region, layers=[0, 2], n_positions=n)
    expected = int(0.25 * (n * (n + 1) // 2))  # of the whole causal triangle, as the paper

    assert [name for name, _ in hooks] == ["blocks.0.attn.hook_attn_scores",
                                           "blocks.2.attn.hook_attn_scores"]
    assert all(hook.edges.count(n) == expected for _, hook in hooks)
    again = random_knockout(0.25, seed=3, region=region, layers=[0, 2], n_positions=n)
    other = random_knockout(0.25, seed=4, region=region, layers=[0, 2], n_positions=n)
    assert hooks[0][1].edges.same_as(again[0][1].edges, n)
    assert not hooks[0][1].edges.same_as(other[0][1].edges, n)
    assert not hooks[0][1].edges.same_as(hooks[1][1].edges, n)  # each layer draws its own
    with pytest.raises(ValueError, match="ratio must lie in"):
        random_knockout(1.5, seed=0, region=region, layers=[0], n_positions=n)


def test_paper_accounting_at_paper_shape():
    """At the paper's shape one layer has pos·(pos+1)/2 causal edges; 32 layers of a
    ~1250-position prompt give the 25.7M total of Map the Flow Table 1 (7B)."""
    n = 1267
    assert 32 * causal_edge_count(n) == pytest.approx(25.7e6, rel=0.002)


def test_hooks_are_removed_after_an_interrupt(tiny_backbone, layout):
    def interrupt(scores, hook):
        raise KeyboardInterrupt

    hooks = knockout(E.cross_frame(layout), [0]) + [("blocks.1.attn.hook_attn_scores", interrupt)]
    with pytest.raises(KeyboardInterrupt):
        run_from_embeds(tiny_backbone, embeds_for(tiny_backbone, layout.n_positions),
                        fwd_hooks=hooks)
    assert all(not point.fwd_hooks for point in tiny_backbone.hook_dict.values())


def test_random_baseline_count_is_exact_when_the_ratio_is_the_pathways_own():
    """N = int(ratio × n(n+1)/2) with ratio the pathway's blocked fraction, in exact arithmetic:
    on 66 positions (2211 causal edges) and 8 layers with 4024 blocked edges the fraction is
    4024 / 17688 and N = 503; through the float 1 − 13664/17688 it would be 502."""
    from fractions import Fraction

    from mapflow_tl.hooks import random_baseline_counts

    class Spec:                       # the two things the count reads of a pathway spec
        n_layers = 8

        def blocked_counts(self, n_positions):
            return [503] * 8

    exact = int(Fraction(4024, 8 * causal_edge_count(66)) * causal_edge_count(66))
    assert exact == 503 and int((1 - 13664 / 17688) * 2211) == 502
    assert random_baseline_counts(Spec(), 66) == dict.fromkeys(range(8), 503)


def official_random_draw(region_start, n, count, n_layers, generator):
    """The official random baseline re-stated (effective_pathway_analysis.py:291-314,
    causal_intervention_tools.py:37-45): candidates = ``tril_indices`` of the whole prompt with
    query and key at or after the video start (row-major), per layer
    ``valid[randperm(len(valid))[:N]]`` — a fresh permutation for every layer of every sample."""
    rows, cols = torch.tril_indices(n, n)
    keep = (rows >= region_start) & (cols >= region_start)
    valid = torch.stack([rows[keep], cols[keep]], dim=1)
    masks = []
    for _ in range(n_layers):
        chosen = valid[torch.randperm(valid.shape[0], generator=generator)[:count]]
        mask = torch.zeros(n, n, dtype=torch.bool)
        mask[chosen[:, 0], chosen[:, 1]] = True
        masks.append(mask)
    return masks


def test_random_baseline_draws_afresh_for_every_sample(layout):
    """Issue 36: one seed used to draw the identical edges for every sample of the same length;
    the official code draws each sample afresh. The draw is now keyed by (seed, sample id):
    samples differ, a (seed, sample) pair repeats, and each draw is the official procedure from
    a generator seeded by SHA-256 of "seed:sample" (never Python's salted hash())."""
    import hashlib

    from mapflow_tl.hooks import random_draw_seed

    n, start = layout.n_positions, layout.video.start
    region = Edges(src=range(start, n), dst=range(start, n))
    spec = PathwaySpec(4).block(E.video_to_last(layout), range(4))
    count = spec.blocked_counts(n)[0]
    draws = {}
    for sample in ("tvbench/0001", "tvbench/0002"):
        for seed in (0, 1, 2):
            key = int.from_bytes(hashlib.sha256(f"{seed}:{sample}".encode()).digest()[:8],
                                 "big") >> 1
            assert random_draw_seed(seed, sample) == key
            expected = official_random_draw(start, n, count, 4,
                                            torch.Generator().manual_seed(key))
            baseline = spec.random_like(region, n, seed, sample=sample)
            got = [baseline.blocked(l).dense(n) for l in range(4)]
            assert all(torch.equal(g, e) for g, e in zip(got, expected)), (sample, seed)
            draws[(sample, seed)] = got
            again = spec.random_like(region, n, seed, sample=sample)
            assert all(torch.equal(again.blocked(l).dense(n), got[l]) for l in range(4))
    for seed in (0, 1, 2):   # same length, same seed, another sample: other edges
        assert not torch.equal(draws[("tvbench/0001", seed)][0], draws[("tvbench/0002", seed)][0])
    hooks = random_knockout(0.1, seed=0, region=region, layers=[0], n_positions=n,
                            sample="tvbench/0001")
    other = random_knockout(0.1, seed=0, region=region, layers=[0], n_positions=n,
                            sample="tvbench/0002")
    assert not hooks[0][1].edges.same_as(other[0][1].edges, n)
    assert random_draw_seed(5) == 5   # no sample: the seed itself
    with pytest.raises(ValueError, match="random seed must be an int"):
        random_draw_seed("5", "s")


def test_knockout_takes_one_layer_as_an_int(tiny_backbone, layout):
    edges = E.video_to_last(layout)
    assert [name for name, _ in knockout(edges, 2)] == ["blocks.2.attn.hook_attn_scores"]
    assert [name for name, _ in knockout(edges, layers=2)] == \
        [name for name, _ in knockout(edges, [2])]
    with pytest.raises(ValueError, match="an int or a list of ints"):
        knockout(edges, layers=2.5)
    with pytest.raises(ValueError, match="layer 4 is outside"):
        knockout(edges, 4, n_layers=4)


# ---------------------------------------------------------------- boundaries
def test_head_knockout_refuses_a_head_equal_to_the_head_count(tiny_backbone, layout):
    """Heads are 0 … n_heads − 1: head 3 of the 4-head model is fine, head 4 is a one-line
    error naming the range, not an index error."""
    n = layout.n_positions
    embeds = embeds_for(tiny_backbone, n)
    run_from_embeds(tiny_backbone, embeds, fwd_hooks=knockout(E.cross_frame(layout), [0], [3]))
    with pytest.raises(ValueError, match=r"heads \[4\] outside \[0, 4\)"):
        run_from_embeds(tiny_backbone, embeds,
                        fwd_hooks=knockout(E.cross_frame(layout), [0], heads=[4]))


def test_spec_hooks_only_where_something_is_blocked_and_describe_in_paper_numbers(layout):
    """A spec attaches hooks only to the layers where some rule blocks edges; describe() writes
    0-based blocks with the paper's 1-based ranges beside ("blocks 1–2 (paper L2–3)", a single
    layer as "block 4 (paper L5)")."""
    video_to_last = E.video_to_last(layout)
    spec = PathwaySpec(6).block(video_to_last, [1, 2]).block(E.last_to_last(layout), [4])
    assert [name for name, _ in spec.hooks()] == [f"blocks.{layer}.attn.hook_attn_scores"
                                                  for layer in (1, 2, 4)]
    assert spec.describe() == ("block video → last in blocks 1–2 (paper L2–3)\n"
                               "block last → last in block 4 (paper L5)")
    kept = PathwaySpec(4).keep(video_to_last, [0, 2])
    assert kept.describe() == "keep video → last in blocks 0, 2 (paper L1, L3)"
    assert [name for name, _ in kept.hooks()] == ["blocks.1.attn.hook_attn_scores",
                                                  "blocks.3.attn.hook_attn_scores"]


def test_random_draw_may_take_every_edge_of_the_region(layout):
    """A region with exactly as many causal edges as the count asks for is drawn whole; one
    edge more is refused with the fix."""
    n = layout.n_positions
    total = n * (n + 1) // 2
    region = Edges.from_mask(torch.ones(n, n, dtype=torch.bool))  # the whole triangle
    hooks = random_knockout(1.0, seed=0, region=region, layers=[1], n_positions=n)
    assert hooks[0][1].edges.count(n) == total
    smaller = Edges.from_mask(torch.ones(n, n, dtype=torch.bool).tril(-1))
    with pytest.raises(ValueError, match=f"cannot draw {total} random edges"):
        random_knockout(1.0, seed=0, region=smaller, layers=[1], n_positions=n)


def test_capture_keeps_the_chosen_positions_of_the_sequence_axis(tiny_backbone, layout):
    """capture(positions=...) selects along the sequence axis (axis 1), not the batch axis."""
    from mapflow_tl.hooks import capture

    n = layout.n_positions
    embeds = embeds_for(tiny_backbone, n)
    whole, some = {}, {}
    name = "blocks.1.hook_resid_pre"
    run_from_embeds(tiny_backbone, embeds, fwd_hooks=capture(name, whole))
    run_from_embeds(tiny_backbone, embeds, fwd_hooks=capture([name], some, positions=[0, 3, 5]))
    assert whole[name].shape == (1, n, tiny_backbone.cfg.d_model)
    assert torch.equal(some[name], whole[name][:, [0, 3, 5]])
