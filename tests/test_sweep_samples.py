"""Knockout sweeps of several samples at once (``engine.sweep_samples``): samples of different
lengths share the lean suffix forward's layer calls and each still gets exactly its own sweep.

Reference (independent of mapflow_tl's forward code): the HF causal LM, eager attention, fed each
sample's embeddings alone, with an additive 4D mask in each knocked-out layer built by hand from
positions (``reference.block_mask``). fp32: probabilities within 1e-5, argmax equal.
"""

from __future__ import annotations

import pytest
import torch

import mapflow_tl as mf
from mapflow_tl import engine, suffix_forward
from mapflow_tl.edges import Edges
from mapflow_tl.engine import layer_sweep, sweep, sweep_samples
from mapflow_tl.testing import backbone_of
from mapflow_tl.segments import SegmentMap
from mapflow_tl.testing import additive_mask, block_mask, hf_logits_with_layer_masks
from test_suffix_forward import FAMILIES, N_LAYERS, TOLERANCE, _check, _scale

pytestmark = pytest.mark.usefixtures("one_thread")

# three prompt layouts of different lengths (22, 25 and 25 positions): the question and the
# options differ in length, so every pathway's first blocked query differs between samples
LAYOUTS = [dict(question=3, options=[2, 2]), dict(question=5, options=[2, 3]),
           dict(question=4, options=[3, 3])]


def _segments(layout: dict) -> SegmentMap:
    return SegmentMap.sequential(system=3, frames=[(2, 2)] * 2, separator=1, after_video=2,
                                 true_option=0, between_options=1, before_last=2, **layout)


def _curves(seg: SegmentMap) -> dict[str, tuple[Edges, list]]:
    """The paper's pathways with their (keys, queries) pairs written out by hand."""
    n = seg.n_positions
    frames = [list(frame.positions) for frame in seg.frames]
    video, question, last = list(seg.video.positions), list(seg.question.positions), [n - 1]
    return {
        "cross-frame": (mf.cross_frame(seg), [(frames[0], frames[1])]),
        "video → question": (Edges(src=seg.video, dst=seg.question), [(video, question)]),
        "video → last": (Edges(src=seg.video, dst=seg.last), [(video, last)]),
        "question → last": (Edges(src=seg.question, dst=seg.last), [(question, last)]),
    }


def _model(name: str, seed: int):
    torch.manual_seed(0)
    hf_model = FAMILIES[name]().eval()
    _scale(hf_model, seed=seed)
    tied = hf_model.config.tie_word_embeddings
    backbone = backbone_of(hf_model.model, None if tied else hf_model.lm_head, hf_model.config)
    return hf_model, backbone


def _samples(d_model: int):
    segs = [_segments(layout) for layout in LAYOUTS]
    embeds = [torch.randn(1, seg.n_positions, d_model, generator=torch.Generator().manual_seed(i))
              for i, seg in enumerate(segs)]
    return segs, embeds


def _expected(hf_model, embeds, pairs, layers) -> torch.Tensor:
    n, heads = embeds.shape[1], hf_model.config.num_attention_heads
    blocked = block_mask(n, pairs)
    masks = {layer: additive_mask(n, blocked, heads) for layer in layers}
    return hf_logits_with_layer_masks(hf_model, masks, additive_mask(n, None, heads),
                                      inputs_embeds=embeds)[0, -1]


