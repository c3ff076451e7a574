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


def hf_generate(hf_model, x, n_new):
    """The HF model's own greedy ``generate`` on the prompt's token ids and pixels: ``(new token
    ids, logits of each step [n_new, d_vocab], rope_deltas)`` — exactly ``n_new`` tokens (no end
    token stops it)."""
    with torch.no_grad():
        out = hf_model.generate(input_ids=x.input_ids, **x.meta["model_inputs"],
                                max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                num_beams=1, output_logits=True, return_dict_in_generate=True,
                                pad_token_id=0)
    deltas = getattr(hf_model.model, "rope_deltas", None)
    return out.sequences[0, x.n_positions:], torch.stack(out.logits)[:, 0], deltas


def hf_inputs_with_text(x, n_new):
    """The HF model's inputs for the prompt followed by ``n_new`` text tokens: the processor's
    token types (``mm_token_type_ids``, from which M-RoPE is computed) padded with text (0)."""
    inputs = dict(x.meta["model_inputs"])
    if "mm_token_type_ids" in inputs:
        types = inputs["mm_token_type_ids"]
        inputs["mm_token_type_ids"] = torch.cat([types, types.new_zeros(1, n_new)], dim=1)
    return inputs


def check_generate(vlm, x, hf_model, n_new=5) -> dict[str, float]:
    """Greedy generation, with and without the key/value cache, equals the HF model's own
    ``generate`` token for token, each step's logits within 1e-4; the appended tokens' 3D
    positions are HF's (``rope_deltas`` added to the cache position); the teacher-forced answer
    (``extend``) gives the logits of HF's forward on the whole sequence (its own M-RoPE). Returns
    the max abs differences."""
    registered = len(vlm.adapter.rotary._samples)
    tokens, logits = vlm.generate(x, n_new, stop_ids=[])
    again, logits_no_cache = vlm.generate(x, n_new, stop_ids=[], use_cache=False)
    assert len(vlm.adapter.rotary._samples) == registered  # each step's binding dropped
    expected, expected_logits, deltas = hf_generate(hf_model, x, n_new)
    assert tokens.tolist() == again.tolist() == expected.tolist(), (tokens, again, expected)
    assert len(set(tokens.tolist())) > 1  # not one token repeated: the positions matter
    step = max((logits - expected_logits).abs().max().item(),
               (logits_no_cache - expected_logits).abs().max().item())
    assert step <= 1e-4, step
    n = x.n_positions
    y = vlm.extend(x, tokens)
    appended = torch.arange(n, n + n_new) + int(deltas[0, 0])
    assert torch.equal(y.meta["position_ids"][:, 0, n:], appended.expand(3, -1))
    assert torch.equal(y.meta["position_ids"][:, :, :n], x.meta["position_ids"])
    with torch.no_grad():
        full = hf_model(input_ids=y.input_ids, **hf_inputs_with_text(x, n_new)).logits
    forced = (vlm(y) - full).abs()
    answer_rows = forced[0, n - 1:].max().item()  # the rows that predict the answer
    forced = forced.max().item()
    assert forced <= 1e-4, forced
    # generation's positions and the full forward's coincide here: the prompt ends at its
    # largest position (both continue from it)
    assert int(x.meta["position_ids"][:, 0, -1].max()) == int(x.meta["position_ids"].max())
    # the prompt's own binding outlives generation (only each step's was dropped)
    assert (vlm(x)[0, -1] - expected_logits[0]).abs().max().item() <= 1e-4
    return {"generate": step, "extend": forced, "extend_answer_rows": answer_rows}


def check_open_ended_knockout(vlm, x, hf_model, n_new=4, layers=(0, 1)) -> dict[str, float]:
    """On a teacher-forced answer: video → response ∪ question → last in ``layers`` equals the HF
    model on the whole sequence with the equivalent explicit 4D mask. Returns the max abs
    differences over all rows and over the rows that predict the answer."""
    from mapflow_tl import edges

    tokens, _ = vlm.generate(x, n_new, stop_ids=[])
    y = vlm.extend(x, tokens)
    seg = y.segments
    cut = edges.video_to_response(seg, open_tokens=0) | mf.Edges(src=seg.question,
                                                                 dst=seg.last)
    got = vlm.run_with_hooks(y, mf.knockout(cut, list(layers)))
    n, P = y.n_positions, x.n_positions
    answer = list(range(P, n - 1))  # the appended tokens before the new last position
    pairs = [(list(seg.video), answer), (list(seg.question), [n - 1])]
    heads = hf_model.config.text_config.num_attention_heads
    blocked = additive_mask(n, block_mask(n, pairs), heads)
    expected = hf_logits_with_layer_masks(hf_model, {layer: blocked for layer in layers},
                                          additive_mask(n, None, heads), input_ids=y.input_ids,
                                          **hf_inputs_with_text(x, n_new))
    assert (got - vlm(y))[0, P - 1:].abs().max() > 1e-3  # the knockout changes the answer
    diff = (got - expected).abs()
    assert diff.max().item() <= 1e-4, diff.max().item()
    return {"knockout": diff.max().item(), "knockout_answer_rows": diff[0, P - 1:].max().item()}
