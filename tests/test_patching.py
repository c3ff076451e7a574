"""Segment-aligned activation patching and attribution patching, checked against the Hugging Face
model itself: activations captured and written with plain PyTorch hooks on its decoder layers at
positions read off the layout by hand, and the attribution estimate against the derivative
``d metric / d ε`` of a patch scaled by a scalar ε, taken by ``torch.autograd`` through HF."""

from __future__ import annotations

import pytest
import torch

from mapflow_tl import patching as P
from mapflow_tl.errors import InputError
from mapflow_tl.models import FamilyAdapter, Prepared, VideoLLM, VideoSample
from mapflow_tl.schema import TABLES
from mapflow_tl.testing import decoder_layers

pytestmark = pytest.mark.usefixtures("one_thread")

OPTION_IDS = (30, 31, 32)


class RandomEmbedsAdapter(FamilyAdapter):
    """Test-only adapter: the tiny random Llama backbone, random input embeddings per sample."""

    model_types, name = ("test-random-embeds",), "test-random-embeds"

    def __init__(self, backbone, layout):
        self.backbone, self.layout = backbone, layout
        self.vision = self.processor = self.tokenizer = None

    def load(self):
        pass

    def prepare(self, sample):
        generator = torch.Generator().manual_seed(int(sample.id) + 7)
        embeds = torch.randn(1, self.layout.n_positions, self.backbone.cfg.d_model,
                             generator=generator)
        return Prepared(embeds=embeds, segments=self.layout,
                        input_ids=torch.zeros(1, self.layout.n_positions, dtype=torch.long),
                        answer_ids=torch.tensor(OPTION_IDS))


@pytest.fixture(scope="module")
def vlm(tiny_backbone, layout):
    return VideoLLM(RandomEmbedsAdapter(tiny_backbone, layout), "tiny-random-embeds")


@pytest.fixture(scope="module")
def runs(vlm):
    target, source = (vlm.prepare(VideoSample("unused", "q", ("a", "b", "c"), id=str(i)))
                      for i in (0, 1))
    return target, source


# ----------------------------------------------------------------------------- HF reference
def hf_hook(hf, layer, activation, edit):
    """A plain PyTorch hook on the HF model running ``edit(tensor)`` on ``activation`` of
    ``layer`` (tensors [1, pos, d] or, for z, [1, pos, heads, d_head]); returns the handle."""
    block = decoder_layers(hf)[layer]
    if activation == "resid_pre":
        def pre(module, args, kwargs):
            if args:
                return (edit(args[0]),) + args[1:], kwargs
            kwargs["hidden_states"] = edit(kwargs["hidden_states"])
            return args, kwargs
        return block.register_forward_pre_hook(pre, with_kwargs=True)
    if activation == "z":
        heads = hf.config.num_attention_heads

        def z(module, args):
            value = args[0]
            per_head = value.reshape(*value.shape[:2], heads, -1)
            return (edit(per_head).reshape(value.shape),)
        return block.self_attn.o_proj.register_forward_pre_hook(z)
    module = block.self_attn if activation == "attn_out" else block.mlp

    def post(module, args, output):
        if isinstance(output, tuple):
            return (edit(output[0]),) + output[1:]
        return edit(output)
    return module.register_forward_hook(post)


def hf_logits(hf, embeds, hooks=()):
    handles = [hf_hook(hf, *hook) for hook in hooks]
    try:
        return hf(inputs_embeds=embeds).logits
    finally:
        for handle in handles:
            handle.remove()


def hf_capture(hf, embeds, layer, activation):
    kept = {}

    def keep(value):
        kept["value"] = value.detach().clone()
        return value
    with torch.no_grad():
        hf_logits(hf, embeds, [(layer, activation, keep)])
    return kept["value"]


def hand_positions(span):
    return list(range(span.start, span.stop))


def diff(logits, tokens):
    return float(logits[0, -1, tokens[1]] - logits[0, -1, tokens[0]])


# ----------------------------------------------------------------------------- patching
@pytest.mark.parametrize("layer", [0, 2, 3])
def test_patching_everything_gives_the_source_logits_exactly(vlm, runs, layer):
    target, source = runs
    assert torch.equal(P.patched_logits(vlm, target, source, "all", layer), vlm(source))
    rows = P.patch_sweep(vlm, target, source, ["all"], [layer])
    assert rows[0]["patched_diff"] == rows[0]["source_diff"] and rows[0]["score"] == 1.0


