"""Pathway discovery (issue 32): the search recovers a pathway known by construction, stops
cleanly on its budget, splits samples by id, and the circuit it writes loads and reproduces its
reported held-out accuracy through the ordinary prune command."""

from __future__ import annotations

import json

import pytest
import torch

from mapflow_tl import discovery
from mapflow_tl.errors import InputError
from mapflow_tl.segments import SegmentMap

pytestmark = pytest.mark.usefixtures("one_thread")

N_LAYERS, D = 3, 16
ANSWERS = (0, 1)     # token ids of the two answers; a tie of logits is read as token 0


def _known_pathway_model():
    """A 3-layer Llama whose answer can only travel video → last in layer 1, by construction:
    no MLP writes anything (down projections zero), layers 0 and 2 write nothing from attention
    (output projections zero), and in layer 1 every query attends uniformly (query projection
    zero) and copies residual dimension 0 (where the video tokens carry the answer's sign) into
    dimension 1, which the unembedding reads as +answer 0 / −answer 1. Only the last position's
    layer-1 reading of the video changes the answer; blocking it leaves a tie (answer 0)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mapflow_tl.models.backbone import hooked_from_hf

    config = LlamaConfig(vocab_size=4, hidden_size=D, intermediate_size=8,
                         num_hidden_layers=N_LAYERS, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=128,
                         attn_implementation="eager")
    hf = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.mlp.down_proj.weight.zero_()
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.o_proj.weight.zero_()
        attention = hf.model.layers[1].self_attn
        attention.v_proj.weight.zero_()
        attention.v_proj.weight[0, 0] = 1.0          # head 0, dim 0 ← residual dim 0
        attention.o_proj.weight[1, 0] = 1.0          # residual dim 1 ← head 0, dim 0
        hf.lm_head.weight.zero_()
        hf.lm_head.weight[ANSWERS[0], 1] = 10.0
        hf.lm_head.weight[ANSWERS[1], 1] = -10.0
    return hooked_from_hf(hf.model, hf.lm_head, hf.config)


def _layout() -> SegmentMap:
    return SegmentMap.sequential(system=2, frames=[(2, 2)] * 3, after_video=1, question=3,
                                 options=[2, 2], true_option=0, between_options=1,
                                 before_last=1)


def _samples(n: int = 8) -> list[discovery.SearchSample]:
    seg = _layout()
    video = list(range(seg.video.start, seg.video.stop))
    samples = []
    for index in range(n):
        answer = ANSWERS[index % 2]
        generator = torch.Generator().manual_seed(index)
        embeds = torch.zeros(1, seg.n_positions, D)
        embeds[0, :, 3:] = torch.randn(seg.n_positions, D - 3, generator=generator)
        embeds[0, :, 2] = 1.0
        embeds[0, video, 0] = 1.0 if answer == ANSWERS[0] else -1.0
        samples.append(discovery.SearchSample(
            f"s{index}", embeds, seg, True, lambda token, answer=answer: token == answer))
    return samples


@pytest.fixture(scope="module")
def known():
    return _known_pathway_model()


def test_the_construction_is_what_the_test_claims(known):
    """Independent of the search: the full model answers every sample, and blocking video →
    last in layer 1 alone (a hand-made hook) turns the answer-1 samples into answer 0."""
    from mapflow_tl.models.backbone import run_from_embeds

    samples = _samples()
    for sample in samples:
        blocked = torch.zeros(sample.n_positions, sample.n_positions, dtype=torch.bool)
        blocked[-1, sample.segments.video.start:sample.segments.video.stop] = True

        def hook(scores, hook, blocked=blocked):
            return scores.masked_fill(blocked, float("-inf"))

        clean = int(run_from_embeds(known, sample.embeds, grad=False)[0, -1].argmax())
        cut = int(run_from_embeds(known, sample.embeds, grad=False, fwd_hooks=[
            ("blocks.1.attn.hook_attn_scores", hook)])[0, -1].argmax())
        assert sample.correct(clean)
        assert cut == ANSWERS[0]


def test_the_search_recovers_the_known_pathway(known):
    result = discovery.greedy_search(known, _samples(), epsilon=0.02)
    assert result.complete
    opened = result.open_layers()
    assert opened == {name: ([1] if name == "video → last" else []) for name in opened}
    assert result.steps[-1]["accuracy"] == 1.0
    # counted by hand, one evaluation = one pathway on one of the 8 samples: pass 1 closes six
    # types at one try each (6 × 8), fails to close video → last (8), shrinks it twice with two
    # candidates a round (2 × 16); pass 2 tries to close it once more (8) and ends
    assert result.evaluations == 6 * 8 + 8 + 2 * 16 + 8


def test_the_curves_start_recovers_the_pathway_with_fewer_evaluations(known):
    """Starting from the flow curves: only video → last at layer 1 lowers p(answer) (to a tie
    of four zero logits, p = 1/4: a relative change of about −3/4), so the start keeps it alone;
    the search then checks that start (8 evaluations), fails to close video → last (8) and
    cannot shrink a one-layer range: 16 evaluations against scratch's 96. The curves cost one
    window (k = 1 at 3 layers) per type and layer per sample: 7 × 3 × 8 = 168, stated apart."""
    curves = discovery.curve_ranges(known, _samples())
    assert curves["ranges"] == {name: ((1, 1) if name == "video → last" else None)
                                for name in curves["ranges"]}
    assert curves["evaluations"] == 7 * 3 * 8 and curves["window"] == 1
    [drop] = [r["relative_change"] for r in curves["rows"]
              if r["edge_type"] == "video → last" and r["center"] == 1]
    assert -0.75 <= drop < -0.74
    started = discovery.search_together(known, [_samples()], starts=[curves["ranges"]])[0]
    scratch = discovery.greedy_search(known, _samples())
    assert started.start == "curves" and scratch.start == "scratch"
    assert started.open_layers() == scratch.open_layers()
    assert started.evaluations == 8 + 8 and scratch.evaluations == 6 * 8 + 8 + 2 * 16 + 8
    assert [s["change"] for s in started.steps][1] == "start: the flow curves' ranges"


def test_a_refused_curves_start_falls_back_to_scratch(known):
    """A start that closes video → last is evaluated (8), refused, and the search goes on from
    the full model to the same pathway at scratch's cost plus those 8."""
    closed = {name: None for name in discovery.edge_types(_layout())}
    result = discovery.search_together(known, [_samples()], starts=[closed])[0]
    assert result.start == "curves refused"
    assert result.open_layers() == discovery.greedy_search(known, _samples()).open_layers()
    assert result.evaluations == 8 + 6 * 8 + 8 + 2 * 16 + 8


