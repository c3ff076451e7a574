"""``mapflow-tl eval``: the accuracy pass on the shipped SynthTV model, checked against the
Hugging Face model answering the same items by hand (its own prompt encoding, the full-vocabulary
argmax at the last position, the official grading ``answer.lower() == gt.lower()``); resume; the
report's accuracy table; the scorer files of open-ended sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mapflow_tl.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("mapflow_tl.synthtv.generator")

TASKS = ["action_antonym", "scene_transition", "object_count"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # the SynthTV evaluation set is cached under HOME
    monkeypatch.delenv("MAPFLOW_CACHE", raising=False)
    return tmp_path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _eval(out: Path, *extra: str) -> int:
    argv = ["eval", "--out", str(out), "--limit", "4"]
    for task in TASKS:
        argv += ["--task", task]
    return main(argv + list(extra))


@pytest.mark.parametrize("model", ["synthtv-video-ft", "synthtv-image"])
def test_eval_agrees_with_the_hf_model_answering_by_hand(home, capsys, model):
    """Both shipped models: the video model answers nearly all of these, the image-only twin
    about 40 %, so right and wrong answers are both checked. The reference reads the same
    frames (the written mp4, decoded with PyAV) through SynthTV's own prompt encoding."""
    import numpy as np
    import torch

    from mapflow_tl.data import load_dataset
    from mapflow_tl.synthtv import generator as gen
    from mapflow_tl.synthtv.evaluate import EVAL_SEED, load, model_config
    from mapflow_tl.synthtv.train import answer_logits, make_batch

    assert _eval(home / "run", "--model", model) == 0
    printed = capsys.readouterr().out
    rows = _rows(home / "run" / "eval.jsonl")
    assert len(rows) == 12 and all(row["kind"] == "choice" for row in rows)

    # the same items, answered by the HF model through SynthTV's own prompt encoding
    hf_model, tokenizer = load(model)
    config = model_config(hf_model)
    items = gen.generate(TASKS, 4, EVAL_SEED)
    hits: dict[str, list[bool]] = {}
    by_id = {row["sample"]: row for row in rows}
    av = pytest.importorskip("av")
    samples = {s.id: s for s in load_dataset("synthtv", tasks=TASKS, limit=4)}
    with torch.no_grad():
        for task in TASKS:
            for index, item in enumerate(items[task]):
                # the frames the run read: the written mp4 (lossy), decoded here with PyAV
                with av.open(str(samples[f"{task}/{index}"].video)) as container:
                    decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
                # SynthTV writes each frame `repeat` times, losslessly: any copy is that frame
                repeat = len(decoded) // len(item.states)
                blocks = np.stack(decoded).reshape(len(item.states), repeat, *decoded[0].shape)
                assert (blocks == blocks[:, :1]).all()
                item._frames = blocks[:, 0]
                probabilities = answer_logits(hf_model, make_batch([item], tokenizer, config))[0]
                probabilities = probabilities.float().softmax(-1)
                token = int(probabilities.argmax())
                letter = "ABCDEFG"[item.answer_index]
                correct = tokenizer.decode([token]).lower() == letter.lower()
                row = by_id[f"{task}/{index}"]
                assert row["truth"] == letter and row["correct"] == correct
                assert row["prediction"] == tokenizer.decode([token])
                assert row["p_pred"] == pytest.approx(float(probabilities[token]), abs=1e-4)
                truth_id = tokenizer.convert_tokens_to_ids(letter)
                assert row["p_true"] == pytest.approx(float(probabilities[truth_id]), abs=1e-4)
                hits.setdefault(row["task"], []).append(correct)
    every = [hit for task_hits in hits.values() for hit in task_hits]
    if model == "synthtv-image":
        assert 0 < sum(every) < len(every)   # the check saw right and wrong answers
    for task, task_hits in [*hits.items(), ("all", every)]:
        accuracy = 100 * sum(task_hits) / len(task_hits)
        line = next(line for line in printed.splitlines() if line.startswith(task + " "))
        assert line.split()[-2:] == [str(len(task_hits)), f"{accuracy:.1f}"], line


