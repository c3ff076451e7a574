"""Finding circuits: the built-in ones come from the installed package, a lookup by name runs
only the file that declares that name, and a broken or stray file in a user's folder names
itself without breaking lookups of other circuits."""

from __future__ import annotations

from pathlib import Path

import pytest

from mapflow_tl.circuits import builtin_dir, circuit_files, list_circuits, load_circuit

REPO_CIRCUITS = Path(__file__).resolve().parents[1] / "circuits"
BUILTIN_NAMES = {
    "cross-frame", "pathway-llava-next-13b", "pathway-llava-next-7b", "pathway-mini-internvl-4b",
    "pathway-synthtv", "pathway-videollama3-7b", "question-and-options-to-last", "vq-to-true-opt",
    "vql-to-ql", "open-ended", "open-ended-response",
}


def circuit_source(name: str, marker: Path, extra: str = "") -> str:
    """A flow circuit that appends its name to ``marker`` when its file runs."""
    return (f'from pathlib import Path\nfrom mapflow_tl import edges as E\n'
            f'Path({str(marker)!r}).open("a").write({name!r} + "\\n")\n'
            f'NAME = {name!r}\nDESCRIPTION = "test circuit {name}"\n{extra}'
            f'def curves(seg, n_layers):\n    return {{"cross-frame": E.cross_frame(seg)}}\n')


@pytest.fixture
def user_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("MAPFLOW_CIRCUITS", raising=False)
    folder = tmp_path / "mine"
    folder.mkdir()
    marker = tmp_path / "ran.txt"
    (folder / "alpha.py").write_text(circuit_source("alpha", marker))
    (folder / "beta.py").write_text(circuit_source("beta", marker))
    # a helper module beside the circuits: no NAME, and running it would fail
    (folder / "helpers.py").write_text('raise RuntimeError("helpers.py must not be run")\n')
    return folder


def ran(user_dir: Path) -> list[str]:
    marker = user_dir.parent / "ran.txt"
    return marker.read_text().split() if marker.exists() else []


def test_builtin_circuits_are_the_repository_folder():
    # in this (editable) install the package data is the repository's circuits/ folder itself
    assert builtin_dir().resolve() == REPO_CIRCUITS
    names = {file.name for file in circuit_files() if file.path.parent == builtin_dir()}
    assert names == BUILTIN_NAMES
    assert set(list_circuits()) >= BUILTIN_NAMES
    circuit = load_circuit("cross-frame")
    assert circuit.kind == "flow" and circuit.path.name == "cross_frame.py"


def test_a_lookup_runs_only_the_named_file(user_dir):
    circuit = load_circuit("beta", [user_dir])
    assert (circuit.name, circuit.path.name) == ("beta", "beta.py")
    assert ran(user_dir) == ["beta"]
    assert load_circuit("cross-frame", [user_dir]).path.parent == builtin_dir()
    assert ran(user_dir) == ["beta"]


def test_listing_runs_circuits_but_not_helpers(user_dir):
    circuits = list_circuits([user_dir])
    assert {"alpha", "beta"} | BUILTIN_NAMES == set(circuits)
    assert sorted(ran(user_dir)) == ["alpha", "beta"]


def test_environment_folder_is_searched(user_dir, monkeypatch):
    monkeypatch.setenv("MAPFLOW_CIRCUITS", str(user_dir))
    assert load_circuit("alpha").path == user_dir / "alpha.py"


def test_a_broken_circuit_names_itself_and_spares_the_others(user_dir):
    marker = user_dir.parent / "ran.txt"
    (user_dir / "broken.py").write_text(
        circuit_source("broken", marker, extra='raise ImportError("no module named foo")\n'))
    (user_dir / "garbled.py").write_text('NAME = "garbled"\ndef curves(:\n')
    # lookups of other circuits neither run nor trip over the broken files
    assert load_circuit("alpha", [user_dir]).name == "alpha"
    assert load_circuit("vql-to-ql", [user_dir]).name == "vql-to-ql"
    assert ran(user_dir) == ["alpha"]
    # asking for the broken one: one line naming the file and the cause
    with pytest.raises(ValueError) as caught:
        load_circuit("broken", [user_dir])
    message = str(caught.value)
    assert "\n" not in message
    assert f"circuit file {user_dir / 'broken.py'} failed to run: ImportError: no module" in message
    # a file whose source cannot be read is reported where a name is not found
    with pytest.raises(ValueError, match=r"unknown circuit 'garbled'; available: .*'alpha'.*"
                                         r"not read: .*garbled.py \(syntax error on line 2"):
        load_circuit("garbled", [user_dir])
    # listing: raises on the first broken file, or collects one line per file and goes on
    with pytest.raises(ValueError, match="broken.py failed to run"):
        list_circuits([user_dir])
    errors: list[str] = []
    circuits = list_circuits([user_dir], errors=errors)
    assert {"alpha", "beta"} | BUILTIN_NAMES == set(circuits)
    assert len(errors) == 2 and all("\n" not in line for line in errors)
    assert "broken.py failed to run" in errors[0] and "garbled.py: syntax error" in errors[1]