class _Killed(Exception):
    pass


@pytest.mark.parametrize("curves", [False, True], ids=["scratch", "curves"])
def test_a_search_killed_after_any_step_resumes_to_the_same_pathway(known, curves):
    """The search is killed (an exception in its step recorder) right after its k-th accepted
    step is recorded, for every k; resumed from the recorded rows (checked by
    steps_from_path), it ends with the uninterrupted search's steps, pathway and cost."""
    start = [discovery.curve_ranges(known, _samples())["ranges"]] if curves else None
    full = discovery.search_together(known, [_samples()], starts=start)[0]
    names = list(discovery.edge_types(_layout()))
    assert len(full.steps) >= (2 if curves else 9)   # curves: the start, then no step
    for k in range(1, len(full.steps)):
        rows = []   # step 0 (the start) is recorded too

        def record(_, step, k=k, rows=rows):
            rows.append(discovery.path_row(step))
            if step["step"] == k:
                raise _Killed

        with pytest.raises(_Killed):
            discovery.search_together(known, [_samples()], starts=start, on_step=record)
        steps = discovery.steps_from_path(rows, names, N_LAYERS)
        assert len(steps) == k + 1
        resumed = discovery.search_together(known, [_samples()], starts=start,
                                            resume_steps=[steps])[0]
        assert resumed.ranges == full.ranges and resumed.start == full.start
        assert (resumed.evaluations, resumed.forwards) == (full.evaluations, full.forwards)
        assert [{**s, "accuracy": round(s["accuracy"], 9)} for s in resumed.steps] == \
            [{**s, "accuracy": round(s["accuracy"], 9)} for s in full.steps]


def test_recorded_steps_are_checked_before_a_resume(known):
    full = discovery.greedy_search(known, _samples())
    rows = [discovery.path_row(step) for step in full.steps]
    names = list(discovery.edge_types(_layout()))
    with pytest.raises(InputError, match="steps 0, 1"):
        discovery.steps_from_path(rows[:2] + rows[3:], names, N_LAYERS)
    with pytest.raises(InputError, match="names edge types"):
        discovery.steps_from_path(rows, names[:-1], N_LAYERS)
    with pytest.raises(InputError, match="not a range"):
        discovery.steps_from_path(rows, names, 2)


def test_the_search_agrees_with_the_naive_method(known):
    fast = discovery.greedy_search(known, _samples(), method="fast")
    naive = discovery.greedy_search(known, _samples(), method="naive")
    assert fast.open_layers() == naive.open_layers()
    assert [s["accuracy"] for s in fast.steps] == [s["accuracy"] for s in naive.steps]


