"""The logit lens against the Hugging Face model's own hidden states (``output_hidden_states``:
entry 0 = the embeddings, entry i = the output of block i−1, the last one already normed)."""

import pytest
import torch

import mapflow_tl.edges as E
from mapflow_tl.hooks import knockout
from mapflow_tl.lens import (answer_probability_trace, answer_probability_trace_from_embeds,
                             iter_logit_lens, logit_lens, logit_lens_from_embeds, project,
                             residual_stream, residual_stream_from_embeds, top_tokens)
from mapflow_tl.models.backbone import run_from_embeds
from mapflow_tl.testing import additive_mask, block_mask, hf_logits_with_layer_masks


class Sample:
    """The part of a Prepared the lens reads."""

    def __init__(self, embeds, answer_ids=(5, 9, 17)):
        self.embeds, self.answer_ids = embeds, torch.tensor(answer_ids)


class Model:
    """The part of a VideoLLM the lens reads."""

    def __init__(self, backbone):
        self.backbone = backbone


def embeds_for(model, n, seed=5):
    return torch.randn(1, n, model.cfg.d_model, generator=torch.Generator().manual_seed(seed))


def hf_states(hf, embeds):
    with torch.no_grad():
        out = hf(inputs_embeds=embeds, output_hidden_states=True)
    return out.hidden_states, out.logits


def hand_lens(hf, embeds, positions, *, read, norm, final_output, matrix):
    hidden, _ = hf_states(hf, embeds)
    n_layers = hf.config.num_hidden_layers
    weight = hf.lm_head.weight if matrix == "unembed" else hf.model.embed_tokens.weight
    rows = []
    for layer in range(n_layers):
        if final_output and layer == n_layers - 1:
            h = hidden[n_layers][0, positions]           # HF's last entry is normed
        else:
            h = hidden[layer + 1 if read == "output" else layer][0, positions]
            if norm:
                h = hf.model.norm(h)
        rows.append(h @ weight.T)
    return torch.stack(rows).detach()


@pytest.mark.parametrize("read, norm, final_output, matrix", [
    ("output", False, True, "unembed"),     # the official answer-probability trace
    ("input", False, True, "embed"),        # the official video-token lens
    ("output", True, True, "unembed"),      # TransformerLens' usual lens
    ("input", False, False, "unembed"),
])
def test_logit_lens_equals_hf_hidden_states(tiny_backbone, tiny_hf_llama, read, norm,
                                            final_output, matrix):
    embeds, positions = embeds_for(tiny_backbone, 12), [3, 7, 11]
    x, vlm = Sample(embeds), Model(tiny_backbone)
    ours = logit_lens(vlm, x, positions, read=read, norm=norm, final_output=final_output,
                      matrix=matrix)
    assert ours.shape == (4, 3, tiny_backbone.cfg.d_vocab)
    reference = hand_lens(tiny_hf_llama, embeds, positions, read=read, norm=norm,
                          final_output=final_output, matrix=matrix)
    assert (ours - reference).abs().max() <= 1e-4
    low = logit_lens_from_embeds(tiny_backbone, embeds, positions, read=read, norm=norm,
                                 final_output=final_output, matrix=matrix)
    assert torch.equal(low, ours)
    by_layer = torch.stack([logits for _, logits in iter_logit_lens(
        vlm, x, positions, read=read, norm=norm, final_output=final_output, matrix=matrix)])
    assert torch.equal(by_layer, ours)


def test_defaults_are_the_official_trace_and_the_last_layer_is_the_model(tiny_backbone,
                                                                        tiny_hf_llama):
    embeds = embeds_for(tiny_backbone, 9)
    x, vlm = Sample(embeds), Model(tiny_backbone)
    lens = logit_lens(vlm, x, -1)
    assert (lens[-1, 0] - run_from_embeds(tiny_backbone, embeds)[0, -1]).abs().max() <= 1e-5
    reference = hand_lens(tiny_hf_llama, embeds, [8], read="output", norm=False,
                          final_output=True, matrix="unembed")
    assert (lens - reference).abs().max() <= 1e-4
    # an intermediate layer without the final norm differs from one with it
    normed = logit_lens(vlm, x, -1, norm=True)
    assert (normed[0] - lens[0]).abs().max() > 1e-3


def test_answer_probability_trace(tiny_backbone, tiny_hf_llama, layout):
    n = layout.n_positions
    embeds = embeds_for(tiny_backbone, n)
    x, vlm = Sample(embeds), Model(tiny_backbone)
    trace = answer_probability_trace(vlm, x)
    logits = hand_lens(tiny_hf_llama, embeds, [n - 1], read="output", norm=False,
                       final_output=True, matrix="unembed")[:, 0]
    probabilities = logits.double().softmax(-1)
    assert trace.probabilities.shape == (4, 3)
    assert (trace.probabilities - probabilities[:, [5, 9, 17]]).abs().max() <= 1e-5
    assert torch.equal(trace.top_ids, probabilities.topk(10).indices)
    assert (trace.top_probabilities - probabilities.topk(10).values).abs().max() <= 1e-5
    low = answer_probability_trace_from_embeds(tiny_backbone, embeds, [5, 9, 17])
    assert torch.equal(low.probabilities, trace.probabilities)
    # the trace reads a knocked-out model: the HF model with the same explicit masks
    hooks = knockout(E.video_to_last(layout) | E.question_to_last(layout), [0, 1, 2, 3])
    knocked = answer_probability_trace(vlm, x, [5, 9, 17], fwd_hooks=hooks)
    video, last = range(layout.video.start, layout.video.stop), [n - 1]
    text = range(layout.question_with_options.start, layout.question_with_options.stop)
    blocked = additive_mask(n, block_mask(n, [(video, last), (text, last)]),
                            tiny_hf_llama.config.num_attention_heads)
    final = hf_logits_with_layer_masks(tiny_hf_llama, dict.fromkeys(range(4), blocked),
                                       additive_mask(n, None, 4), inputs_embeds=embeds)
    assert (knocked.probabilities[-1] - final[0, -1].softmax(-1)[[5, 9, 17]]).abs().max() \
        <= 1e-6
    assert (knocked.probabilities - trace.probabilities).abs().max() > 1e-4


