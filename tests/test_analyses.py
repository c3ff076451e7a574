"""The analyses on a tiny random backbone, metric definitions checked by hand."""

import json
import re
import shutil
import subprocess

import pytest
import torch
from reference import block_mask

import mapflow_tl.edges as E
from mapflow_tl import analyses as A
from mapflow_tl.circuits import load_circuit
from mapflow_tl.hooks import knockout, window
from mapflow_tl.models.backbone import run_from_embeds
from mapflow_tl.models import FamilyAdapter, Prepared, VideoLLM
from mapflow_tl.report import FIGURE_IDS, build_report
from mapflow_tl.runs import RunWriter, read_table


class WordTokenizer:
    def convert_ids_to_tokens(self, ids):
        return [f"w{i}" for i in ids]


class RandomVideoAdapter(FamilyAdapter):
    """Test-only adapter: the tiny random Llama backbone with random video embeddings."""

    model_types, name = ("test-random",), "test-random"

    def __init__(self, backbone, layout):
        self.backbone, self.layout = backbone, layout
        self.vision = self.processor = None
        self.tokenizer = WordTokenizer()

    def load(self):
        pass

    def prepare(self, sample):
        generator = torch.Generator().manual_seed(int(sample.id))
        embeds = torch.randn(1, self.layout.n_positions, self.backbone.cfg.d_model,
                             generator=generator)
        return Prepared(embeds=embeds, segments=self.layout,
                        input_ids=torch.zeros(1, self.layout.n_positions, dtype=torch.long),
                        answer_ids=torch.tensor([3, 4, 5]), answer=sample.answer)


@pytest.fixture(scope="module")
def vlm(tiny_backbone, layout):
    return VideoLLM(RandomVideoAdapter(tiny_backbone, layout), "tiny-random")


def samples(vlm, count=3):
    from mapflow_tl.models import VideoSample

    prepared = []
    for i in range(count):
        x = vlm.prepare(VideoSample(video="unused", question="q", options=("a", "b", "c"),
                                    id=str(i), task="t"))
        predicted = A.base_prediction(vlm, x)["base_token"]
        # option A's letter is the model's own answer; the truth is A for even samples, B for odd
        vocab = vlm.backbone.cfg.d_vocab
        x.answer_ids = torch.tensor([predicted, (predicted + 1) % vocab, (predicted + 2) % vocab])
        x.answer = 0 if i % 2 == 0 else 1
        prepared.append(x)
    return prepared


def test_flow_sweep_metrics_by_hand(vlm):
    x = samples(vlm, 1)[0]
    circuit = load_circuit("vql-to-ql")
    rows = A.flow_sweep(vlm, x, circuit, k=3, method="naive")
    assert len(rows) == 4 * vlm.n_layers
    row = next(r for r in rows if r["curve"] == "video → question" and r["layer"] == 2)
    clean = run_from_embeds(vlm.backbone, x.embeds)[0, -1].softmax(-1)
    hooks = knockout(E.video_to_question(x.segments), window(2, n_layers=4, k=3))
    knocked = run_from_embeds(vlm.backbone, x.embeds, fwd_hooks=hooks)[0, -1].softmax(-1)
    predicted, truth = int(clean.argmax()), int(x.answer_ids[x.answer])
    assert row["base_token"] == predicted and row["layers"] == [1, 2, 3]
    assert row["p_pred"] == pytest.approx(float(knocked[predicted]), abs=1e-6)
    expected = (float(knocked[predicted]) - float(clean[predicted])) / float(clean[predicted]) * 100
    assert row["change_pred"] == pytest.approx(expected, abs=1e-3)
    expected_true = (float(knocked[truth]) - float(clean[truth])) / float(clean[truth]) * 100
    assert row["change_true"] == pytest.approx(expected_true, abs=1e-3)
    assert row["token"] == int(knocked.argmax())
    assert row["correct"] == (int(knocked.argmax()) == truth)


