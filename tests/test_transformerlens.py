"""TransformerLens conventions on a whole VideoLLM (video injected as embeddings):
``vlm.run_with_cache`` / ``run_with_hooks`` / ``hooks()``, name filters, and the
``ActivationCache`` methods, checked against the Hugging Face model's own forward (eager attention,
``output_hidden_states`` / ``output_attentions``) on the shipped SynthTV checkpoint; and the
backbone refusing token ids that hold the video placeholders."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from transformer_lens import ActivationCache

from mapflow_tl.edges import Edges, video_to_last, video_to_question
from mapflow_tl.hooks import check_hooks, knockout
from mapflow_tl.models import BUILTIN_MODELS, VideoSample, load_videollm
from mapflow_tl.models.backends import default_backend

build = pytest.importorskip("mapflow_tl.synthtv.build")

NAME = "synthtv-video-ft"
# Both sides in float64, so what is left of the differences is HF's: it computes the rotary angles
# in float32 even in a float64 model (from identical embeddings, the layer-0 attention patterns
# already differ by 8.5e-7). Measured: logits 2.3e-5 (of |logit| <= 20), residuals 6.8e-5 (of 127),
# patterns 5.0e-6: within 1e-5 of the reference's scale. Our own paths agree to summation order.
DTYPE = torch.float64
RELATIVE = 1e-5
# On TransformerLens 4's bridge the backbone *is* HF's decoder, whose RMSNorm and attention softmax
# compute in float32 whatever the model's dtype: two of its own paths (the logits and a sum of
# cached components) then agree to float32 rounding of the values (measured 6.3e-7 on a logit of
# 12.2), not to float64's.
OWN = 1e-9 if default_backend() == "hooked" else 1e-6


def close(ours: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether ``ours`` is within ``RELATIVE`` of the reference's scale (at least 1)."""
    assert ours.shape == reference.shape
    ours, reference = ours.detach(), reference.detach()
    scale = max(1.0, float(reference.abs().max()))
    return float((ours - reference).abs().max()) <= RELATIVE * scale


@pytest.fixture(scope="module")
def vlm():
    return load_videollm(NAME, dtype=DTYPE)