def test_residual_stream_reads_block_inputs_or_outputs(tiny_backbone, tiny_hf_llama):
    embeds = embeds_for(tiny_backbone, 6)
    x, vlm = Sample(embeds), Model(tiny_backbone)
    hidden, _ = hf_states(tiny_hf_llama, embeds)
    inputs = residual_stream(vlm, x, [0, 5], read="input")
    outputs = residual_stream(vlm, x, [0, 5])
    assert inputs.shape == outputs.shape == (4, 2, tiny_backbone.cfg.d_model)
    assert torch.equal(inputs[0], embeds[0, [0, 5]])
    for layer in range(3):
        assert (outputs[layer] - hidden[layer + 1][0, [0, 5]]).abs().max() <= 1e-4
        assert (inputs[layer + 1] - hidden[layer + 1][0, [0, 5]]).abs().max() <= 1e-4
    assert torch.equal(residual_stream_from_embeds(tiny_backbone, embeds, [0, 5]), outputs)


def test_top_tokens_and_projection(tiny_backbone):
    logits = project(tiny_backbone, torch.randn(2, tiny_backbone.cfg.d_model))
    probabilities, ids = top_tokens(logits, k=3)
    assert torch.equal(ids, logits.topk(3, dim=-1).indices)
    assert torch.allclose(probabilities, logits.softmax(-1).topk(3, -1).values)


def test_lens_bad_input(tiny_backbone):
    embeds = embeds_for(tiny_backbone, 6)
    x, vlm = Sample(embeds), Model(tiny_backbone)
    with pytest.raises(ValueError, match="lens positions must lie in \\[0, 6\\)"):
        logit_lens(vlm, x, [6])
    with pytest.raises(ValueError, match="lens matrix must be one of"):
        logit_lens(vlm, x, [1], matrix="identity")
    with pytest.raises(ValueError, match="lens read must be one of"):
        logit_lens(vlm, x, [1], read="middle")
    with pytest.raises(ValueError, match="token ids must lie in"):
        answer_probability_trace(vlm, x, [10_000])
    with pytest.raises(ValueError, match="one sample"):
        residual_stream(vlm, Sample(torch.cat([embeds, embeds])), [0])
    with pytest.raises(ValueError, match="k must lie in"):
        top_tokens(torch.zeros(3, 5), k=6)


def test_lens_positions_may_be_a_segment(tiny_backbone, layout):
    embeds = embeds_for(tiny_backbone, layout.n_positions)
    x, vlm = Sample(embeds), Model(tiny_backbone)
    by_span = logit_lens(vlm, x, layout.last)
    assert torch.equal(by_span, logit_lens(vlm, x, [layout.last.start]))
    frames = logit_lens(vlm, x, layout.frames[1])
    assert torch.equal(frames, logit_lens(vlm, x, list(layout.frames[1].positions)))
    with pytest.raises(ValueError, match=r"a segment \(e.g. x.segments.last\)"):
        logit_lens(vlm, x, 3.5)


def test_project_adds_the_unembedding_bias_and_top_tokens_bounds(tiny_backbone):
    """The "unembed" projection is W_U plus its bias b_U (zero in Llama, so it is set here);
    top_tokens takes 1 … d_vocab tokens; the trace refuses a token id equal to d_vocab."""
    from mapflow_tl.lens import project, top_tokens

    residual = torch.randn(3, tiny_backbone.cfg.d_model, generator=torch.Generator().manual_seed(2))
    bias = torch.linspace(-1.0, 1.0, tiny_backbone.cfg.d_vocab)
    saved = tiny_backbone.unembed.b_U.detach().clone()
    try:
        with torch.no_grad():
            tiny_backbone.unembed.b_U.copy_(bias)
        got = project(tiny_backbone, residual)
    finally:
        with torch.no_grad():
            tiny_backbone.unembed.b_U.copy_(saved)
    expected = residual @ tiny_backbone.unembed.W_U.detach() + bias
    assert torch.allclose(got, expected, atol=1e-5)
    vocab = tiny_backbone.cfg.d_vocab
    probabilities, ids = top_tokens(got, k=vocab)
    assert ids.shape == (3, vocab) and torch.allclose(probabilities.sum(-1), torch.ones(3))
    for k in (0, vocab + 1):
        with pytest.raises(ValueError, match=f"k must lie in \\[1, {vocab}\\]"):
            top_tokens(got, k=k)
    embeds = embeds_for(tiny_backbone, 6)
    answer_probability_trace_from_embeds(tiny_backbone, embeds, [vocab - 1])
    with pytest.raises(ValueError, match=f"token ids must lie in \\[0, {vocab}\\)"):
        answer_probability_trace_from_embeds(tiny_backbone, embeds, [vocab])