def test_accuracy_by_layer_by_hand():
    rows = [{"curve": "c", "layer": 0, "correct": True}, {"curve": "c", "layer": 0,
                                                          "correct": False},
            {"curve": "c", "layer": 1, "correct": True}, {"curve": "c", "layer": 1,
                                                          "correct": None}]
    assert A.accuracy_by_layer(rows) == {("c", 0): 0.5, ("c", 1): 1.0}


def test_sample_modes(vlm):
    xs = samples(vlm, 2)
    bases = [A.base_prediction(vlm, x) for x in xs]
    assert [b["base_correct"] for b in bases] == [True, False]
    assert [A.select(b, "correct") for b in bases] == [True, False]
    assert [A.select(b, "wrong") for b in bases] == [False, True]
    assert all(A.select(b, "all") for b in bases)
    with pytest.raises(ValueError, match="sample mode must be one of"):
        A.select(bases[0], "best")


def test_probability_trace_rows(vlm):
    x = samples(vlm, 1)[0]
    rows = A.probability_trace(vlm, x)
    assert len(rows) == vlm.n_layers * 3
    last = [r for r in rows if r["layer"] == vlm.n_layers - 1]
    final = run_from_embeds(vlm.backbone, x.embeds)[0, -1].softmax(-1)[x.answer_ids]
    assert [r["probability"] for r in last] == pytest.approx(final.tolist(), abs=1e-6)
    assert sum(r["is_true"] for r in last) == 1


def test_video_lens_and_keywords(vlm):
    x = samples(vlm, 1)[0]
    rows = A.video_lens(vlm, x, k=3)
    n_video = sum(len(f) for f in x.segments.frames)
    assert len(rows) == vlm.n_layers * n_video
    counts = A.keyword_frequency(rows, spatial=[rows[0]["top_tokens"][0]], temporal=["w9999"])
    layer0 = next(c for c in counts if c["layer"] == 0)
    expected = sum(r["top_tokens"][0] == rows[0]["top_tokens"][0] for r in rows if r["layer"] == 0)
    assert layer0["spatial"] == expected and layer0["temporal"] == 0
    assert layer0["positions"] == n_video