@pytest.mark.parametrize("activation, head", [("resid_pre", None), ("mlp_out", None),
                                              ("z", 2)])
def test_patching_nothing_gives_the_target_logits(vlm, runs, activation, head):
    target, source = runs
    assert torch.equal(P.patched_logits(vlm, target, source, [], 1, activation=activation,
                                        head=head), vlm(target))
    # the target patched from itself: every row is the target's metric, the score undefined
    rows = P.patch_sweep(vlm, target, target, ["frame_1", "last"], [1, 3], activation=activation,
                         heads=None if head is None else [head], tokens=(30, 31))
    assert all(row["patched_diff"] == pytest.approx(row["target_diff"], abs=1e-5)
               and row["score"] is None for row in rows)


@pytest.mark.parametrize("activation", ["resid_pre", "attn_out", "mlp_out", "z"])
def test_segment_patch_equals_a_hand_patch_through_hf_hooks(vlm, runs, layout, tiny_hf_llama,
                                                            activation):
    """Frames swapped (target frame 0 ↔ source frame 2): target frame 0's positions take source
    frame 2's activations, cell by cell; text segments take the same positions."""
    target, source = runs
    hf, seg = tiny_hf_llama, layout
    frames = {0: 2, 1: 1, 2: 0}
    hand = {"frame_0": list(zip(hand_positions(seg.frames[0]), hand_positions(seg.frames[2]))),
            "question": [(p, p) for p in hand_positions(seg.question)],
            "last": [(seg.n_positions - 1, seg.n_positions - 1)]}
    heads = [0, 3] if activation == "z" else None
    rows = P.patch_sweep(vlm, target, source, list(hand), [1, 3], activation=activation,
                         heads=heads, frames=frames)
    assert len(rows) == len(hand) * 2 * (len(heads) if heads else 1)
    tokens = (rows[0]["target_token"], rows[0]["source_token"])
    with torch.no_grad():
        clean = hf_logits(hf, target.embeds)
    assert rows[0]["target_diff"] == pytest.approx(diff(clean, tokens), abs=1e-4)
    for row in rows:
        assert tuple(row) == TABLES["patch"]
        saved = hf_capture(hf, source.embeds, row["layer"], activation)
        pairs, head = hand[row["segment"]], row["head"]

        def write(value, pairs=pairs, head=head, saved=saved):
            value = value.clone()
            for t, s in pairs:
                if head is None:
                    value[0, t] = saved[0, s]
                else:
                    value[0, t, head] = saved[0, s, head]
            return value
        with torch.no_grad():
            reference = hf_logits(hf, target.embeds, [(row["layer"], activation, write)])
        assert row["patched_diff"] == pytest.approx(diff(reference, tokens), abs=1e-4), row
        span = row["source_diff"] - row["target_diff"]
        assert row["score"] == pytest.approx((diff(reference, tokens) - row["target_diff"]) / span,
                                             abs=1e-4)
    # a patch that moves nothing is not what this test checks
    assert any(abs(row["patched_diff"] - row["target_diff"]) > 1e-2 for row in rows)


def test_patching_by_position_patches_one_position_each(vlm, runs, layout):
    target, source = runs
    rows = P.patch_sweep(vlm, target, source, ["question"], [2], by_position=True)
    assert [row["position"] for row in rows] == hand_positions(layout.question)
    assert all(row["positions"] == 1 for row in rows)
    one = P.patched_logits(vlm, target, source, "question", 2)
    whole = P.patch_sweep(vlm, target, source, ["question"], [2])[0]
    assert whole["patched_diff"] == pytest.approx(
        diff(one, (whole["target_token"], whole["source_token"])), abs=1e-5)