def test_eval_resumes_where_it_stopped_and_refuses_another_grading(home, capsys):
    out = home / "run"
    assert _eval(out) == 0
    full = _rows(out / "eval.jsonl")
    # a run killed after its 9th sample: the last three rows and markers are gone
    for table in ("eval", "samples"):
        path = out / f"{table}.jsonl"
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:9]))
    capsys.readouterr()
    assert _eval(out, "--resume") == 0
    assert " 9/12 " in capsys.readouterr().err   # the bar starts where the run stopped
    assert _rows(out / "eval.jsonl") == full
    assert len(_rows(out / "samples.jsonl")) == 12
    assert _eval(out, "--resume") == 0          # nothing left to do: no rows added
    assert _rows(out / "eval.jsonl") == full
    before = (out / "eval.jsonl").read_bytes()
    assert _eval(out, "--resume", "--correctness", "token-id") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "choose another --out for the new configuration" in err[-1]
    assert (out / "eval.jsonl").read_bytes() == before


def test_report_draws_the_accuracy_per_task(home, capsys):
    out = home / "run"
    assert _eval(out) == 0
    rows = _rows(out / "eval.jsonl")
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert 'id="accuracy"' in page and 'id="accuracy-table"' in page
    table = page[page.index('id="accuracy-table"'):]
    for task in {row["task"] for row in rows}:
        graded = [row["correct"] for row in rows if row["task"] == task]
        assert f"<td>{task}</td><td>{len(graded)}</td><td>{100 * sum(graded) / len(graded):.1f} %" \
            in table


def test_vcgbench_answers_are_written_as_video_chatgpt_reads_them(tmp_path):
    """Video-ChatGPT's quantitative_evaluation/evaluate_benchmark_*.py read ``--pred_path``: a
    JSON list of the annotation entries with ``pred`` added (consistency: ``pred1``,
    ``pred2``)."""
    from mapflow_tl.cli.evaluate import scorer_files
    from mapflow_tl.data import load_dataset

    qa = tmp_path / "VCGBench" / "Benchmarking_QA"
    qa.mkdir(parents=True)
    (qa / "generic_qa.json").write_text(json.dumps(
        [{"Q": "What is he doing?", "A": "Juggling.", "video_name": "v_1"}]))
    (qa / "temporal_qa.json").write_text(json.dumps([]))
    (qa / "consistency_qa.json").write_text(json.dumps(
        [{"Q1": "What is eaten?", "Q2": "What does the parrot eat?", "A": "Cream.",
          "video_name": "v_2"}]))
    samples = list(load_dataset("vcgbench", tmp_path / "VCGBench", check_videos=False))
    rows = [{"sample": s.id, "task": s.task, "kind": "open", "prediction": f"answer {i}",
             "truth": s.reference, "correct": False, "exact": False}
            for i, s in enumerate(samples)]
    assert scorer_files("vcgbench", rows, samples) == {
        "generic_qa": [{"Q": "What is he doing?", "A": "Juggling.", "video_name": "v_1",
                        "pred": "answer 0"}],
        "consistency_qa": [{"Q1": "What is eaten?", "Q2": "What does the parrot eat?",
                            "A": "Cream.", "video_name": "v_2", "pred1": "answer 1",
                            "pred2": "answer 2"}],
    }
    # half a pair (a run limited or stopped between the phrasings) is not a scorer entry
    assert "consistency_qa" not in scorer_files("vcgbench", rows[:2], samples)


@pytest.mark.parametrize("prediction, reference, exact, contains", [
    ("Left.", "left", True, True),
    ("it moves to the left", "left", False, True),
    ("leftover", "left", False, False),
    ("the Kitchen to the garden", "kitchen to the garden.", False, True),
    ("kitchen  to the GARDEN", "kitchen to the garden.", True, True),
    ("", "three", False, False),
])
def test_open_answer_match(prediction, reference, exact, contains):
    from mapflow_tl.metrics import open_answer_match

    assert open_answer_match(prediction, reference) == (exact, contains)


needs_generate = pytest.mark.skipif(
    not hasattr(__import__("mapflow_tl.models.videollm", fromlist=["VideoLLM"]).VideoLLM,
                "generate"),
    reason="open-ended answers need VideoLLM.generate (the openended branch)")