def test_prune_edge_accounting_against_dense_count(vlm):
    x = samples(vlm, 1)[0]
    seg, n, n_layers = x.segments, x.n_positions, vlm.n_layers
    circuit = load_circuit("pathway-llava-next-7b")
    with pytest.raises(ValueError, match="pathway-llava-next-7b: layers L6–15 \\(1-based\\) do not fit a 4-layer model"):
        A.prune(vlm, x, circuit)
    # a 4-layer pathway circuit written as a user would
    from pathlib import Path
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tiny_pathway.py"
        path.write_text(
            "from mapflow_tl.circuits import paper_pathway\n"
            "NAME = 'tiny-pathway'\nDESCRIPTION = 'test'\n"
            "def pathway(seg, n_layers):\n"
            "    return paper_pathway(seg, n_layers, cross_frame=(1, 2), video_to_question=(1, 3),"
            " question_to_last=(3, 4))\n")
        rows = A.prune(vlm, x, load_circuit(path), seed=1)
    by_variant = {r["variant"]: r for r in rows}
    video, question, last = seg.video.positions, range(seg.video.stop, n - 1), [n - 1]
    frames = [f.positions for f in seg.frames]
    cross = [([p for f in frames[:t] for p in f], frames[t]) for t in range(1, len(frames))]
    always = [(video, last), (last, last)]
    # 1-based: keep cross-frame L1–2, video→question L1–3, question→last L3–4; video→video is
    # blocked after L3 (L4), question→question after L4 (never). In 0-based layers:
    blocked = {
        0: always + [(question, last)],
        1: always + [(question, last)],
        2: always + cross,
        3: always + cross + [(video, question), (video, video)],
    }
    kept = sum(n * (n + 1) // 2 - int(block_mask(n, blocked[l]).sum()) for l in range(n_layers))
    assert by_variant["pathway"]["kept_edges"] == kept
    assert by_variant["pathway"]["total_edges"] == n_layers * n * (n + 1) // 2
    assert by_variant["random"]["kept_edges"] == kept
    assert by_variant["full"]["retained"] == 1.0


def test_attention_to_frames(vlm):
    x = samples(vlm, 1)[0]
    rows = A.attention_to_frames(vlm, x, knockout_layers=[0, 1])
    n_video = sum(len(f) for f in x.segments.frames)
    assert len(rows) == 2 * vlm.n_layers * n_video
    # the question's queries come after the video, so cross-frame knockout in layer 0 cannot
    # change layer-0 attention of the question, but does change later layers
    base0 = [r["attention"] for r in rows if r["condition"] == "baseline" and r["layer"] == 0]
    cut0 = [r["attention"] for r in rows if r["condition"] != "baseline" and r["layer"] == 0]
    base1 = [r["attention"] for r in rows if r["condition"] == "baseline" and r["layer"] == 1]
    cut1 = [r["attention"] for r in rows if r["condition"] != "baseline" and r["layer"] == 1]
    assert base0 == pytest.approx(cut0, abs=1e-7)
    assert base1 != pytest.approx(cut1, abs=1e-6)


def test_report_contains_every_figure_and_rebuilds(vlm, tmp_path):
    xs = samples(vlm, 2)
    writer = RunWriter(tmp_path / "run", {"command": "test", "model": "tiny-random"})
    lens_rows = []
    for x in xs:
        writer.write("flow", A.flow_sweep(vlm, x, load_circuit("cross-frame"), k=3,
                                          method="naive"))
        writer.write("prob", A.probability_trace(vlm, x))
        rows = A.video_lens(vlm, x, k=2)
        writer.write("lens", rows)
        lens_rows += rows
        writer.write("attention", A.attention_to_frames(vlm, x))
        writer.write("prune", [{"sample": x.meta["id"], "task": "t", "variant": "full",
                                "correct": True, "kept_edges": 10, "total_edges": 10}])
    writer.write("keywords", A.keyword_frequency(lens_rows, ["w1"], ["w2"]))
    writer.finish()
    assert (tmp_path / "run" / "flow.csv").is_file()
    assert len(read_table(tmp_path / "run", "flow")) == 2 * vlm.n_layers
    path = build_report(tmp_path / "run")
    page = path.read_text()
    for figure_id in FIGURE_IDS:
        assert f'id="{figure_id}"' in page, figure_id
    assert "<script src=" not in page and "function" in page  # plotly.js embedded: offline
    again = build_report(tmp_path / "run", tmp_path / "again.html").read_text()
    strip = lambda text: re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                                "", text)
    assert strip(again) == strip(page)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("headless Chromium is not installed: rendering not checked")
    result = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=5000",
         "--enable-logging=stderr", "--v=0", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count('class="plot-container plotly"') >= 6
    assert "Uncaught" not in result.stderr


def test_report_figures_plot_one_point_per_layer(vlm):
    from mapflow_tl.report import _flow_figures, _keyword_figure, _probability_figure

    xs = samples(vlm, 2)
    rows = [r for x in xs for r in A.flow_sweep(vlm, x, load_circuit("vql-to-ql"), k=3,
                                                 method="naive")]
    layers = list(range(vlm.n_layers))
    for _, _, figure in _flow_figures(rows):
        for trace in figure.data:
            if trace.name:  # the curves (the baseline is a shape, not a trace)
                assert list(trace.x) == layers, trace.name
    change = _flow_figures(rows)[0][2]
    by_curve = {trace.name: list(trace.y) for trace in change.data}
    for layer in layers:
        expected = sum(r["change_pred"] for r in rows if r["curve"] == "video → last"
                       and r["layer"] == layer) / len(xs)
        assert by_curve["video → last"][layer] == pytest.approx(expected)
    prob = _probability_figure([r for x in xs for r in A.probability_trace(vlm, x)])[2]
    assert all(list(trace.x) == layers for trace in prob.data)
    lens = [r for x in xs for r in A.video_lens(vlm, x, k=2)]
    keywords = _keyword_figure(A.keyword_frequency(lens, ["w1"], ["w2"]))[2]
    assert all(list(trace.x) == layers for trace in keywords.data)
