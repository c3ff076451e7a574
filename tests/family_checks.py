"""Checks every new family's test runs on its tiny HF model, each against an independent
reference (the HF model with explicit 4D masks, the naive sweep, the HF model in bf16). They
return the measured max abs difference, which docs/models.md reports."""

from __future__ import annotations

import torch

import mapflow_tl as mf
from mapflow_tl.models import load_videollm
from mapflow_tl.testing import additive_mask, block_mask, hf_logits_with_layer_masks


def cross_frame_pairs(seg):
    """(keys, queries) of the cross-frame edges, written out frame by frame."""
    return [(seg.frames[s].positions, seg.frames[d].positions)
            for d in range(len(seg.frames)) for s in range(d)]


def hf_knockout_logits(hf_model, x, pairs, layers):
    """The HF model's logits with the (keys, queries) ``pairs`` blocked in ``layers``."""
    n = x.n_positions
    heads = hf_model.config.text_config.num_attention_heads
    blocked = additive_mask(n, block_mask(n, pairs), heads)
    return hf_logits_with_layer_masks(hf_model, {layer: blocked for layer in layers},
                                      additive_mask(n, None, heads), input_ids=x.input_ids,
                                      **x.meta["model_inputs"])


def check_knockout(vlm, x, hf_model, layers=(0, 2)) -> float:
    """Cross-frame ∪ video→question ∪ true option→last in two layers equals the HF model with the
    equivalent explicit mask; returns the max abs difference."""
    seg = x.segments
    edges = (mf.cross_frame(seg) | mf.Edges(src=seg.video, dst=seg.question_with_options)
             | mf.Edges(src=seg.true_option, dst=seg.last))
    got = vlm.run_with_hooks(x, mf.knockout(edges, list(layers)))
    n = x.n_positions
    pairs = cross_frame_pairs(seg) + [
        (seg.video.positions, seg.question_with_options.positions),
        (seg.true_option.positions, [n - 1])]
    expected = hf_knockout_logits(hf_model, x, pairs, layers)
    assert (got - vlm.run_with_hooks(x)).abs().max() > 1e-2  # the knockout changes something
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-4, diff
    return diff


def check_fast_sweep(vlm, x) -> float:
    """The fast sweep (mid-stack suffix forwards) equals the naive one."""
    from mapflow_tl.engine import layer_sweep, sweep

    seg = x.segments
    configs = layer_sweep({"cross_frame": mf.cross_frame(seg),
                           "video_to_last": mf.Edges(src=seg.video, dst=seg.last)},
                          vlm.n_layers, k=1)
    fast = sweep(vlm.backbone, x.embeds, configs, method="fast")
    naive = sweep(vlm.backbone, x.embeds, configs, method="naive")
    assert (naive - vlm.run_with_hooks(x)[0, -1]).abs().max() > 1e-4  # knockouts act
    diff = (fast - naive).abs().max().item()
    assert diff <= 1e-4, diff
    return diff


def check_flow_sweep(vlm, x, hf_model) -> float:
    """The experiment code, unchanged: a cross-frame flow sweep's knocked-out probability of the
    true answer in each layer equals the HF model's with the cross-frame mask in that layer."""
    rows = mf.flow_sweep(vlm, x, "cross-frame", k=1)
    assert [row["layer"] for row in rows] == list(range(vlm.n_layers))
    assert max(abs(row["change_true"]) for row in rows) > 1e-3  # the knockouts act
    pairs = cross_frame_pairs(x.segments)
    diff = 0.0
    for row in rows:
        logits = hf_knockout_logits(hf_model, x, pairs, [row["layer"]])
        expected = logits[0, -1].softmax(-1)[x.answer_token].item()
        diff = max(diff, abs(row["p_true"] - expected))
    assert diff <= 1e-5, diff
    return diff


def check_bf16(path, hf_class, sample, hf_model_of) -> None:
    """Loaded in bf16, the backbone runs close to the HF model in bf16 and picks its answer up to
    a bf16 tie (the random model's top two can be one bf16 step apart)."""
    low = load_videollm(path, dtype=torch.bfloat16)
    y = low.prepare(sample)
    assert y.embeds.dtype == torch.bfloat16 and low.backbone.cfg.dtype == torch.bfloat16
    hf_low = hf_model_of(path, hf_class).to(torch.bfloat16)
    inputs = {k: v.to(torch.bfloat16) if v.is_floating_point() else v
              for k, v in y.meta["model_inputs"].items()}
    with torch.no_grad():
        expected = hf_low(input_ids=y.input_ids, **inputs).logits.float()
    got = low.run_with_hooks(y).float()
    assert torch.isfinite(got).all()
    assert (got - expected).abs().max().item() < 0.15  # bf16 rounding, not a wrong layout
    best = expected[0, -1].max()
    ours = expected[0, -1, got[0, -1].argmax()]
    assert best - ours <= best.abs() * 2 ** -7