# ----------------------------------------------------------------------------- attribution
@pytest.mark.parametrize("activation", ["resid_pre", "attn_out", "mlp_out", "z"])
def test_attribution_equals_the_analytic_directional_derivative(vlm, runs, layout, tiny_hf_llama,
                                                                activation):
    """The estimate of a patch is d metric(target + ε·(source − target) at the positions) / dε
    at ε = 0, which autograd computes through the HF model for a scalar ε."""
    target, source = runs
    hf, seg = tiny_hf_llama, layout
    heads = [1] if activation == "z" else None
    rows = P.attribution_patch(vlm, target, source, ["frame_2", "question", "last"], [0, 2],
                               activation=activation, heads=heads)
    tokens = (rows[0]["target_token"], rows[0]["source_token"])
    for row in rows:
        positions = hand_positions(seg[row["segment"]])
        saved = hf_capture(hf, source.embeds, row["layer"], activation)
        epsilon = torch.zeros((), requires_grad=True)

        def nudge(value, head=row["head"], saved=saved):
            delta = torch.zeros_like(value)
            if head is None:
                delta[0, positions] = saved[0, positions] - value.detach()[0, positions]
            else:
                delta[0, positions, head] = (saved[0, positions, head]
                                             - value.detach()[0, positions, head])
            return value + epsilon * delta
        with torch.enable_grad():
            logits = hf_logits(hf, target.embeds, [(row["layer"], activation, nudge)])
            metric = logits[0, -1, tokens[1]] - logits[0, -1, tokens[0]]
            (derivative,) = torch.autograd.grad(metric, epsilon)
        estimate = row["patched_diff"] - row["target_diff"]
        assert estimate == pytest.approx(float(derivative), rel=1e-3, abs=1e-4), row
        assert row["method"] == "attribution"
    assert any(abs(row["patched_diff"] - row["target_diff"]) > 1e-2 for row in rows)


def test_rank_agreement_is_spearmans_rho():
    def rows(effects, method):
        return [{"sample": "s", "source": "c", "activation": "resid_pre", "segment": f"seg{i}",
                 "position": None, "layer": 0, "head": None, "target_diff": 1.0,
                 "patched_diff": 1.0 + effect, "method": method}
                for i, effect in enumerate(effects)]
    real, estimated = [0.5, -1.0, 2.0, 0.1, 3.0], [0.2, 0.3, 1.0, -2.0, 5.0]
    # ranks by hand (no ties): Spearman's ρ = 1 − 6 Σd² / (n(n² − 1))
    ranks_real, ranks_est = [2, 0, 3, 1, 4], [1, 2, 3, 0, 4]
    d2 = sum((a - b) ** 2 for a, b in zip(ranks_real, ranks_est))
    assert P.rank_agreement(rows(real, "patch"), rows(estimated, "attribution")) == \
        pytest.approx(1 - 6 * d2 / (5 * 24))
    with pytest.raises(InputError, match="at least 3 patches"):
        P.rank_agreement(rows(real[:2], "patch"), rows(estimated[:2], "attribution"))


@pytest.mark.parametrize("call, message", [
    (lambda vlm, t, s: P.patch_sweep(vlm, t, s, ["last"], activation="resid_post"),
     "is not one of"),
    (lambda vlm, t, s: P.patch_sweep(vlm, t, s, ["last"], [4]), r"outside the model's 4 layers"),
    (lambda vlm, t, s: P.patch_sweep(vlm, t, s, ["last"], heads=[0]), "apply to activation 'z'"),
    (lambda vlm, t, s: P.patch_sweep(vlm, t, s, ["last"], activation="z", heads=[4]),
     "outside the model's 4 heads"),
    (lambda vlm, t, s: P.patched_logits(vlm, t, s, "last", 0, activation="z"), "per head"),
    (lambda vlm, t, s: P.attribution_patch(vlm, t, s, ["frame_9"]), "no segment named"),
])
def test_bad_patches_are_refused(vlm, runs, call, message):
    with pytest.raises(InputError, match=message):
        call(vlm, *runs)


