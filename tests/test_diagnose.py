"""Failure diagnosis (issue #32): each column of ``diagnosis_evidence`` and ``diagnosis`` equals a
hand computation — the Hugging Face model with explicit 4D masks on frames edited by hand
(numpy indexing, the shuffle restated from its documented definition), and the verdict, task
mode, integration similarity and checkpoint shares written out with numpy / plain loops."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from mapflow_tl import analyses as A
from mapflow_tl.layers import integration_layers
from mapflow_tl.models import FamilyAdapter, Prepared, VideoLLM, VideoSample
from mapflow_tl.schema import TABLES
from mapflow_tl.testing import additive_mask, block_mask, hf_logits_with_layer_masks

pytestmark = pytest.mark.usefixtures("one_thread")

N_FRAMES, H, W = 3, 2, 3          # the layout fixture: 3 frames of 2×3 tokens, one per pixel


class Digits:
    """Every token decodes to its own id: grading by token id is what the tests use."""

    def decode(self, ids):
        return " ".join(f"t{int(i)}" for i in ids)

    def convert_ids_to_tokens(self, ids):
        return [f"t{int(i)}" for i in ids]


def embed(layout, d_model, question: str, frames: np.ndarray) -> torch.Tensor:
    """The test model's input embeddings: random text embeddings seeded by the question, and
    each frame token a fixed linear map of its pixel — so that editing the frames edits exactly
    the frame tokens."""
    generator = torch.Generator().manual_seed(int(question[1:]) + 500)
    embeds = torch.randn(1, layout.n_positions, d_model, generator=generator)
    projection = torch.randn(3, d_model, generator=torch.Generator().manual_seed(7)) * 2
    pixels = torch.tensor(frames, dtype=torch.float32) / 127.5 - 1
    for t, frame in enumerate(layout.frames):
        for h in range(H):
            for w in range(W):
                embeds[0, frame.start + h * W + w] = pixels[t, h, w] @ projection
    return embeds


class FramesAdapter(FamilyAdapter):
    """Test-only adapter: the tiny random Llama over :func:`embed`; option tokens per question
    (set by the test), the frames recorded as a real adapter records them."""

    model_types, name = ("test-frames",), "test-frames"

    def __init__(self, backbone, layout):
        self.backbone, self.layout = backbone, layout
        self.vision = self.processor = None
        self.tokenizer = Digits()
        self.options: dict[str, tuple[int, int, int]] = {}

    def load(self):
        pass

    def prepare(self, sample):
        frames = np.asarray(sample.video)
        return Prepared(embeds=embed(self.layout, self.backbone.cfg.d_model, sample.question,
                                     frames),
                        segments=self.layout,
                        input_ids=torch.zeros(1, self.layout.n_positions, dtype=torch.long),
                        answer_ids=torch.tensor(self.options.get(sample.question, (30, 31, 32))),
                        answer=sample.answer, frames=frames)


def hf_token(hf, embeds, blocked_by_layer=None) -> int:
    n, heads = embeds.shape[1], hf.config.num_attention_heads
    masks = {layer: additive_mask(n, blocked, heads)
             for layer, blocked in (blocked_by_layer or {}).items()}
    logits = hf_logits_with_layer_masks(hf, masks, additive_mask(n, None, heads),
                                        inputs_embeds=embeds)
    return int(logits[0, -1].argmax())


def hand_cross_frame(seg):
    frames = [list(range(f.start, f.stop)) for f in seg.frames]
    return [([p for f in frames[:t] for p in f], frames[t]) for t in range(1, len(frames))]


def hand_shuffle(n: int, seed: int) -> list[int]:
    """The documented shuffle: a seeded numpy permutation, drawn again while it is the
    identity."""
    rng = np.random.default_rng(seed)
    order = list(range(n))
    while order == list(range(n)):
        order = [int(i) for i in rng.permutation(n)]
    return order


@pytest.fixture(scope="module")
def diagnosed(tiny_backbone, tiny_hf_llama, layout):
    """Six wrong samples whose truth is chosen from the HF model's own answers: where the
    cross-frame knockout changes the answer, the truth is the knockout's answer (Case 1 by
    construction of the options, not of the code); elsewhere another token."""
    adapter = FramesAdapter(tiny_backbone, layout)
    vlm = VideoLLM(adapter, "tiny-frames")
    hf, d = tiny_hf_llama, tiny_backbone.cfg.d_model
    blocked = block_mask(layout.n_positions, hand_cross_frame(layout))
    cases = []
    for i in range(6):
        frames = np.random.default_rng(i).integers(0, 256, (N_FRAMES, H, W, 3), dtype=np.uint8)
        question = f"q{i}"
        clean = hf_token(hf, embed(layout, d, question, frames))
        knocked = hf_token(hf, embed(layout, d, question, frames), {0: blocked, 1: blocked})
        spare = [t for t in range(40, 61) if t not in (clean, knocked)]
        if knocked != clean:       # truth = the knockout's answer
            options, answer = (clean, knocked, spare[0]), 1
        else:
            options, answer = (clean, spare[0], spare[1]), 2
        adapter.options[question] = options
        shuffled = hf_token(hf, embed(layout, d, question, frames[hand_shuffle(N_FRAMES, 3)]))
        frozen = hf_token(hf, embed(layout, d, question, frames[[1] * N_FRAMES]))
        sample = VideoSample(video=frames, question=question, options=("a", "b", "c"),
                             answer=answer, id=str(i), task="t")
        cases.append((sample, dict(clean=clean, knocked=knocked, truth=options[answer],
                                   shuffled=shuffled, frozen=frozen)))
    assert any(c["knocked"] == c["truth"] for _, c in cases), "no Case-1 sample: pick seeds"
    assert any(c["knocked"] != c["truth"] for _, c in cases)
    return vlm, cases


def test_evidence_columns_equal_the_hf_model_on_hand_edited_frames(diagnosed):
    vlm, cases = diagnosed
    for sample, hand in cases:
        x = vlm.prepare(sample)
        row = A.diagnosis_evidence(vlm, sample, x, seed=3, frozen_frame=1,
                                   correctness="token-id")
        assert tuple(row) == TABLES["diagnosis_evidence"]
        assert row["base_token"] == hand["clean"]
        assert row["base_correct"] is False
        assert row["true_token"] == hand["truth"]
        assert row["crossframe_layers"] == [0, 1]            # first half of 4 layers
        assert row["crossframe_token"] == hand["knocked"]
        assert row["crossframe_correct"] == (hand["knocked"] == hand["truth"])
        assert row["shuffled_token"] == hand["shuffled"]
        assert row["frozen_token"] == hand["frozen"]
        assert (row["shuffle_seed"], row["frozen_frame"]) == (3, 1)
        for name, token in (("base", hand["clean"]), ("true", hand["truth"]),
                            ("crossframe", hand["knocked"]), ("shuffled", hand["shuffled"]),
                            ("frozen", hand["frozen"])):
            assert row[f"{name}_text"] == f"t{token}"


def test_evidence_needs_the_frames(diagnosed):
    vlm, cases = diagnosed
    sample = cases[0][0]
    x = vlm.prepare(sample)
    x.frames = None
    with pytest.raises(ValueError, match="carries no frames"):
        A.diagnosis_evidence(vlm, sample, x)


# ----------------------------------------------------------------------------- verdict by hand
def flow_rows(sample, task, changes: dict[tuple[str, int], float], circuit="vql-to-ql"):
    return [{"sample": sample, "task": task, "circuit": circuit, "curve": curve, "layer": layer,
             "change_pred": value, "change_true": value} for (curve, layer), value in changes.items()]


def test_verdicts_task_mode_and_integration_similarity_by_hand():
    n_layers = 8
    windows = integration_layers(n_layers)
    assert windows == {"video → question": [1, 2, 3, 4], "question → last": [3, 4, 5, 6]}
    cells = [(c, l) for c, ls in windows.items() for l in ls]
    rng = np.random.default_rng(0)
    profiles = {s: rng.normal(size=len(cells)) * 10 for s in ("c1", "c2", "c3", "w1", "w2")}
    profiles["w3"] = np.full(len(cells), 4.0)          # constant: r undefined
    # samples: task "t" — tokens 5, 5, 6 correct; wrong w1 (5), w2 (7), w3 (6), w4 (5, no flow)
    samples = [{"sample": s, "task": "t", "base_token": tok, "base_correct": ok}
               for s, tok, ok in [("c1", 5, True), ("c2", 5, True), ("c3", 6, True),
                                  ("w1", 5, False), ("w2", 7, False), ("w3", 6, False),
                                  ("w4", 9, False)]]
    flow = [r for s, p in profiles.items() for r in flow_rows(s, "t", dict(zip(cells, p)))]
    flow += flow_rows("c1", "t", {("video → last", 2): 99.0})          # not an integration curve
    flow += flow_rows("c2", "t", {("video → question", 2): 99.0}, circuit="other")
    evidence = [
        # Case 1 only: knockout correct, answer not static and not the task mode
        {"sample": "w2", "task": "t", "base_token": 7, "true_token": 6, "crossframe_token": 6,
         "crossframe_correct": True, "shuffled_token": 7, "frozen_token": 8},
        # Case 2 by the task mode alone (shuffle changes it)
        {"sample": "w1", "task": "t", "base_token": 5, "true_token": 6, "crossframe_token": 5,
         "crossframe_correct": False, "shuffled_token": 6, "frozen_token": 5},
        # Case 2 by static evidence, and Case 1: both
        {"sample": "w3", "task": "t", "base_token": 6, "true_token": 5, "crossframe_token": 5,
         "crossframe_correct": True, "shuffled_token": 6, "frozen_token": 6},
        # neither: the frozen video changes the answer, and 9 is not the task's mode
        {"sample": "w4", "task": "t", "base_token": 9, "true_token": 5, "crossframe_token": 9,
         "crossframe_correct": False, "shuffled_token": 9, "frozen_token": 3},
    ]
    for ev in evidence:
        ev.update({f"{n}_text": f"<{ev[n + '_token']}>"
                   for n in ("base", "true", "crossframe", "shuffled", "frozen")})
    rows = A.diagnose(samples, evidence, flow, n_layers)
    assert [r["sample"] for r in rows] == ["w2", "w1", "w3", "w4"]
    counts = Counter(r["base_token"] for r in samples)
    mode = min(counts, key=lambda t: (-counts[t], t))
    assert mode == 5
    reference = np.mean([profiles[s] for s in ("c1", "c2", "c3")], axis=0)
    expected_verdicts = {"w2": "Case 1", "w1": "Case 2", "w3": "both", "w4": "neither"}
    for row in rows:
        assert tuple(row) == TABLES["diagnosis"]
        assert row["verdict"] == expected_verdicts[row["sample"]]
        assert row["task_mode_token"] == 5 and row["task_mode_share"] == pytest.approx(3 / 7)
        assert row["reference_samples"] == 3
        assert row["task_mode_text"] == "<5>"        # spelled by the rows that decoded 5
        assert row["frozen_text"] == f"<{row['frozen_token']}>"
        ev = next(e for e in evidence if e["sample"] == row["sample"])
        assert row["same_shuffled"] == (ev["shuffled_token"] == ev["base_token"])
        assert row["same_frozen"] == (ev["frozen_token"] == ev["base_token"])
        assert row["same_task_mode"] == (ev["base_token"] == 5)
        assert row["case1"] == ev["crossframe_correct"]
        assert row["case2"] == ((row["same_shuffled"] and row["same_frozen"])
                                or row["same_task_mode"])
        if row["sample"] in ("w1", "w2"):
            r = np.corrcoef(profiles[row["sample"]], reference)[0, 1]
            assert row["integration_r"] == pytest.approx(r)
            assert row["integration_distance"] == pytest.approx(
                np.sqrt(np.mean((profiles[row["sample"]] - reference) ** 2)))
            assert row["integration_like_correct"] == (r >= 0.5)
        else:   # w3: a constant profile (r undefined); w4: no flow rows
            assert row["integration_r"] is None and row["integration_like_correct"] is None
    assert rows[2]["integration_distance"] == pytest.approx(
        np.sqrt(np.mean((profiles["w3"] - reference) ** 2)))


def test_a_task_without_correct_samples_has_no_reference():
    samples = [{"sample": "w", "task": "t", "base_token": 1, "base_correct": False}]
    evidence = [{"sample": "w", "task": "t", "base_token": 1, "true_token": 2,
                 "crossframe_token": 1, "crossframe_correct": False, "shuffled_token": 3,
                 "frozen_token": 1, "base_text": "B"}]
    [row] = A.diagnose(samples, evidence, flow_rows("w", "t", {("video → question", 1): -5.0}), 8)
    assert row["reference_samples"] == 0 and row["integration_r"] is None
    assert row["verdict"] == "Case 2"          # its own answer is the task's only one: the mode
    assert row["task_mode_text"] == "B" and row["true_text"] is None


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoint_shares_by_hand():
    names = ("video → true option", "video → non-option question",
             "non-option question → true option")
    changes = {  # task a: 2 samples × 3 layers per curve
        ("a", "s1"): {names[0]: [-10, -40, 5], names[1]: [-20, -10, 0], names[2]: [-5, -30, -2]},
        ("a", "s2"): {names[0]: [-30, -20, 5], names[1]: [-40, -10, 0], names[2]: [-5, -10, -2]},
        ("b", "s3"): {names[0]: [10, 20, 5], names[1]: [3, 1, 0], names[2]: [0, 0, 0]},
    }
    flow = [{"sample": s, "task": t, "curve": c, "layer": l, "change_true": float(v)}
            for (t, s), curves in changes.items() for c, values in curves.items()
            for l, v in enumerate(values)]
    flow.append({"sample": "s4", "task": "c", "curve": names[0], "layer": 0, "change_true": -1.0})
    rows = {r["task"]: r for r in A.checkpoint_shares(flow)}
    assert set(rows) == {"a", "b"}            # task c lacks two of the curves
    for task, samples in (("a", ("s1", "s2")), ("b", ("s3",))):
        loss = {c: max(0.0, -np.mean([changes[(task, s)][c] for s in samples], axis=0).min())
                for c in names}
        direct, indirect = loss[names[0]], min(loss[names[1]], loss[names[2]])
        row = rows[task]
        assert tuple(row) == TABLES["checkpoints"]
        assert row["samples"] == len(samples)
        assert row["direct_loss"] == pytest.approx(direct)
        assert row["indirect_loss"] == pytest.approx(indirect)
        if direct + indirect:
            assert row["direct_share"] == pytest.approx(direct / (direct + indirect))
            assert row["indirect_share"] == pytest.approx(indirect / (direct + indirect))
        else:
            assert row["direct_share"] is None and row["indirect_share"] is None
    assert rows["a"]["direct_loss"] == pytest.approx(30.0)   # mean of −40, −20 at layer 1
    assert rows["a"]["indirect_loss"] == pytest.approx(20.0)  # min(30, 20)
    assert rows["b"]["direct_share"] is None


# ----------------------------------------------------------------------------- command line
def read(out, table):
    path = out / f"{table}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_cli_diagnose_rows_resume_and_report(model_and_data, tmp_path, capsys):
    import mapflow_tl as mf
    from mapflow_tl.cli import main
    from mapflow_tl.report import build_report

    model_dir, data_dir = model_and_data
    out = tmp_path / "run"
    argv = ["diagnose", "--model", str(model_dir), "--data-root", str(data_dir), "--out",
            str(out), "--threads", "1", "--correctness", "token-id"]
    assert main(argv) == 0
    samples, evidence, diagnosis = read(out, "samples"), read(out, "diagnosis_evidence"), \
        read(out, "diagnosis")
    wrong = [r["sample"] for r in samples if r["base_correct"] is False]
    assert wrong and [r["sample"] for r in evidence] == wrong
    assert [r["sample"] for r in diagnosis] == wrong
    # the evidence rows are the analysis' own on each sample, loaded as a user loads them
    vlm = mf.load_videollm(str(model_dir))
    data = {s.id: s for s in mf.load_dataset("synthtv", str(data_dir))}
    for row in evidence[:3]:
        sample = data[row["sample"]]
        assert row == A.diagnosis_evidence(vlm, sample, vlm.prepare(sample),
                                           correctness="token-id")
    # the integration curves at the mid-late centres, for every sample
    flow = read(out, "flow")
    centres = sorted({l for ls in integration_layers(vlm.n_layers).values() for l in ls})
    assert sorted({r["layer"] for r in flow}) == centres
    assert {r["sample"] for r in flow} == {r["sample"] for r in samples}
    assert diagnosis == A.diagnose(samples, evidence, flow, vlm.n_layers)
    printed = capsys.readouterr().out
    for task in {r["task"] for r in diagnosis}:
        assert f"diagnose: {task}: " in printed
    # resume: a lost evidence row is computed again, and the verdicts derived again
    lines = (out / "diagnosis_evidence.jsonl").read_text().splitlines()
    (out / "diagnosis_evidence.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    assert main(argv + ["--resume"]) == 0
    assert read(out, "diagnosis_evidence") == evidence
    assert read(out, "diagnosis") == diagnosis
    # the report: counts per task and verdict, each verdict linked to its sample's frames
    text = build_report(out, plotly="cdn").read_text()
    assert 'id="diagnosis-counts"' in text
    assert "task&#x27;s most frequent" in text or "task's most frequent" in text
    for task in {r["task"] for r in diagnosis}:
        counts = Counter(r["verdict"] for r in diagnosis if r["task"] == task)
        cells = "".join(f"<td>{counts.get(v, 0)}</td>" for v in A.VERDICTS)
        assert cells in text
    for row in diagnosis:
        anchor = "frames-" + row["sample"].replace("/", "-")
        assert f'href="#{anchor}"' in text and f'id="{anchor}"' in text


def test_cli_flow_writes_the_checkpoint_table_and_the_report_draws_it(model_and_data, tmp_path):
    import re

    from mapflow_tl.cli import main
    from mapflow_tl.report import build_report

    model_dir, data_dir = model_and_data
    out = tmp_path / "flow"
    assert main(["flow", "--model", str(model_dir), "--data-root", str(data_dir), "--out",
                 str(out), "--threads", "1", "--circuit", "vq-to-true-opt", "--mode", "all",
                 "--limit", "2"]) == 0
    flow, table = read(out, "flow"), read(out, "checkpoints")
    assert [r["task"] for r in table] == list(dict.fromkeys(r["task"] for r in flow))
    names = ("video → true option", "video → non-option question",
             "non-option question → true option")
    for row in table:     # the losses again by hand from the flow rows
        loss = {}
        for curve in names:
            by_layer: dict[int, list[float]] = {}
            for r in flow:
                if r["task"] == row["task"] and r["curve"] == curve:
                    by_layer.setdefault(r["layer"], []).append(r["change_true"])
            loss[curve] = max(0.0, -min(np.mean(v) for v in by_layer.values()))
        assert row["direct_loss"] == pytest.approx(loss[names[0]])
        assert row["indirect_loss"] == pytest.approx(min(loss[names[1]], loss[names[2]]))
    page = build_report(out, plotly="cdn").read_text()
    assert 'id="checkpoints"' in page and 'id="checkpoint-table"' in page
    match = re.search(r'Plotly\.newPlot\(\s*"checkpoints",\s*', page)
    data, _ = json.JSONDecoder().raw_decode(page, match.end())
    direct = next(t for t in data if t["name"].startswith("direct"))
    assert direct["y"] == pytest.approx([r["direct_share"] for r in table])


def test_integration_layers_are_the_papers_7b_pathway_ranges_scaled():
    # L6–20 and L16–25 of 32 (1-based, the paper's 7B effective pathway) are 0-based 5–19, 15–24
    assert integration_layers(32) == {"video → question": list(range(5, 20)),
                                      "question → last": list(range(15, 25))}
    for n in (1, 2, 4, 8, 28, 40, 80):
        windows = integration_layers(n)
        for (first, stop), layers in zip(((5, 20), (15, 25)), windows.values()):
            lower, upper = int(np.floor(first * n / 32)), int(np.ceil(stop * n / 32))
            expected = list(range(min(lower, n - 1), max(min(upper, n), lower + 1)))
            assert layers == expected and layers and all(0 <= l < n for l in layers)


def test_cli_diagnose_refuses_a_frame_outside_the_clip_before_writing(model_and_data, tmp_path,
                                                                      capsys):
    from mapflow_tl.cli import main

    model_dir, data_dir = model_and_data
    out = tmp_path / "run"
    assert main(["diagnose", "--model", str(model_dir), "--data-root", str(data_dir), "--out",
                 str(out), "--threads", "1", "--frozen-frame", "8", "--limit", "1"]) == 2
    assert "--frozen-frame 8: the model sees 8 frames (0 … 7)" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