@needs_generate
def test_open_ended_eval_agrees_with_hf_generate_and_scores_named_answers(home, capsys):
    """SynthTV asked without options (the prompt its models learnt open-endedly: "Question: "
    before the question, the answer after "Best option:("): each answer equals the Hugging Face
    model's own greedy ``generate`` from SynthTV's open-ended prompt encoding and the same
    frames; ``correct`` / ``exact`` restate the named-answer match by hand."""
    import numpy as np
    import torch

    from mapflow_tl.data import load_dataset
    from mapflow_tl.synthtv import build
    from mapflow_tl.synthtv import generator as gen
    from mapflow_tl.synthtv.evaluate import EVAL_SEED, load, model_config

    av = pytest.importorskip("av")
    tasks = ["scene_transition", "moving_direction"]
    argv = ["eval", "--out", str(home / "oe"), "--limit", "2", "--open-ended",
            "--question-prefix", "Question: ", "--answer-prompt", "Best option:(",
            "--max-new-tokens", "12"]
    for task in tasks:
        argv += ["--task", task]
    assert main(argv) == 0
    rows = {row["sample"]: row for row in _rows(home / "oe" / "eval.jsonl")}
    assert len(rows) == 4 and {row["kind"] for row in rows.values()} == {"open"}

    model, tokenizer = load("synthtv-video-ft")
    config = model_config(model)
    items = gen.generate(tasks, 2, EVAL_SEED)
    samples = {s.id: s for s in load_dataset("synthtv", tasks=tasks, limit=2)}
    for task in tasks:
        for index, item in enumerate(items[task]):
            sample_id = f"{task}/{index}"
            with av.open(str(samples[sample_id].video)) as container:
                decoded = np.stack([f.to_ndarray(format="rgb24")
                                    for f in container.decode(video=0)])
            item._frames = decoded[::len(decoded) // len(item.states)]
            ids = torch.tensor([build.encode_item(item, tokenizer, config,
                                                  open_ended=True)["input_ids"]])
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                     pixel_values_videos=build.normalize_frames(
                                         item.frames)[None],
                                     max_new_tokens=12, do_sample=False, num_beams=1)
            expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
            row = rows[sample_id]
            assert row["prediction"] == expected, sample_id
            assert row["truth"] == item.named_answer
            words = lambda text: "".join(c if c.isalnum() else " " for c in text.lower()).split()
            ref, pred = words(item.named_answer), words(expected)
            assert row["correct"] == any(pred[i:i + len(ref)] == ref for i in range(len(pred)))
            assert row["exact"] == (" ".join(expected.lower().split()).rstrip(".") ==
                                    item.named_answer.lower())
    out_text = capsys.readouterr().out
    assert "exact" in out_text.splitlines()[0]
    results = json.loads((home / "oe" / "scorer" / "results.json").read_text())
    assert [(r["pred"], r["gt"]) for r in results] == \
        [(rows[k]["prediction"], rows[k]["truth"]) for k in rows]


def test_eval_on_a_videomme_download(home, capsys):
    """The accuracy pass over a hand-made Video-MME download (tests/test_data_long_open.py's
    fixture in the published parquet layout): one row per question, graded against its letter."""
    from test_data_long_open import VIDEOMME_ROWS, write_mp4, write_videomme

    root = write_videomme(home / "Video-MME", VIDEOMME_ROWS, write_mp4(home / "clip.mp4"))
    assert main(["eval", "--dataset", "videomme", "--data-root", str(root),
                 "--out", str(home / "vm")]) == 0
    rows = _rows(home / "vm" / "eval.jsonl")
    assert [(r["sample"], r["truth"]) for r in rows] == [("Counting Problem/001-1", "C"),
                                                         ("Information Synopsis/001-2", "B")]
    assert all(r["correct"] == (r["prediction"].lower() == r["truth"].lower()) for r in rows)
    assert "Counting Problem" in capsys.readouterr().out