@pytest.mark.parametrize("attention", ["sdpa", "sdpa-chunked", "folded"])
@pytest.mark.parametrize("name", ["llama-gqa-untied", "qwen2-qkv-bias"])
def test_samples_of_different_lengths_equal_hf_each_alone(name, attention, monkeypatch):
    hf_model, backbone = _model(name, seed=5)
    segs, embeds = _samples(hf_model.config.hidden_size)
    monkeypatch.setattr(suffix_forward, "SDPA_MIN_QUERIES",
                        10**9 if attention == "folded" else 1)
    monkeypatch.setattr(suffix_forward, "SDPA_QUERY_CHUNK",
                        3 if attention == "sdpa-chunked" else 10**9)
    curves = [_curves(seg) for seg in segs]
    configs = [layer_sweep({c: e for c, (e, _) in sample.items()}, N_LAYERS, k=2)
               for sample in curves]
    # the last sample sweeps only two curves: samples contribute unequal counts to a batch
    configs[-1] = [c for c in configs[-1] if c.curve in ("video → last", "cross-frame")]
    got = sweep_samples(backbone, embeds, configs, batch_budget_mb=1e4)
    assert [len(logits) for logits in got] == [len(c) for c in configs]
    moved = 0.0
    for index, (sample_configs, logits) in enumerate(zip(configs, got)):
        clean = hf_model(inputs_embeds=embeds[index]).logits[0, -1]
        for config, row in zip(sample_configs, logits):
            expected = _expected(hf_model, embeds[index], curves[index][config.curve][1],
                                 config.layers)
            _check(row, expected, (name, attention, index, config))
            moved = max(moved, (expected.softmax(-1) - clean.softmax(-1)).abs().max().item())
    assert moved > 1e-3, "no knockout moved the output; the check would be vacuous"


def test_layer_calls_are_shared_across_samples(monkeypatch):
    """"→ last" configurations of all samples (one recomputed position each) run in shared
    batches: fewer suffix calls than the samples' separate sweeps, and batches that mix samples."""
    _, backbone = _model("llama-gqa-untied", seed=5)
    segs, embeds = _samples(64)
    configs = [layer_sweep({c: e for c, (e, _) in _curves(seg).items() if c.endswith("last")},
                           N_LAYERS, k=1) for seg in segs]
    calls: list[list[int]] = []
    real = engine.suffix_logits

    def record(weights, clean, start, blocked, active, samples, **options):
        calls.append(list(samples))
        return real(weights, clean, start, blocked, active, samples, **options)

    monkeypatch.setattr(engine, "suffix_logits", record)
    together = sweep_samples(backbone, embeds, configs, batch_budget_mb=1e4)
    shared = list(calls)
    calls.clear()
    alone = [sweep(backbone, e, c, batch_budget_mb=1e4) for e, c in zip(embeds, configs)]
    assert len(shared) < len(calls)
    assert any(len(set(samples)) > 1 for samples in shared)
    for a, b in zip(together, alone):
        assert (a.softmax(-1) - b.softmax(-1)).abs().max().item() <= TOLERANCE
        assert torch.equal(a.argmax(-1), b.argmax(-1))
    one_at_a_time = sweep_samples(backbone, embeds, configs, max_samples=1)
    for a, b in zip(together, one_at_a_time):
        assert (a.softmax(-1) - b.softmax(-1)).abs().max().item() <= TOLERANCE


def test_empty_lists_hooked_path_and_naive_method():
    _, backbone = _model("llama-gqa-untied", seed=5)
    segs, embeds = _samples(64)
    configs = [layer_sweep({c: e for c, (e, _) in _curves(seg).items()}, N_LAYERS, k=1)
               for seg in segs]
    configs[1] = []  # a sample with nothing to sweep gets an empty [0, vocab] result
    lean = sweep_samples(backbone, embeds, configs)
    hooked = sweep_samples(backbone, embeds, configs, suffix="hooked")
    naive = sweep_samples(backbone, embeds, configs, method="naive")
    assert lean[1].shape == (0, backbone.cfg.d_vocab) == naive[1].shape
    for a, b, c in (rows for rows in zip(lean, hooked, naive) if len(rows[2])):
        assert (a.softmax(-1) - c.softmax(-1)).abs().max().item() <= TOLERANCE
        assert (b.softmax(-1) - c.softmax(-1)).abs().max().item() <= TOLERANCE
    assert sweep_samples(backbone, [], []) == []