def test_per_sample_searches_run_together_and_see_the_tie(known):
    """An answer-0 sample keeps its answer with video → last closed (the tie reads as answer 0):
    its own pathway closes it; an answer-1 sample needs it in layer 1 exactly."""
    samples = _samples(2)
    first, second = discovery.search_together(known, [[samples[0]], [samples[1]]])
    assert first.open_layers()["video → last"] == []
    assert second.open_layers()["video → last"] == [1]


def test_the_budget_stops_cleanly_with_the_last_accepted_pathway(known):
    full = discovery.greedy_search(known, _samples())
    cut = discovery.greedy_search(known, _samples(), budget=3 * 8)
    assert not cut.complete and cut.evaluations <= 3 * 8
    assert len(cut.steps) < len(full.steps)
    assert cut.ranges == cut.steps[-1]["ranges"]


def test_splits_are_disjoint_stable_and_by_id():
    ids = [f"task/{i}" for i in range(200)]
    split = {i: discovery.split_of(i, 0.5, 0) for i in ids}
    assert set(split.values()) == {"search", "eval"}
    assert 60 < sum(v == "search" for v in split.values()) < 140
    assert split == {i: discovery.split_of(i, 0.5, 0) for i in reversed(ids)}
    assert split != {i: discovery.split_of(i, 0.5, 1) for i in ids}
    with pytest.raises(InputError, match="search fraction"):
        discovery.split_of("x", 1.0)


def test_edge_types_partition_the_coarse_pathways():
    """The types are disjoint, and fine's question split unions back to coarse's."""
    seg = _layout()
    n = seg.n_positions
    for targets in discovery.SEARCH_TARGETS:
        masks = [e.dense(n) for e in discovery.edge_types(seg, targets).values()]
        assert int(sum(m.int() for m in masks).max()) == 1
    coarse, fine = discovery.edge_types(seg, "coarse"), discovery.edge_types(seg, "fine")
    assert torch.equal(coarse["question → last"].dense(n),
                       fine["non-option question → last"].dense(n)
                       | fine["options → last"].dense(n))
    with pytest.raises(InputError, match="open layers must name exactly"):
        discovery.pathway_from_layers(seg, 3, {"cross-frame": [0]})


def test_discover_writes_a_circuit_that_prune_reproduces(model_and_data, tmp_path, capsys):
    """End to end: discover on a SynthTV-shaped model writes a circuit file into its run; the
    file loads by path and by name from --circuit-dir, and the ordinary prune command run with
    it gives, on the held-out samples recorded in run.json, the accuracy discover reported."""
    from mapflow_tl.circuits import load_circuit
    from mapflow_tl.cli import main
    from mapflow_tl.runs import read_table

    model_dir, data_dir = model_and_data
    out = tmp_path / "discover"
    common = ["--model", str(model_dir), "--dataset", "synthtv", "--data-root", str(data_dir)]
    assert main(["discover", *common, "--out", str(out), "--random-seeds", "0",
                 "--per-sample", "2", "--sample-budget", "40", "--name", "found"]) == 0
    config = json.loads((out / "run.json").read_text())
    record = config["discover"]
    search, held_out = set(record["search_samples"]), set(record["eval_samples"])
    assert search and held_out and not search & held_out
    assert record["circuit_file"] in config["files"]
    path = out / record["circuit_file"]
    by_path = load_circuit(path)
    by_name = load_circuit("found", [path.parent])
    assert by_path.name == by_name.name == "found" and by_name.kind == "pathway"
    assert "Held out:" in path.read_text()

    rows = read_table(out, "discover")
    final = max((r for r in rows if r["method"] == "search" and r["split"] == "eval"),
                key=lambda r: r["step"], default=None)
    reported = record["held_out"]["pathway_accuracy"]
    if final is not None:
        assert final["accuracy"] == pytest.approx(reported)
    assert {r["method"] for r in rows} >= {"full", "random"} | ({"search"} if final else set())

    pruned = tmp_path / "prune"
    assert main(["prune", *common, "--out", str(pruned), "--circuit-dir", str(path.parent),
                 "--circuit", "found", "--random-seeds", "0"]) == 0
    pathway = [r for r in read_table(pruned, "prune")
               if r["variant"] == "pathway" and r["sample"] in held_out]
    assert len(pathway) == len(held_out)
    assert 100 * sum(bool(r["correct"]) for r in pathway) / len(pathway) == \
        pytest.approx(reported)
    retained = sum(r["kept_edges"] for r in pathway) / sum(r["total_edges"] for r in pathway)
    assert retained == pytest.approx(record["held_out"]["retained"])