def test_name_must_be_a_literal(user_dir):
    (user_dir / "computed.py").write_text(
        'NAME = "comp" + "uted"\nDESCRIPTION = "x"\ndef curves(seg, n_layers):\n    return {}\n')
    with pytest.raises(ValueError, match="computed.py.*NAME must be a plain string literal"):
        list_circuits([user_dir])
    with pytest.raises(ValueError, match="unknown circuit 'computed'"):
        load_circuit("computed", [user_dir])
    # a path still loads it: that runs the file, whatever its NAME
    assert load_circuit(user_dir / "computed.py").name == "computed"


def test_earlier_folder_wins_without_running_the_later(tmp_path, user_dir):
    first = tmp_path / "first"
    first.mkdir()
    marker = tmp_path / "ran.txt"
    (first / "other_alpha.py").write_text(circuit_source("alpha", marker))
    circuits = list_circuits([first, user_dir])
    assert circuits["alpha"].path == first / "other_alpha.py"
    assert sorted(ran(user_dir)) == ["alpha", "beta"]  # user_dir's alpha.py was not run
    assert load_circuit("alpha", [first, user_dir]).path == first / "other_alpha.py"


def test_a_file_path_loads_that_file(user_dir, tmp_path):
    assert load_circuit(user_dir / "alpha.py").name == "alpha"
    with pytest.raises(ValueError, match="circuit file .*nothere.py does not exist"):
        load_circuit(tmp_path / "nothere.py")
    (tmp_path / "no_name.py").write_text("def curves(seg, n_layers):\n    return {}\n")
    with pytest.raises(ValueError, match=r"no_name.py lacks \['NAME', 'DESCRIPTION'\]"):
        load_circuit(tmp_path / "no_name.py")


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"circuit folder\(s\) \['.*nothere'\] do not exist"):
        load_circuit("cross-frame", [tmp_path / "nothere"])


def test_paper_pathways_carry_the_official_random_ratio(tmp_path):
    """The official random baseline's ratio per model, as the released scripts pass it
    (``--random_block_ratio`` in scripts/analysis/effective_pathway_analysis_*: llava_next_7b
    :22 0.58, llava_next_13b :22 0.63, mini_internvl_4b :22 0.6, videollama3 :28 0.42), is the
    circuit's default; a circuit without one (SynthTV's measured pathway) has none."""
    official = {"pathway_llava_next_7b.py": 0.58, "pathway_llava_next_13b.py": 0.63,
                "pathway_mini_internvl_4b.py": 0.6, "pathway_videollama3_7b.py": 0.42,
                "pathway_synthtv.py": None}
    for file, ratio in official.items():
        assert load_circuit(REPO_CIRCUITS / file).random_ratio == ratio, file
    pathway = ("from mapflow_tl.hooks import PathwaySpec\nNAME = 'p'\nDESCRIPTION = 'p'\n"
               "RANDOM_RATIO = {}\ndef pathway(seg, n_layers):\n    return PathwaySpec(n_layers)\n")
    good = tmp_path / "good.py"
    good.write_text(pathway.format("0.25"))
    assert load_circuit(good).random_ratio == 0.25
    for index, bad in enumerate(("1.5", "'0.5'", "True", "0")):
        path = tmp_path / f"bad_{index}.py"
        path.write_text(pathway.format(bad))
        with pytest.raises(ValueError, match="RANDOM_RATIO must be a fraction in \\(0, 1\\)"):
            load_circuit(path)
    flow = tmp_path / "flow_with_ratio.py"
    flow.write_text(circuit_source("f", tmp_path / "m", "RANDOM_RATIO = 0.5\n"))
    with pytest.raises(ValueError, match="RANDOM_RATIO belongs to a pathway circuit"):
        load_circuit(flow)