def test_bad_input_names_the_sample_and_the_fix():
    _, backbone = _model("llama-gqa-untied", seed=5)
    segs, embeds = _samples(64)
    configs = [layer_sweep({c: e for c, (e, _) in _curves(seg).items()}, N_LAYERS, k=1)
               for seg in segs]
    with pytest.raises(ValueError, match="one configuration list per sample, got 3 samples and 2"):
        sweep_samples(backbone, embeds, configs[:2])
    with pytest.raises(ValueError, match=r"sample 1: embeds must be \[1, pos, 64\]"):
        sweep_samples(backbone, [embeds[0], embeds[1][0]], configs[:2])
    with pytest.raises(ValueError, match="max_samples must be a positive int"):
        sweep_samples(backbone, embeds, configs, max_samples=0)
    with pytest.raises(ValueError, match="sweep_samples runs several"):
        sweep(backbone, torch.cat([embeds[1], embeds[2]]), configs[1])


def test_mrope_samples_with_their_own_positions_share_a_sweep(tmp_path_factory):
    """Qwen2-VL: each sample has its own 3D rotary positions; swept together, each element still
    rotates by its own sample's tables and equals the HF VLM with explicit masks."""
    from test_models_qwen import OPTIONS, QUESTION, frames_array, hf_model_of
    from test_models_qwen_vl import CLASSES, build

    path = build("qwen2_vl", tmp_path_factory.mktemp("qwen2_vl"))
    vlm = mf.load_videollm(path)
    hf_model = hf_model_of(path, CLASSES["qwen2_vl"][1])
    xs = [vlm.prepare(mf.VideoSample(frames_array(4, 32, 48), QUESTION, OPTIONS, answer=1)),
          vlm.prepare(mf.VideoSample(frames_array(4, 32, 32, seed=5), "Where is it?",
                                     ["Left.", "Right."], answer=0))]
    heads = hf_model.config.text_config.num_attention_heads
    curves, configs = [], []
    for x in xs:
        seg, n = x.segments, x.n_positions
        sample = {"cross-frame": (mf.cross_frame(seg), [(list(seg.frames[0].positions),
                                                         list(seg.frames[1].positions))]),
                  "video → last": (Edges(src=seg.video, dst=seg.last),
                                   [(list(seg.video.positions), [n - 1])])}
        curves.append(sample)
        configs.append(layer_sweep({c: e for c, (e, _) in sample.items()}, vlm.n_layers, k=1))
    assert xs[0].n_positions != xs[1].n_positions
    got = sweep_samples(vlm.backbone, [x.embeds for x in xs], configs, batch_budget_mb=1e4)
    for x, sample, sample_configs, logits in zip(xs, curves, configs, got):
        n = x.n_positions
        for config, row in zip(sample_configs, logits):
            blocked = block_mask(n, sample[config.curve][1])
            masks = {layer: additive_mask(n, blocked, heads) for layer in config.layers}
            expected = hf_logits_with_layer_masks(
                hf_model, masks, additive_mask(n, None, heads), input_ids=x.input_ids,
                **x.meta["model_inputs"])[0, -1]
            _check(row, expected, ("qwen2_vl", n, config))


def test_bfloat16_samples_together_stay_at_bfloat16_rounding():
    """In bf16 (the GPU dtype) samples swept together stay within bf16 rounding of each sample's
    fp32 HF reference and of the naive bf16 sweep."""
    hf_model, _ = _model("llama-gqa-untied", seed=5)
    backbone = backbone_of(hf_model.model, hf_model.lm_head, hf_model.config,
                              dtype=torch.bfloat16)
    segs, embeds = _samples(64)
    curves = [_curves(seg) for seg in segs]
    configs = [layer_sweep({c: e for c, (e, _) in sample.items()}, N_LAYERS, k=1)
               for sample in curves]
    half = [e.to(torch.bfloat16) for e in embeds]
    together = sweep_samples(backbone, half, configs, batch_budget_mb=1e4)
    naive = sweep_samples(backbone, half, configs, method="naive")
    for index, (sample_configs, got, slow) in enumerate(zip(configs, together, naive)):
        got, slow = got.float().softmax(-1), slow.float().softmax(-1)
        reference = torch.stack([_expected(hf_model, embeds[index], curves[index][c.curve][1],
                                           c.layers) for c in sample_configs]).softmax(-1)
        assert (got - slow).abs().max().item() < 0.03
        assert (got - reference).abs().max().item() < 0.03