@pytest.fixture(scope="module")
def frames():
    size = build.ModelConfig().image_size
    return np.random.default_rng(3).integers(0, 256, (8, size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def x(vlm, frames):
    return vlm.prepare(VideoSample(frames, "what does the red circle do ?",
                                   ["it grows", "it shrinks"], answer=1))


@pytest.fixture(scope="module")
def hf(vlm, frames, x):
    """The HF model's own forward on the same prompt and pixels: logits, every layer's input
    (``hidden_states[l]`` for l < n_layers), attention patterns, and the last layer's output
    before the final norm (caught by a forward hook: HF's last hidden state is normed)."""
    from transformers import LlavaNextVideoForConditionalGeneration

    model = LlavaNextVideoForConditionalGeneration.from_pretrained(
        BUILTIN_MODELS[NAME], attn_implementation="eager", dtype=DTYPE).eval()
    caught = {}

    def last_layer(module, args, output):
        caught["resid_final"] = output[0] if isinstance(output, tuple) else output

    handle = model.model.language_model.layers[-1].register_forward_hook(last_layer)
    with torch.no_grad():
        out = model(input_ids=x.input_ids, pixel_values_videos=build.normalize_frames(frames)[None].to(DTYPE),
                    output_hidden_states=True, output_attentions=True)
    handle.remove()
    return {"model": model, "logits": out.logits, "hidden": out.hidden_states,
            "attentions": out.attentions, **caught}


def _no_hooks_left(vlm) -> bool:
    return all(not point.fwd_hooks and not point.bwd_hooks
               for point in vlm.backbone.hook_dict.values())


def _blocked(x) -> Edges:
    return video_to_question(x.segments) | video_to_last(x.segments)


# ------------------------------------------------------------------ run_with_cache against HF
def test_run_with_cache_equals_run_with_hooks_and_the_hf_model(vlm, x, hf):
    logits, cache = vlm.run_with_cache(x)
    assert isinstance(cache, ActivationCache)
    n, pos = vlm.n_layers, x.n_positions
    assert logits.shape == (1, pos, vlm.backbone.cfg.d_vocab)
    assert torch.equal(logits, vlm.run_with_hooks(x))
    assert close(logits, hf["logits"])
    # the cache is of the real sequence: the injected embeddings, then HF's activations
    assert torch.equal(cache["embed"], x.embeds)
    assert close(cache["embed"], hf["hidden"][0])
    for layer in range(n):
        assert close(cache["resid_pre", layer], hf["hidden"][layer])
        assert cache["pattern", layer].shape == (1, vlm.backbone.cfg.n_heads, pos, pos)
        assert close(cache["pattern", layer], hf["attentions"][layer])
    assert close(cache["resid_post", n - 1], hf["resid_final"])


def test_accumulated_and_decomposed_residual_match_hf(vlm, x, hf):
    _, cache = vlm.run_with_cache(x)
    n, pos, d_model = vlm.n_layers, x.n_positions, vlm.backbone.cfg.d_model
    accumulated, labels = cache.accumulated_resid(return_labels=True)
    assert accumulated.shape == (n + 1, 1, pos, d_model) and len(labels) == n + 1
    for layer in range(n):
        assert close(accumulated[layer], hf["hidden"][layer])
    assert close(accumulated[n], hf["resid_final"])
    assert torch.equal(accumulated[n], cache["resid_post", n - 1])

    parts, labels = cache.decompose_resid(return_labels=True)
    assert parts.shape == (1 + 2 * n, 1, pos, d_model)
    assert labels[:3] == ["embed", "0_attn_out", "0_mlp_out"]
    # embed + every attention and MLP output = the final residual stream (HF's, pre-norm)
    assert close(parts.sum(0), hf["resid_final"])
    assert (parts.sum(0) - cache["resid_post", n - 1]).abs().max() <= OWN


def test_logit_attrs_and_a_hand_written_logit_lens_are_exact_on_unprocessed_weights(vlm, x, hf):
    """The final norm's weight is not folded into W_U; the cache applies it where
    TransformerLens assumes it folded, so a TransformerLens user's recipes give the true numbers:
    per-component logit attributions sum to the HF model's logit, and the hand-written logit lens
    ``accumulated_resid(apply_ln=True) @ W_U`` ends at the model's own logits."""
    logits, cache = vlm.run_with_cache(x)
    token = x.answer_token
    stack = cache.decompose_resid()[:, :, -1]
    attrs = cache.logit_attrs(stack, tokens=token, pos_slice=-1)
    assert attrs.shape == (1 + 2 * vlm.n_layers, 1)
    assert close(attrs.sum(0), hf["logits"][0, -1, token][None])
    assert (attrs.sum(0) - logits[0, -1, token]).abs().max() <= OWN
    assert float(vlm.backbone.ln_final.w.detach().sub(1).abs().max()) > 0.05  # not vacuous
    lens = cache.accumulated_resid(apply_ln=True, pos_slice=-1) @ vlm.backbone.W_U
    assert lens.shape == (vlm.n_layers + 1, 1, vlm.cfg.d_vocab)
    assert close(lens[-1], hf["logits"][:, -1])


# ------------------------------------------------------------------------------------ gradients
def _with_leaf_embeds(x):
    """``x`` with its embeddings as a fresh leaf that records gradients."""
    return dataclasses.replace(x, embeds=x.embeds.detach().clone().requires_grad_(True))


def _hf_gradients(hf, x, layer):
    """Autograd through the HF language model on the same input embeddings: d logit(answer at
    the last position) / d (input of decoder layer ``layer``) and / d (input embeddings)."""
    model = hf["model"]
    embeds = x.embeds.detach().clone().requires_grad_(True)
    caught = {}

    def keep_input(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        hidden.retain_grad()
        caught["hidden"] = hidden

    handle = model.model.language_model.layers[layer].register_forward_pre_hook(
        keep_input, with_kwargs=True)
    try:
        hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state
    finally:
        handle.remove()
    model.lm_head(hidden)[0, -1, x.answer_token].backward()
    model.zero_grad(set_to_none=True)
    return caught["hidden"].grad, embeds.grad


def test_a_backward_hook_receives_the_hf_models_gradient(vlm, x, hf):
    """Gradients flow by default (TransformerLens' habit): a backward hook on
    ``blocks.2.hook_resid_pre`` receives d logit / d resid_pre equal to HF autograd on the same
    input embeddings, and the gradient reaches the prepared embeddings, video positions too."""
    assert not x.embeds.requires_grad  # prepared without a graph into the vision tower
    ours_x, received = _with_leaf_embeds(x), {}

    def save(gradient, hook):
        received["blocks.2.hook_resid_pre"] = gradient.detach().clone()

    logits = vlm.run_with_hooks(ours_x, bwd_hooks=[("blocks.2.hook_resid_pre", save)],
                                reset_hooks_end=False)
    assert logits.requires_grad
    logits[0, -1, x.answer_token].backward()
    vlm.reset_hooks()
    vlm.backbone.zero_grad(set_to_none=True)
    assert _no_hooks_left(vlm)
    hidden_grad, embeds_grad = _hf_gradients(hf, x, layer=2)
    assert received["blocks.2.hook_resid_pre"].shape == (1, x.n_positions, vlm.backbone.cfg.d_model)
    assert close(received["blocks.2.hook_resid_pre"], hidden_grad)
    assert close(ours_x.embeds.grad, embeds_grad)
    video = x.segments.video
    assert float(ours_x.embeds.grad[0, video.start:video.stop].abs().max()) > 1e-6  # not vacuous
    # gradient × input per frame, the one-liner of docs/concepts.md
    saliency = (ours_x.embeds.grad * ours_x.embeds).sum(-1)[0].detach()
    per_frame = torch.stack([saliency[f.start:f.stop].sum() for f in x.segments.frames])
    reference = (embeds_grad * x.embeds).sum(-1)[0]
    assert close(per_frame, torch.stack([reference[f.start:f.stop].sum()
                                         for f in x.segments.frames]))


def test_backward_hooks_in_the_hooks_block_and_after_run_with_hooks_ends(vlm, x):
    name = "blocks.0.hook_resid_post"
    received = []

    def keep(gradient, hook):
        received.append(gradient)

    with vlm.hooks(bwd_hooks=[(name, keep)]):
        vlm(_with_leaf_embeds(x))[0, -1].sum().backward()
    assert len(received) == 1 and _no_hooks_left(vlm)
    # run_with_hooks has removed its hooks when it returns, yet the backward of its output
    # reaches them (bound to the graph at forward time); a later forward does not
    logits = vlm.run_with_hooks(x, bwd_hooks=[(name, keep)])
    assert _no_hooks_left(vlm)
    logits[0, -1].sum().backward()
    assert len(received) == 2
    torch.testing.assert_close(received[1], received[0], rtol=0, atol=1e-12)
    vlm(x)[0, -1].sum().backward()
    assert len(received) == 2
    # reset_hooks_end=False leaves them on the backbone until reset_hooks()
    logits = vlm.run_with_hooks(x, bwd_hooks=[(name, keep)], reset_hooks_end=False)
    assert not _no_hooks_left(vlm)
    logits[0, -1].sum().backward()
    assert len(received) == 3
    vlm.reset_hooks()
    assert _no_hooks_left(vlm)
    vlm.backbone.zero_grad(set_to_none=True)


def test_gradients_follow_the_callers_mode_and_analyses_run_without(vlm, x):
    from mapflow_tl import analyses

    # the cache holds detached activations, as TransformerLens' does; its output keeps the graph
    assert vlm(x).requires_grad and vlm.run_with_cache(x)[0].requires_grad
    with torch.no_grad():
        assert not vlm(x).requires_grad
    with torch.inference_mode():
        assert not vlm.run_with_hooks(x).requires_grad
    seen = []
    with vlm.hooks([("blocks.1.hook_resid_pre", lambda a, hook: seen.append(a.requires_grad))]):
        analyses.base_prediction(vlm, x)
        analyses.crossframe_knockout(vlm, x)
    assert seen and not any(seen)
    assert torch.is_grad_enabled()  # and the caller's mode is left as it was


# ----------------------------------------------------------- the HookedTransformer surface
def test_cfg_hook_dict_and_str_tokens(vlm, x):
    assert vlm.cfg is vlm.backbone.cfg and vlm.cfg.n_layers == vlm.n_layers
    assert vlm.hook_dict == vlm.backbone.hook_dict and "blocks.2.hook_resid_pre" in vlm.hook_dict
    strings = vlm.to_str_tokens(x)
    assert x.str_tokens == strings and len(strings) == x.n_positions
    frame = x.segments.frames[3]
    assert strings[frame.position(1, 0)] == "<f3 r1c0>"
    assert strings[frame.start] == "<f3 r0c0>" and strings[frame.stop - 1] == "<f3 r1c1>"
    video = set(x.segments.video.positions)
    text = [p for p in range(x.n_positions) if p not in video]
    ids = x.input_ids[0].tolist()
    assert [strings[p] for p in text] == [vlm.tokenizer.decode([ids[p]]) for p in text]
    # SynthTV's tokenizer is word-level: one word per position
    assert [strings[p].strip() for p in x.segments.question.positions] == \
        "what does the red circle do ?".split()


def test_return_types_as_in_transformerlens(vlm, x):
    logits = vlm(x)
    loss = vlm(x, return_type="loss")
    expected = -logits[0, -1].log_softmax(-1)[x.answer_token]
    assert loss.shape == () and abs(float(loss.detach() - expected.detach())) <= OWN
    both_logits, both_loss = vlm(x, return_type="both")
    assert torch.equal(both_logits, logits) and torch.equal(both_loss, loss)
    assert vlm(x, return_type=None) is None
    loss.backward()  # a loss to train or attribute with
    vlm.backbone.zero_grad(set_to_none=True)
    with pytest.raises(ValueError, match="return_type must be one of"):
        vlm(x, return_type="probs")
    unanswered = dataclasses.replace(x, answer=None)
    with pytest.raises(ValueError, match="answer=<option index>"):
        vlm(unanswered, return_type="loss")


def test_the_backbone_tokenizes_text_as_a_hooked_transformer_does(vlm):
    """``vlm.backbone.to_tokens`` / ``to_string`` / ``to_str_tokens`` work on text, with the
    checkpoint's tokenizer (a copy: TransformerLens fills special tokens in place, and the
    prompts must keep the tokenizer as it is)."""
    text = "what does the red circle do ?"
    tokens = vlm.backbone.to_tokens(text, prepend_bos=False)
    assert tokens[0].tolist() == vlm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert vlm.backbone.to_string(tokens[0]) == text
    assert vlm.backbone.to_str_tokens(text, prepend_bos=False) == text.split()
    assert vlm.backbone.tokenizer is not vlm.tokenizer
    logits = vlm.backbone(text, prepend_bos=False)
    assert logits.shape == (1, len(text.split()), vlm.cfg.d_vocab)


# ------------------------------------------------------------------------------- names filter
def test_names_filter_as_string_list_and_function(vlm, x):
    _, everything = vlm.run_with_cache(x)
    name = "blocks.2.attn.hook_pattern"
    _, one = vlm.run_with_cache(x, names_filter=name)
    assert list(one.keys()) == [name]
    assert torch.equal(one[name], everything[name])
    names = ["blocks.0.hook_resid_pre", "blocks.3.hook_mlp_out"]
    _, some = vlm.run_with_cache(x, names_filter=names)
    assert sorted(some.keys()) == sorted(names)
    _, patterns = vlm.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern"))
    assert sorted(patterns.keys()) == sorted(f"blocks.{l}.attn.hook_pattern"
                                             for l in range(vlm.n_layers))
    assert _no_hooks_left(vlm)


def test_names_filter_that_caches_nothing_is_refused(vlm, x):
    with pytest.raises(ValueError, match=r"blocks.99.attn.hook_pattern.*layer 99 is outside"):
        vlm.run_with_cache(x, names_filter="blocks.99.attn.hook_pattern")
    with pytest.raises(ValueError, match="'hook_typo'"):
        vlm.run_with_cache(x, names_filter=["blocks.0.hook_resid_pre", "hook_typo"])
    with pytest.raises(ValueError, match="accepts none of this model's"):
        vlm.run_with_cache(x, names_filter=lambda n: n.endswith("hook_nothing"))
    assert _no_hooks_left(vlm)


# -------------------------------------------------------------------- hooks with name filters
def test_fwd_hooks_accept_a_name_filter_function(vlm, x):
    """A filter function attaches the hook to every accepted hook point (TransformerLens); it
    used to crash inside check_hooks ("'function' object has no attribute 'split'")."""
    seen = []
    vlm.run_with_hooks(x, [(lambda n: n.endswith("hook_attn_out"),
                            lambda act, hook: seen.append(hook.name))])
    assert seen == [f"blocks.{l}.hook_attn_out" for l in range(vlm.n_layers)]
    check_hooks(vlm.backbone, [(lambda n: "hook_pattern" in n, lambda act, hook: None)])
    with pytest.raises(ValueError, match="accepts none"):
        check_hooks(vlm.backbone, [(lambda n: False, lambda act, hook: None)])
    with pytest.raises(ValueError, match="hook name must be"):
        check_hooks(vlm.backbone, [(3, lambda act, hook: None)])

    # zeroing every attention output through a filter = zeroing each by name
    def zero(act, hook):
        return torch.zeros_like(act)

    by_filter = vlm.run_with_hooks(x, [(lambda n: n.endswith("hook_attn_out"), zero)])
    by_name = vlm.run_with_hooks(x, [(f"blocks.{l}.hook_attn_out", zero)
                                     for l in range(vlm.n_layers)])
    assert torch.equal(by_filter, by_name)
    assert (by_filter - vlm(x)).abs().max() > 1e-2
    assert _no_hooks_left(vlm)


def test_run_with_cache_shows_the_hooks_effect(vlm, x):
    """``fwd_hooks`` run before caching: a knockout's blocked edges have zero attention in the
    cached patterns, and the logits are run_with_hooks' with the same hooks."""
    edges, layers = _blocked(x), [1, 2]
    hooks = knockout(edges, layers)
    logits, cache = vlm.run_with_cache(x, hooks, names_filter=lambda n: "hook_pattern" in n)
    assert torch.equal(logits, vlm.run_with_hooks(x, hooks))
    assert (logits[0, -1] - vlm(x)[0, -1]).abs().max() > 1e-3
    blocked = edges.dense(x.n_positions)
    for layer in range(vlm.n_layers):
        pattern = cache["pattern", layer][0]
        if layer in layers:
            assert pattern[:, blocked].abs().max() == 0
        else:
            assert pattern[:, blocked].abs().max() > 0
    assert _no_hooks_left(vlm)


# -------------------------------------------------------------------- hooks() context manager
def test_hooks_context_manager_applies_inside_and_cleans_up(vlm, x):
    clean = vlm(x)
    hooks = knockout(_blocked(x), [0, 1, 2])
    with vlm.hooks(fwd_hooks=hooks) as model:
        assert model is vlm
        inside = vlm(x)
        logits, cache = vlm.run_with_cache(x, names_filter="blocks.1.attn.hook_pattern")
    assert torch.equal(inside, vlm.run_with_hooks(x, hooks))
    assert torch.equal(logits, inside)
    assert cache["pattern", 1][0][:, _blocked(x).dense(x.n_positions)].abs().max() == 0
    assert not torch.equal(inside, clean)
    assert _no_hooks_left(vlm)
    assert torch.equal(vlm(x), clean)


def test_hooks_context_manager_cleans_up_on_exception(vlm, x):
    clean = vlm(x)
    with pytest.raises(RuntimeError, match="inside the block"):
        with vlm.hooks(fwd_hooks=[(lambda n: n.endswith("hook_mlp_out"),
                                   lambda act, hook: act * 0)]):
            assert not torch.equal(vlm(x), clean)
            raise RuntimeError("inside the block")
    assert _no_hooks_left(vlm)
    assert torch.equal(vlm(x), clean)
    # a hook that raises during the forward is removed as well
    with pytest.raises(RuntimeError, match="hook failed"):
        vlm.run_with_hooks(x, [("blocks.0.hook_resid_pre",
                                lambda act, hook: (_ for _ in ()).throw(RuntimeError("hook failed")))])
    assert _no_hooks_left(vlm)
    # a bad hook is refused before any hook is added
    with pytest.raises(ValueError, match="layer 99 is outside"):
        with vlm.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda act, hook: act),
                                  ("blocks.99.hook_resid_pre", lambda act, hook: act)]):
            pass
    assert _no_hooks_left(vlm)


