import pytest
import torch

import mapflow_tl.edges as E
from mapflow_tl.hooks import knockout
from mapflow_tl.lens import answer_probability_trace, logit_lens, project, residual_stream, top_tokens
from mapflow_tl.models.backbone import run_from_embeds


def embeds_for(model, n, seed=5):
    return torch.randn(1, n, model.cfg.d_model, generator=torch.Generator().manual_seed(seed))


def manual_lens(model, embeds, positions, norm, matrix, fwd_hooks=()):
    """Logit lens computed by hand from run_with_cache."""
    with torch.no_grad():
        with model.hooks(fwd_hooks=list(fwd_hooks)):
            _, cache = model.run_with_cache(embeds, start_at_layer=0)
        rows = []
        for layer in range(model.cfg.n_layers):
            h = cache[f"blocks.{layer}.hook_resid_post"][0, positions]
            if norm:
                h = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + model.cfg.eps)
                h = h * model.ln_final.w
            rows.append(h @ model.W_U + model.b_U if matrix == "unembed" else h @ model.W_E.T)
        return torch.stack(rows)


@pytest.mark.parametrize("norm, matrix", [(True, "unembed"), (False, "embed"), (False, "unembed")])
def test_logit_lens_equals_manual_computation(tiny_backbone, norm, matrix):
    embeds, positions = embeds_for(tiny_backbone, 12), [3, 7, 11]
    ours = logit_lens(tiny_backbone, embeds, positions, norm=norm, matrix=matrix)
    assert ours.shape == (4, 3, tiny_backbone.cfg.d_vocab)
    reference = manual_lens(tiny_backbone, embeds, positions, norm, matrix)
    assert (ours - reference).abs().max() <= 1e-4


def test_last_layer_lens_is_the_model_output(tiny_backbone):
    embeds = embeds_for(tiny_backbone, 9)
    lens = logit_lens(tiny_backbone, embeds, [-1])[-1, 0]
    assert (lens - run_from_embeds(tiny_backbone, embeds)[0, -1]).abs().max() <= 1e-5


def test_answer_probability_trace(tiny_backbone, layout):
    embeds = embeds_for(tiny_backbone, layout.n_positions)
    ids = [5, 9, 17]
    trace = answer_probability_trace(tiny_backbone, embeds, ids)
    reference = manual_lens(tiny_backbone, embeds, [layout.n_positions - 1], True,
                            "unembed")[:, 0].softmax(-1)[:, ids]
    assert trace.shape == (4, 3)
    assert (trace - reference).abs().max() <= 1e-6
    # the lens reads a knocked-out model too
    hooks = knockout(E.video_to_last(layout) | E.question_to_last(layout), [0, 1, 2, 3])
    knocked = answer_probability_trace(tiny_backbone, embeds, ids, fwd_hooks=hooks)
    reference = manual_lens(tiny_backbone, embeds, [layout.n_positions - 1], True, "unembed",
                            hooks)[:, 0].softmax(-1)[:, ids]
    assert (knocked - reference).abs().max() <= 1e-6
    assert (knocked - trace).abs().max() > 1e-4


def test_residual_stream_with_embeddings_layer(tiny_backbone):
    embeds = embeds_for(tiny_backbone, 6)
    stream = residual_stream(tiny_backbone, embeds, [0, 5], include_embeddings=True)
    assert stream.shape == (5, 2, tiny_backbone.cfg.d_model)
    assert torch.equal(stream[0], embeds[0, [0, 5]])


def test_top_tokens_and_projection(tiny_backbone):
    logits = project(tiny_backbone, torch.randn(2, tiny_backbone.cfg.d_model))
    probabilities, ids = top_tokens(logits, k=3)
    assert torch.equal(ids, logits.topk(3, dim=-1).indices)
    assert torch.allclose(probabilities.sum(-1), logits.softmax(-1).topk(3, -1).values.sum(-1))


def test_lens_bad_input(tiny_backbone):
    embeds = embeds_for(tiny_backbone, 6)
    with pytest.raises(ValueError, match="lens positions must lie in \\[0, 6\\)"):
        logit_lens(tiny_backbone, embeds, [6])
    with pytest.raises(ValueError, match="lens matrix must be one of"):
        logit_lens(tiny_backbone, embeds, [1], matrix="identity")
    with pytest.raises(ValueError, match="token ids must lie in"):
        answer_probability_trace(tiny_backbone, embeds, [10_000])
    with pytest.raises(ValueError, match="one sample"):
        residual_stream(tiny_backbone, torch.cat([embeds, embeds]), [0])
    with pytest.raises(ValueError, match="k must lie in"):
        top_tokens(torch.zeros(3, 5), k=6)