# a fourth, longer layout (31 positions), so that the samples have three different lengths
LONGER = dict(question=7, options=[4, 4])


@pytest.mark.parametrize("order", ["longest-last", "longest-first", "shortest-last"])
def test_samples_in_any_order_come_back_in_the_callers_order(order):
    """Samples of three lengths, given sorted, reversed or with the shortest last: the lean
    path groups them by length and pads the batch to the longest, yet result i is sample i's own
    sweep. An edge set with no causal edge ("last → video") equals the clean run, which must be
    read at each sample's own last position, not the padded batch's. Reference: each sample
    alone through the HF model with explicit masks, |Δp| <= 1e-5."""
    hf_model, backbone = _model("llama-gqa-untied", seed=5)
    layouts = LAYOUTS[:2] + [LONGER]
    segs = [_segments(layout) for layout in layouts]
    embeds = [torch.randn(1, seg.n_positions, 64, generator=torch.Generator().manual_seed(10 + i))
              for i, seg in enumerate(segs)]
    lengths = [seg.n_positions for seg in segs]
    assert lengths == sorted(lengths) and len(set(lengths)) == 3
    permutation = {"longest-last": [0, 1, 2], "longest-first": [2, 1, 0],
                   "shortest-last": [1, 2, 0]}[order]
    segs, embeds = [segs[i] for i in permutation], [embeds[i] for i in permutation]
    curves = []
    for seg in segs:
        sample = {name: pair for name, pair in _curves(seg).items()
                  if name in ("video → last", "question → last")}
        n = seg.n_positions
        sample["last → video"] = (Edges(src=seg.last, dst=seg.video),
                                  [([n - 1], list(seg.video.positions))])
        curves.append(sample)
    configs = [layer_sweep({c: e for c, (e, _) in sample.items()}, N_LAYERS, k=1)
               for sample in curves]
    got = sweep_samples(backbone, embeds, configs, batch_budget_mb=1e4)
    assert [len(logits) for logits in got] == [len(c) for c in configs]
    for index, (sample_configs, logits) in enumerate(zip(configs, got)):
        clean = hf_model(inputs_embeds=embeds[index]).logits[0, -1].detach()
        for config, row in zip(sample_configs, logits):
            expected = _expected(hf_model, embeds[index], curves[index][config.curve][1],
                                 config.layers)
            _check(row, expected, (order, index, config.curve, config.center))
            if config.curve == "last → video":
                _check(row, clean, (order, index, "clean"))
    # and against each sample swept alone (tolerance, not bitwise: other batch shapes)
    for sample, sample_configs, logits in zip(embeds, configs, got):
        alone = sweep(backbone, sample, sample_configs, batch_budget_mb=1e4)
        assert (alone.softmax(-1) - logits.softmax(-1)).abs().max().item() <= TOLERANCE


def test_samples_are_grouped_shortest_first_with_little_padding():
    """Groups are formed over the samples sorted by length (ties in the caller's order), so a
    group pads to the length of similar samples, at most ``max_samples`` per group."""
    _, backbone = _model("llama-gqa-untied", seed=5)
    lengths = [25, 22, 31, 22, 40]
    assert engine._sample_chunks(backbone, lengths, 2) == [[1, 3], [0, 2], [4]]
    assert engine._sample_chunks(backbone, lengths, 1) == [[1], [3], [0], [2], [4]]
    assert engine._sample_chunks(backbone, lengths, None) == [[1, 3, 0, 2, 4]]