def test_several_samples_are_refused_with_the_loop_to_write(vlm, x):
    sample = VideoSample(np.zeros((8, 32, 32, 3), np.uint8), "what moves ?", ["up", "down"])
    with pytest.raises(ValueError, match=r"prepare takes one sample.*\[vlm.prepare\(s\) for s"):
        vlm.prepare([sample, sample])
    for call in (vlm, vlm.run_with_hooks, vlm.run_with_cache):
        with pytest.raises(ValueError, match=r"got a list of 2.*\[vlm\(x\) for x in xs\]"):
            call([x, x])


def test_methods_refuse_what_is_not_a_prepared_input(vlm, x):
    with pytest.raises(ValueError, match=r"take a Prepared \(x = vlm.prepare\(sample\)\)"):
        vlm.run_with_cache(x.embeds)


# --------------------------------------------------------------- backbone and placeholder ids
def test_backbone_refuses_token_ids_with_video_placeholders(vlm, x, hf):
    """``vlm.backbone`` on ``x.input_ids`` would embed the video placeholders as text: wrong
    logits without complaint. It is an error naming the fix; the embeddings path and text-only
    token ids are unaffected."""
    video_id = vlm.adapter.media_token_id
    assert int((x.input_ids == video_id).sum()) == x.segments.video.stop - x.segments.video.start
    for call in (lambda: vlm.backbone(x.input_ids),
                 lambda: vlm.backbone.run_with_cache(x.input_ids),
                 lambda: vlm.backbone.run_with_hooks(x.input_ids, fwd_hooks=[])):
        with pytest.raises(ValueError, match=rf"placeholder id\(s\) \[{video_id}\].*"
                                             r"vlm.run_with_cache\(x\)"):
            call()
    assert _no_hooks_left(vlm)
    # the embeddings path (what VideoLLM runs) is not checked
    direct = vlm.backbone(x.embeds, start_at_layer=0)
    assert close(direct, hf["logits"])
    # text-only ids still run, and equal HF's text forward
    text = x.input_ids[:, x.segments.video.stop:]
    with torch.no_grad():
        reference = hf["model"](input_ids=text).logits
    assert close(vlm.backbone(text), reference)


