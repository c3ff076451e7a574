"""The TransformerLens backend seam (mapflow_tl/models/backends.py): the installed TransformerLens
picks the backend (3.9: "hooked", 4.x: "bridge"), a backend it cannot provide is refused in one
line naming the fix, run.json records the one used, and on whichever backend runs a knockout
changes what it must and nothing else — never a silent no-op. The numbers themselves (logits and
knockouts against the HF model with explicit 4D masks, fast sweep = naive) are the rest of the
suite, which runs on either backend; benchmarks/backend_parity.py compares the two backends."""

from __future__ import annotations

import json

import pytest
import torch

import mapflow_tl as mf
from mapflow_tl.errors import InputError
from mapflow_tl.models import load_videollm
from mapflow_tl.models.backends import default_backend, installed_transformer_lens

BACKEND = default_backend()
OTHER = "bridge" if BACKEND == "hooked" else "hooked"


@pytest.fixture(scope="module")
def synthtv():
    vlm = load_videollm("synthtv-video-ft")
    return vlm, vlm.prepare(mf.load_dataset("synthtv", tasks=["moving_direction"], limit=1)[0])


def test_the_installed_transformer_lens_picks_the_backend(synthtv):
    vlm, _ = synthtv
    major = int(installed_transformer_lens().split(".")[0])
    assert BACKEND == {3: "hooked", 4: "bridge"}[major]
    assert vlm.backend == BACKEND == vlm.adapter.backend
    assert type(vlm.backbone).__name__ == {"hooked": "HookedTransformer",
                                           "bridge": "TransformerBridge"}[BACKEND]
    # the HookedTransformer surface experiment code relies on, on either backend
    assert vlm.cfg.n_layers == 8 and vlm.cfg.attn_scale == vlm.cfg.d_head ** 0.5
    for name in ("hook_embed", "blocks.3.hook_resid_pre", "blocks.3.attn.hook_attn_scores",
                 "blocks.3.attn.hook_pattern", "blocks.3.hook_resid_post"):
        assert name in vlm.hook_dict


def test_a_backend_the_installed_version_cannot_provide_is_one_line_naming_the_fix():
    with pytest.raises(InputError, match=rf"backend '{OTHER}' needs TransformerLens "
                                         r"\d\.x, but .* is installed; pip install "
                                         r"'transformer-lens>=\d"):
        load_videollm("synthtv-video-ft", backend=OTHER)
    with pytest.raises(InputError, match="backend must be one of"):
        load_videollm("synthtv-video-ft", backend="tl5")
    assert load_videollm("synthtv-video-ft", backend="auto").backend == BACKEND


def test_a_knockout_changes_what_it_must_and_nothing_else(synthtv):
    """The knocked edges' attention is exactly 0 in the knocked layers and nowhere else; the
    answer moves; an edge set that is empty under causal attention changes nothing."""
    vlm, x = synthtv
    seg = x.segments
    edges = mf.Edges(src=seg.video, dst=seg.last)
    layers = [2, 3]
    with torch.no_grad():
        clean, clean_cache = vlm.run_with_cache(x, names_filter=lambda n: "hook_pattern" in n)
        knocked, cache = vlm.run_with_cache(x, mf.knockout(edges, layers),
                                            names_filter=lambda n: "hook_pattern" in n)
    last, video = seg.last.positions[0], list(seg.video.positions)
    for layer in range(vlm.n_layers):
        pattern = cache["pattern", layer][0][:, last, video]
        if layer in layers:
            assert float(pattern.abs().max()) == 0.0
        else:  # a softmax without the cut is never exactly 0 (trained: as small as 1e-4)
            assert float(pattern.abs().max()) > 0.0
    for layer in range(min(layers)):
        assert torch.equal(cache["pattern", layer], clean_cache["pattern", layer])
    assert float((knocked[0, -1] - clean[0, -1]).abs().max()) > 1e-2
    empty = mf.question_to_video(seg)  # queries before their keys: nothing to cut
    with torch.no_grad():
        assert torch.equal(vlm.run_with_hooks(x, mf.knockout(empty, layers)), clean)


def test_the_fast_sweep_equals_the_naive_one_on_this_backend(synthtv):
    from mapflow_tl.engine import layer_sweep, sweep

    vlm, x = synthtv
    seg = x.segments
    configs = layer_sweep({"cross-frame": mf.cross_frame(seg),
                           "video → last": mf.Edges(src=seg.video, dst=seg.last)},
                          vlm.n_layers, k=3)
    fast = sweep(vlm.backbone, x.embeds, configs)
    naive = sweep(vlm.backbone, x.embeds, configs, method="naive")
    assert (naive - vlm(x)[0, -1]).abs().max() > 1e-2  # the knockouts act
    assert float((fast.softmax(-1) - naive.softmax(-1)).abs().max()) <= 1e-5


