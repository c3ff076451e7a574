import json

from mapflow_tl.cli import main


def test_demo_json(capsys):
    assert main(["demo", "--json", "--layers", "4", "--window", "3"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.index("{\n"):])
    assert set(summary["relative_change"]) >= {"cross-frame", "video → question", "question → last"}
    assert all(len(row) == 4 for row in summary["relative_change"].values())
    assert summary["edges"]["question → video"] == 0
    assert all(value == 0 for value in summary["relative_change"]["question → video"])


def test_help_and_version(capsys):
    assert main([]) == 0
    assert "demo" in capsys.readouterr().out