def test_a_second_videollm_on_the_backbone_keeps_one_guard(vlm, x):
    from mapflow_tl.models import VideoLLM

    before = len(vlm.backbone.embed._forward_pre_hooks)
    again = VideoLLM(vlm.adapter, NAME)
    assert len(vlm.backbone.embed._forward_pre_hooks) == before
    with pytest.raises(ValueError, match="placeholder"):
        again.backbone(x.input_ids)


# ---------------------------------------------------------------------- quiet loading bars
@pytest.mark.parametrize("enabled", [True, False])
def test_loading_prints_no_progress_bar_and_restores_the_setting(capfd, enabled):
    from transformers.utils import logging as hf_logging

    previous = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        capfd.readouterr()
        load_videollm(NAME)
        captured = capfd.readouterr()
        assert "Loading weights" not in captured.err + captured.out
        assert hf_logging.is_progress_bar_enabled() is enabled
    finally:
        (hf_logging.enable_progress_bar if previous else hf_logging.disable_progress_bar)()


def test_hooks_writing_in_place_leave_the_prepared_embeddings_alone():
    """A TransformerLens user patches the residual stream in place; with token input that tensor
    is fresh on every run, so the prepared embeddings must be too (else every later run on the
    same sample is silently wrong)."""
    import mapflow_tl as mf

    vlm = mf.load_videollm("synthtv-video-ft")
    x = vlm.prepare(mf.load_dataset("synthtv", tasks=["action_antonym"], limit=1)[0])
    before = x.embeds.clone()

    def zero(residual, hook):
        residual[:, 3:9] = 0
        return residual

    for name in ("hook_embed", "blocks.0.hook_resid_pre"):
        patched = vlm.run_with_hooks(x, [(name, zero)])
        assert torch.equal(x.embeds, before), name
    clean = vlm.run_with_hooks(x)
    assert not torch.allclose(patched, clean)   # the patch itself took effect
