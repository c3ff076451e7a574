import json

import pytest

from mapflow_tl.cli import main


def test_help_lists_every_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "flow", "prob", "lens", "prune", "attention", "report", "circuits",
                    "data"):
        assert command in out


def test_circuits_lists_the_papers_circuits(capsys):
    assert main(["circuits"]) == 0
    out = capsys.readouterr().out
    for name in ("cross-frame", "vql-to-ql", "question-and-options-to-last", "vq-to-true-opt",
                 "pathway-llava-next-7b", "pathway-llava-next-13b", "pathway-mini-internvl-4b",
                 "pathway-videollama3-7b"):
        assert name in out


def test_user_circuit_folder(tmp_path, capsys):
    (tmp_path / "my_circuit.py").write_text(
        '"""mine"""\nfrom mapflow_tl import edges as E\nNAME = "my-circuit"\n'
        'DESCRIPTION = "video → last only"\n'
        'def curves(seg, n_layers):\n    return {"video → last": E.video_to_last(seg)}\n')
    assert main(["circuits", "--dir", str(tmp_path)]) == 0
    assert "my-circuit" in capsys.readouterr().out


def test_errors_are_reported_not_raised(tmp_path, capsys):
    code = main(["flow", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "no model directory" in capsys.readouterr().err


def test_report_of_a_folder_without_a_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a mapflow-tl run directory" in capsys.readouterr().err


def test_demo_on_synthtv_writes_the_summary_and_report(tmp_path, capsys, monkeypatch):
    pytest.importorskip("mapflow_tl.synthtv.generator")
    monkeypatch.setenv("HOME", str(tmp_path))  # the SynthTV evaluation set is cached under HOME
    assert main(["demo", "--out", str(tmp_path / "demo"), "--per-task", "2", "--json"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{\n"):])
    assert set(summary["tasks"]) == {"Action Antonym", "Action Sequence", "Moving Direction",
                                     "Object Count", "Scene Transition"}
    for row in summary["tasks"].values():
        for key in ("base_acc", "crossframe_ko_acc", "pathway_acc", "pathway_retained",
                    "random_acc"):
            assert row[key] is not None and 0 <= row[key] <= 100
    assert "image_model_crossframe_ko_drop" in summary
    page = (tmp_path / "demo" / "report.html").read_text()
    for figure_id in ("flow-change", "probability-trace", "keyword-frequency", "lens-overlay",
                      "attention-maps", "pathway-table"):
        assert f'id="{figure_id}"' in page


def test_input_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    """The project's own InputError is one line with exit code 2 (and a traceback with
    --debug); an unexpected ValueError from inside the code is a bug and is raised, not hidden."""
    from mapflow_tl import circuits
    from mapflow_tl.errors import InputError

    def bad_input(*args, **kwargs):
        raise InputError("circuit folder /nowhere does not exist; pass an existing --dir")

    monkeypatch.setattr(circuits, "list_circuits", bad_input)
    assert main(["circuits"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("mapflow-tl circuits: error: circuit folder /nowhere does not exist; "
                           "pass an existing --dir")
    with pytest.raises(InputError):
        main(["--debug", "circuits"])

    def bug(*args, **kwargs):
        return int("not a number")       # an internal ValueError: a bug, not bad input

    monkeypatch.setattr(circuits, "list_circuits", bug)
    with pytest.raises(ValueError, match="invalid literal"):
        main(["circuits"])


def test_os_errors_name_the_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["flow", "--out", str(blocker / "run"), "--limit", "1", "--task",
                 "action_sequence"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(blocker) in err[0]