@needs_generate
def test_vcgbench_eval_writes_the_scorer_files(home, capsys):
    from test_data_long_open import write_mp4

    qa = home / "VCGBench" / "Benchmarking_QA"
    qa.mkdir(parents=True)
    (qa / "generic_qa.json").write_text(json.dumps(
        [{"Q": "What is he doing?", "A": "Juggling.", "video_name": "v_1"}]))
    (qa / "temporal_qa.json").write_text("[]")
    (qa / "consistency_qa.json").write_text(json.dumps(
        [{"Q1": "What is eaten?", "Q2": "What does it eat?", "A": "Cream.",
          "video_name": "v_1"}]))
    write_mp4(home / "VCGBench" / "Test_Videos" / "v_1.mp4")
    out = home / "vcg"
    assert main(["eval", "--dataset", "vcgbench", "--data-root", str(home / "VCGBench"),
                 "--out", str(out), "--max-new-tokens", "4"]) == 0
    rows = {r["sample"]: r for r in _rows(out / "eval.jsonl")}
    generic = json.loads((out / "scorer" / "generic_qa.json").read_text())
    consistency = json.loads((out / "scorer" / "consistency_qa.json").read_text())
    assert generic == [{"Q": "What is he doing?", "A": "Juggling.", "video_name": "v_1",
                        "pred": rows["generic_qa/0"]["prediction"]}]
    assert consistency == [{"Q1": "What is eaten?", "Q2": "What does it eat?", "A": "Cream.",
                            "video_name": "v_1",
                            "pred1": rows["consistency_qa/0/1"]["prediction"],
                            "pred2": rows["consistency_qa/0/2"]["prediction"]}]
    manifest = json.loads((out / "run.json").read_text())["files"]
    assert "scorer/generic_qa.json" in manifest and "scorer/consistency_qa.json" in manifest


def test_tvbench_open_ended_prompt_carries_the_official_prefix_and_answer_prompt(tmp_path):
    """What ``eval`` asks a TVBench open-ended sample: "Question: " before the question, no
    options, and the assistant's answer started with the task's official answer prompt."""
    import mapflow_tl as mf
    from mapflow_tl.cli.evaluate import _as_open_ended
    from test_data_long_open import write_mp4

    root = tmp_path / "TVBench"
    (root / "json").mkdir(parents=True)
    (root / "json" / "moving_direction.json").write_text(json.dumps([
        {"video": "c.mp4", "question": "What direction does the cyan sphere move?",
         "candidates": ["Moving left.", "Moving right."], "answer": "Moving right."}]))
    write_mp4(root / "video" / "moving_direction" / "c.mp4")
    sample = mf.load_dataset("tvbench-oe", root)[0]
    asked = _as_open_ended(sample, open_ended=False, answer_prompt=None, question_prefix=None)
    x = mf.load_videollm("synthtv-video-ft").prepare(asked)
    assert "Question: What direction does the cyan sphere move?" in x.prompt
    assert "Moving left." not in x.prompt and not len(x.answer_ids)
    assert x.prompt.rstrip().endswith("The cyan sphere moves to the")
    # --answer-prompt and --question-prefix replace the dataset's own
    other = _as_open_ended(sample, open_ended=False, answer_prompt="Answer:",
                           question_prefix="Q: ")
    assert (other.question, other.answer_prompt) == \
        ("Q: What direction does the cyan sphere move?", "Answer:")


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "videomme", "--data-root", "{home}/nowhere"], "a Video-MME data root"),
    (["--dataset", "vcgbench"], "pass data_root (--data-root on the command line)"),
])
def test_eval_bad_input_is_one_line_and_writes_nothing(home, capsys, argv, message):
    out = home / "run"
    code = main(["eval", "--out", str(out)] + [a.format(home=home) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 2 and message in err[-1]   # the loading line, the error
    assert not out.exists()


def test_eval_refuses_a_zero_token_answer(home, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--out", str(home / "run"), "--max-new-tokens", "0"])
    assert "--max-new-tokens: must be at least 1" in capsys.readouterr().err
    assert not (home / "run").exists()


def test_synthtv_samples_carry_the_answer_as_named_without_options(home):
    """``eval --open-ended`` scores SynthTV against the generator's named answer (Scene
    Transition names "B after A" as "A to B"), which TVBench's file format cannot hold."""
    from mapflow_tl.cli.evaluate import _as_open_ended
    from mapflow_tl.data import load_dataset
    from mapflow_tl.synthtv import generator as gen
    from mapflow_tl.synthtv.evaluate import EVAL_SEED

    samples = load_dataset("synthtv", tasks=["scene_transition"], limit=6)
    items = gen.generate(["scene_transition"], 6, EVAL_SEED)["scene_transition"]
    assert [s.metadata["named_answer"] for s in samples] == [i.named_answer for i in items]
    assert any(i.named_answer != i.answer for i in items)   # the case that needs it
    asked = [_as_open_ended(s, open_ended=True, answer_prompt="Best option:(",
                            question_prefix="Question: ") for s in samples]
    assert [a.reference for a in asked] == [i.named_answer for i in items]
    assert all(a.options == () and a.answer_index is None for a in asked)
    assert [a.question for a in asked] == [f"Question: {i.question}" for i in items]