# ----------------------------------------------------------------------------- command line
def test_patch_command_resumes_and_reports_the_mean_scores(model_and_data, tmp_path):
    """``mapflow-tl patch``: one patch and one attribution row per (frame | question | last) ×
    layer per sample; a resume adds nothing; the report's heatmap is the mean score by hand."""
    import json
    import re

    from mapflow_tl.cli import main
    from mapflow_tl.report import build_report
    from mapflow_tl.runs import read_table

    model_dir, data_dir = model_and_data
    out = tmp_path / "run"
    command = ["patch", "--model", str(model_dir), "--data-root", str(data_dir),
               "--task", "moving_direction", "--limit", "2", "--out", str(out)]
    assert main(command) == 0
    rows = read_table(out, "patch")
    n_layers = json.loads((out / "run.json").read_text())["n_layers"]
    per_sample = (8 + 2) * n_layers          # SynthTV's 8 frames, the question, the last position
    assert len(rows) == 2 * 2 * per_sample
    assert sorted({r["method"] for r in rows}) == ["attribution", "patch"]
    assert {r["source"] for r in rows} == {f"{s}~reverse" for s in {r["sample"] for r in rows}}
    assert main(command + ["--resume"]) == 0
    assert len(read_table(out, "patch")) == len(rows)

    page = build_report(out, plotly="cdn").read_text()
    match = re.search(r'Plotly\.newPlot\(\s*"patching",\s*', page)
    data, _ = json.JSONDecoder().raw_decode(page, match.end())
    real = data[0]
    for i, segment in enumerate(real["y"]):
        for j, layer in enumerate(real["x"]):
            scores = [r["score"] for r in rows if r["method"] == "patch"
                      and r["segment"] == segment and r["layer"] == layer
                      and r["score"] is not None]
            assert real["z"][i][j] == pytest.approx(sum(scores) / len(scores))
    assert real["y"][:2] == ["frame_0", "frame_1"] and real["y"][-2:] == ["question", "last"]

    # "which frames matter": each frame's thumbnail above its score in each layer, the first
    # sample's real patching (resid_pre) by hand, one cell a frame and layer
    frames = read_table(out, "frames")
    first = rows[0]["sample"]
    assert sorted(r["frame"] for r in frames if r["sample"] == first) == list(range(8))
    match = re.search(r'Plotly\.newPlot\("patching-frames",\s*', page)
    assert match, "no frames view for the patching run"
    decoder = json.JSONDecoder()
    rest = page[match.end():]
    cells, end = decoder.raw_decode(rest)
    layout, _ = decoder.raw_decode(rest[end:].lstrip(", "))
    assert len(layout["images"]) == 8 and all(i["source"].startswith("data:image/") for i in
                                               layout["images"])
    layers = sorted({r["layer"] for r in rows})
    assert len(cells) == 8 * len(layers)
    for i, layer in enumerate(layers):
        for t in range(8):
            (expected,) = [r["score"] for r in rows if r["sample"] == first
                           and r["method"] == "patch" and r["segment"] == f"frame_{t}"
                           and r["layer"] == layer]
            assert cells[i * 8 + t]["z"] == [[pytest.approx(expected)]]
    assert layout["coloraxis"]["cmin"] == -1 and layout["coloraxis"]["cmax"] == 1
    # one colour for one score in both patching figures (plotly.js' named "RdBu" runs the other
    # way round from plotly.py's): blue is towards the counterfactual in each
    match = re.search(r'Plotly\.newPlot\(\s*"patching",\s*', page)
    rest = page[match.end():]
    _, end = decoder.raw_decode(rest)
    heatmap_layout, _ = decoder.raw_decode(rest[end:].lstrip(", "))
    scale = [[float(a), b] for a, b in heatmap_layout["coloraxis"]["colorscale"]]
    assert scale == [[float(a), b] for a, b in layout["coloraxis"]["colorscale"]]
    assert scale[-1][1] == "rgb(5,48,97)"   # the highest score is dark blue


def test_attribution_by_position_adds_up_to_the_segment(vlm, runs):
    """The estimate is linear in the patch: the per-position rows of a segment sum to its row."""
    target, source = runs
    whole = P.attribution_patch(vlm, target, source, ["frame_1"], [1], activation="mlp_out")
    parts = P.attribution_patch(vlm, target, source, ["frame_1"], [1], activation="mlp_out",
                                by_position=True)
    assert len(parts) == 6 and all(row["positions"] == 1 for row in parts)
    assert sum(row["patched_diff"] - row["target_diff"] for row in parts) == pytest.approx(
        whole[0]["patched_diff"] - whole[0]["target_diff"], abs=1e-5)