def test_run_json_records_the_backend(model_and_data, tmp_path):
    from mapflow_tl.cli import main

    model_dir, data_dir = model_and_data
    out = tmp_path / "prob"
    assert main(["prob", "--model", str(model_dir), "--dataset", "tvbench", "--data-root",
                 str(data_dir), "--limit", "1", "--out", str(out)]) == 0
    assert json.loads((out / "run.json").read_text())["backend"] == BACKEND
    assert main(["prob", "--model", str(model_dir), "--dataset", "tvbench", "--data-root",
                 str(data_dir), "--limit", "1", "--out", str(tmp_path / "other"),
                 "--backend", OTHER]) == 2


@pytest.mark.skipif(BACKEND != "bridge", reason="the bridge backend's own refusal")
def test_the_bridge_refuses_what_it_cannot_host_exactly():
    """Rotary tables for adjacent pairs in neither layout TransformerLens can rotate
    (interleaved or half-duplicated) are refused, never rotated wrongly; one device only."""
    from types import SimpleNamespace

    from torch import nn

    from mapflow_tl.models.bridge import _match_rotary_layout, bridge_from_hf

    class ScrambledRotary(nn.Module):
        def forward(self, x, position_ids):
            table = torch.arange(8.0).expand(*position_ids.shape, 8) * position_ids[..., None]
            return table.cos(), table.sin()

    text_model = nn.Module()
    text_model.rotary_emb, text_model.weight = ScrambledRotary(), nn.Parameter(torch.zeros(1))
    bridge = SimpleNamespace(cfg=SimpleNamespace(rotary_adjacent_pairs=True), blocks=[])
    with pytest.raises(InputError, match="neither interleaved nor half-duplicated.*"
                                         "backend='hooked'"):
        _match_rotary_layout(bridge, text_model)
    with pytest.raises(InputError, match="one device"):
        bridge_from_hf(None, None, None, {}, n_devices=2)


@pytest.mark.skipif(BACKEND != "bridge", reason="the bridge backend's own load-time check")
def test_the_bridge_refuses_a_backbone_whose_scores_a_knockout_cannot_edit(tiny_hf_llama):
    """Where the bridge's attention would not pass hook_attn_scores edits to the softmax, every
    knockout would be a no-op: the load-time check refuses it instead."""
    from mapflow_tl.models.bridge import check_scores_are_editable
    from mapflow_tl.testing import backbone_of

    bridge = backbone_of(tiny_hf_llama.model, tiny_hf_llama.lm_head, tiny_hf_llama.config)
    check_scores_are_editable(bridge)  # the real attention passes
    # an attention that ignores the scores hook's edits (as an HF kernel would)
    bridge.add_perma_hook("blocks.1.attn.hook_pattern",
                          lambda pattern, hook: torch.full_like(pattern, 1 / pattern.shape[-1]))
    try:
        with pytest.raises(InputError, match=r"layers \[1\].*silently change nothing"):
            check_scores_are_editable(bridge)
    finally:
        bridge.reset_hooks(including_permanent=True)


@pytest.mark.skipif(BACKEND != "bridge", reason="the bridge's own fallback")
def test_on_the_bridge_a_sweep_with_its_own_hooks_runs_naive_and_says_so_once(synthtv, caplog,
                                                                             monkeypatch):
    """The bridge has no TransformerLens key/value cache for a hooked suffix forward: a fast
    sweep that carries hooks runs one full forward per configuration, with the hooks, and says
    so once."""
    from mapflow_tl import engine
    from mapflow_tl.engine import layer_sweep, sweep

    vlm, x = synthtv
    monkeypatch.setattr(engine, "_WARNED", set())
    configs = layer_sweep({"video → last": mf.Edges(src=x.segments.video, dst=x.segments.last)},
                          vlm.n_layers, k=3)
    hooks = [("blocks.1.hook_mlp_out", lambda activation, hook: activation * 0.5)]
    with caplog.at_level("WARNING", logger="mapflow_tl.engine"):
        fast = sweep(vlm.backbone, x.embeds, configs, fwd_hooks=hooks)
        sweep(vlm.backbone, x.embeds, configs, fwd_hooks=hooks)
    warnings = [r for r in caplog.records if "naive method on the bridge" in r.message]
    assert len(warnings) == 1 and "blocks.1.hook_mlp_out" in warnings[0].message
    naive = sweep(vlm.backbone, x.embeds, configs, method="naive", fwd_hooks=hooks)
    assert torch.equal(fast, naive)
    unhooked = sweep(vlm.backbone, x.embeds, configs, method="naive")
    assert (naive - unhooked).abs().max() > 1e-3  # the hook did act