def test_a_killed_discover_resumes_from_its_table(model_and_data, tmp_path, monkeypatch,
                                                 capsys):
    """A discover run killed after writing two accepted steps to discover_path resumes with
    --resume (its rows checked, the last step re-measured) and ends with the uninterrupted run's
    pathway and search path; a finished run, a flow circuit and a foreign table are refused."""
    from mapflow_tl.cli import main
    from mapflow_tl.runs import RunWriter, read_table

    model_dir, data_dir = model_and_data
    common = ["--model", str(model_dir), "--dataset", "synthtv", "--data-root", str(data_dir),
              "--random-seeds", "0", "--name", "found"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert main(["discover", *common, "--out", str(whole)]) == 0
    expected = read_table(whole, "discover_path")
    assert len(expected) >= 3, "the search must accept two steps for this test to mean much"

    write = RunWriter.write

    def killing(self, table, rows):
        write(self, table, rows)
        if table == "discover_path" and len(read_table(self.out, table)) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunWriter, "write", killing)
    assert main(["discover", *common, "--out", str(cut)]) == 130   # "interrupted: --resume"
    monkeypatch.setattr(RunWriter, "write", write)
    assert len(read_table(cut, "discover_path")) == 3 and not read_table(cut, "discover")
    assert main(["discover", *common, "--out", str(cut), "--resume"]) == 0
    assert read_table(cut, "discover_path") == expected
    assert (cut / "circuits" / "found.py").read_text().split('"""')[2] == \
        (whole / "circuits" / "found.py").read_text().split('"""')[2]

    assert main(["discover", *common, "--out", str(cut), "--resume"]) == 2   # finished
    path = cut / "discover_path.jsonl"
    (cut / "discover.jsonl").unlink()
    lines = path.read_text().splitlines()
    step = json.loads(lines[1])
    step["search_accuracy"] -= 10
    path.write_text("\n".join([lines[0], json.dumps(step)]) + "\n")
    assert main(["discover", *common, "--out", str(cut), "--resume"]) == 2   # not this run's
    assert main(["discover", *common, "--out", str(tmp_path / "x"), "--circuit",
                 "cross-frame"]) == 2
    # this untrained model answers no search sample: there are no curves to start from
    assert main(["discover", *common, "--out", str(tmp_path / "y"), "--start", "curves"]) == 2
    assert "start from scratch" in capsys.readouterr().err

    # a search its budget stopped, killed before its final tables: one closing row, kept
    budget = tmp_path / "budget"
    assert main(["discover", *common, "--out", str(budget), "--budget", "12"]) == 0
    stopped = read_table(budget, "discover_path")
    assert [r["complete"] for r in stopped] == [True] * (len(stopped) - 1) + [False]
    (budget / "discover.jsonl").unlink()
    assert main(["discover", *common, "--out", str(budget), "--budget", "12", "--resume"]) == 0
    assert read_table(budget, "discover_path") == stopped


def test_the_circuit_file_is_a_loadable_circuit_whatever_its_provenance_says(tmp_path):
    """Backslashes and triple quotes in the provenance cannot break the file; a model of another
    depth is refused by name."""
    from mapflow_tl.circuits import load_circuit

    seg = _layout()
    opened = {name: ([1] if name == "video → last" else [])
              for name in discovery.edge_types(seg)}
    source = discovery.circuit_source("x-found", "one line", 'C:\\models\\m """ done\nsecond',
                                      N_LAYERS, "coarse", opened)
    path = tmp_path / "x_found.py"
    path.write_text(source)
    circuit = load_circuit(path)
    spec = circuit.build_pathway(seg, N_LAYERS)
    n = seg.n_positions
    # by hand: only the last position's video keys in layer 1 stay open among the typed edges
    assert not spec.blocked(1).dense(n)[n - 1, seg.video.start:seg.video.stop].any()
    assert spec.blocked(0).dense(n)[n - 1, seg.video.start:seg.video.stop].all()
    assert max(len(line) for line in source.splitlines()) <= 100
    with pytest.raises(InputError, match="3-layer model; this one has 4"):
        circuit.build_pathway(seg, 4)


def test_variability_by_hand():
    rows = [{"sample": s, "edge_type": "t", "layer": 0, "task_open": True, "sample_open": o}
            for s, o in (("a", True), ("b", False), ("c", False), ("d", True))]
    assert discovery.variability(rows) == [{"edge_type": "t", "layer": 0, "samples": 4,
                                            "task_open": True, "sample_open": 2,
                                            "differ": 0.5}]
