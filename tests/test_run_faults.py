"""Nothing lost under new faults (issue #36, run orchestration): writes outside the write policy,
tables damaged by hand before a resume, hostile circuit files, failures after run.json, stale
launcher variables, a video replaced before a resume. Each test injects the fault and checks
what is left on disk against a hand-made expectation."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mapflow_tl.cli import main
from mapflow_tl.errors import InputError
from mapflow_tl.runs import RunFolderError, RunWriter, merge_shards, read_table

CONFIG = {"command": "flow", "model": "m", "window": 3}


def flow_args(model_dir, data_dir, out, *extra):
    return ["flow", "--model", str(model_dir), "--dataset", "tvbench", "--data-root",
            str(data_dir), "--out", str(out), "--mode", "all", "--window", "3", "--circuit",
            "cross-frame", "--limit", "1", *extra]


def flow_keys(out):
    return sorted((r["sample"], r["curve"], r["layer"]) for r in read_table(out, "flow"))


@pytest.fixture(scope="module")
def finished_run(model_and_data, tmp_path_factory):
    """A finished flow run over 2 samples (1 per task), one circuit: what the faults damage."""
    model_dir, data_dir = model_and_data
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(flow_args(model_dir, data_dir, out)) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


# ------------------------------------------------------------------------- the write policy
def test_overwrite_removes_only_the_files_the_run_wrote(tmp_path):
    """The user's own tables beside a run survive --overwrite; the run's own are gone."""
    writer = RunWriter(tmp_path, CONFIG)
    writer.write("flow", [{"sample": "a"}])
    writer.finish()
    user = {"notes.csv": "mine\n", "my_analysis.parquet": "PAR1 mine", "extra.jsonl": "{}\n"}
    for name, text in user.items():
        (tmp_path / name).write_text(text)
    RunWriter(tmp_path, {**CONFIG, "window": 5}, overwrite=True).finish()
    for name, text in user.items():
        assert (tmp_path / name).read_text() == text, name
    assert not any((tmp_path / f"flow.{ext}").exists() for ext in ("jsonl", "csv", "parquet"))
    manifest = json.loads((tmp_path / "run.json").read_text())["files"]
    assert not set(user) & set(manifest)


def test_a_resume_never_touches_a_users_jsonl_beside_the_run(tmp_path):
    """A resume drops damaged last lines of the run's tables only: a user's file with a
    half-written last line is left byte for byte."""
    RunWriter(tmp_path, CONFIG).write("flow", [{"sample": "a"}])
    (tmp_path / "scratch.jsonl").write_text('{"x": 1}\n{"unfinished')
    RunWriter(tmp_path, CONFIG, resume=True).close()
    assert (tmp_path / "scratch.jsonl").read_text() == '{"x": 1}\n{"unfinished'


@pytest.mark.parametrize("name", ["flow.jsonl", "run.json", "samples.jsonl", "notes.html"])
def test_report_output_never_replaces_a_runs_table_or_a_users_file(run_copy, capsys, name):
    (run_copy / "notes.html").write_text("<html>my notes</html>")
    before = {path.name: path.read_bytes() for path in run_copy.iterdir() if path.is_file()}
    assert main(["report", str(run_copy), "--output", str(run_copy / name)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0]
    after = {path.name: path.read_bytes() for path in run_copy.iterdir() if path.is_file()}
    assert after == before


def test_report_rewrites_its_own_file_and_is_in_the_manifest(run_copy, tmp_path):
    target = tmp_path / "elsewhere.html"
    assert main(["report", str(run_copy), "--output", str(target)]) == 0
    assert main(["report", str(run_copy), "--output", str(target)]) == 0   # its own: replaced
    assert main(["report", str(run_copy)]) == 0
    from mapflow_tl import outputs

    assert "report.html" in json.loads((run_copy / "run.json").read_text())["files"]
    assert outputs.is_report(run_copy / "report.html") and outputs.is_report(target)


def test_generate_refuses_a_benchmark_folder_it_did_not_write(tmp_path, capsys):
    """`synthtv generate --out` into a TVBench download would replace its
    json/action_sequence.json: refused, nothing written; its own folder may be regenerated."""
    tvbench = tmp_path / "TVBench"
    (tvbench / "json").mkdir(parents=True)
    (tvbench / "json" / "action_sequence.json").write_text('[{"question": "real"}]')
    generate = ["synthtv", "generate", "--per-task", "1", "--tasks", "action_sequence",
                "--no-videos"]
    assert main(generate + ["--out", str(tvbench)]) == 2
    assert "TVBench" in capsys.readouterr().err
    assert (tvbench / "json" / "action_sequence.json").read_text() == '[{"question": "real"}]'
    assert sorted(p.name for p in tvbench.rglob("*")) == ["action_sequence.json", "json"]
    ours = tmp_path / "synth"
    assert main(generate + ["--out", str(ours)]) == 0
    assert main(generate + ["--out", str(ours), "--seed", "1"]) == 0
    marker = json.loads((ours / "synthtv.json").read_text())
    assert "json/action_sequence.json" in marker["files"]


# ------------------------------------------------------------------- resume checks the rows
def _drop_rows(out, table, keep):
    rows = read_table(out, table)
    (out / f"{table}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if keep(r)))


def test_resume_recomputes_rows_deleted_by_hand(model_and_data, finished_run, run_copy, capsys):
    """Three rows of one sample deleted by hand: --resume computes that sample again, to the
    same rows as the untouched run, and leaves the other sample's rows alone."""
    model_dir, data_dir = model_and_data
    expected = read_table(finished_run, "flow")
    victim = expected[0]["sample"]
    gone = {json.dumps(r) for r in [r for r in expected if r["sample"] == victim][:3]}
    _drop_rows(run_copy, "flow", lambda r: json.dumps(r) not in gone)
    assert len(read_table(run_copy, "flow")) == len(expected) - 3
    assert main(flow_args(model_dir, data_dir, run_copy, "--resume")) == 0
    assert "computing them again" in capsys.readouterr().err
    assert flow_keys(run_copy) == flow_keys(finished_run)
    by_key = {(r["sample"], r["curve"], r["layer"]): r for r in read_table(run_copy, "flow")}
    for row in expected:
        assert by_key[(row["sample"], row["curve"], row["layer"])]["p_pred"] == \
            pytest.approx(row["p_pred"], abs=1e-6)
    assert sorted(r["sample"] for r in read_table(run_copy, "samples")) == \
        sorted(r["sample"] for r in read_table(finished_run, "samples"))


def test_resume_recomputes_a_table_replaced_whole(model_and_data, finished_run, run_copy):
    """flow.jsonl replaced by something that is not a table (an HTML page, as
    `report --output run/flow.jsonl` once did): every sample is computed again."""
    model_dir, data_dir = model_and_data
    (run_copy / "flow.jsonl").write_text("<!DOCTYPE html>\n<html>not rows</html>\n")
    assert main(flow_args(model_dir, data_dir, run_copy, "--resume")) == 0
    assert flow_keys(run_copy) == flow_keys(finished_run)
    assert len(read_table(run_copy, "samples")) == len(read_table(finished_run, "samples"))


def test_markers_record_the_rows_per_sample_and_circuit(finished_run):
    flow = read_table(finished_run, "flow")
    for marker in read_table(finished_run, "samples"):
        counts = json.loads(marker["row_counts"])
        assert counts == {"flow/cross-frame": sum(r["sample"] == marker["sample"] for r in flow)}


def test_a_video_replaced_before_the_resume_is_refused(model_and_data, tmp_path, capsys):
    model_dir, data_dir = model_and_data
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    out = tmp_path / "run"
    assert main(flow_args(model_dir, data, out)) == 0
    videos = sorted((data / "video").rglob("*.mp4"))
    first = json.loads(next((data / "json").glob("*.json")).read_text())[0]["video"]
    replaced = next(v for v in videos if v.name == Path(first).name)
    other = next(v for v in videos if v.stat().st_size != replaced.stat().st_size)
    shutil.copyfile(other, replaced)   # same name and place, other content
    capsys.readouterr()
    assert main(flow_args(model_dir, data, out, "--resume")) == 2
    assert "dataset_content" in capsys.readouterr().err


# ------------------------------------------------------------------------- circuit files
EXITING = 'NAME = "exits"\nDESCRIPTION = "calls sys.exit"\nimport sys\nsys.exit(0)\n'
RAISING = ('from mapflow_tl import edges as E\nNAME = "raises"\nDESCRIPTION = "raises"\n'
           'def curves(seg, n_layers):\n    raise RuntimeError("broken circuit")\n')
MISSING = ('NAME = "missing"\nDESCRIPTION = "names a segment the prompt lacks"\n'
           'def curves(seg, n_layers):\n    return {"x": seg.subtitles}\n')
EXIT_IN_CURVES = ('import sys\nNAME = "exits-late"\nDESCRIPTION = "exits when built"\n'
                  'def curves(seg, n_layers):\n    sys.exit(0)\n')


@pytest.mark.parametrize("text, line", [(EXITING, 4), (RAISING, 5), (MISSING, 4),
                                        (EXIT_IN_CURVES, 5)])
def test_a_hostile_circuit_is_one_line_before_anything_is_written(model_and_data, tmp_path,
                                                                  capsys, text, line):
    model_dir, data_dir = model_and_data
    circuit = tmp_path / "mine.py"
    circuit.write_text(text)
    out = tmp_path / "run"
    args = flow_args(model_dir, data_dir, out)
    args[args.index("cross-frame")] = str(circuit)
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    err = [line for line in lines if not line.startswith("flow: loading model ")]
    assert len(err) == 1 and f"{circuit} failed to run" in err[0], lines
    # an import error comes before the model loads; a build error after its loading line
    assert lines[:-1] in ([], [line for line in lines if line.startswith("flow: loading model ")])
    assert len(lines) <= 2, lines   # no bar, no traceback
    assert f"(line {line})" in err[0], err
    assert not out.exists()


def test_circuits_listing_survives_a_file_that_exits(tmp_path, capsys):
    (tmp_path / "exits.py").write_text(EXITING)
    assert main(["circuits", "--dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "cross-frame" in captured.out
    assert "exits.py failed to run: it called sys.exit(0) (line 4)" in captured.err


# ------------------------------------------------------------------ late failures, early
@pytest.mark.parametrize("extra, message", [
    (["--device", "meta"], "--device meta"),
])
def test_an_unusable_device_leaves_no_folder(model_and_data, tmp_path, capsys, extra, message):
    model_dir, data_dir = model_and_data
    out = tmp_path / "run"
    assert main(flow_args(model_dir, data_dir, out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert main(flow_args(model_dir, data_dir, out)) == 0   # the corrected command runs


def test_a_missing_compare_model_leaves_no_folder(model_and_data, tmp_path, capsys):
    model_dir, data_dir = model_and_data
    out = tmp_path / "run"
    base = ["crossframe", "--model", str(model_dir), "--dataset", "tvbench", "--data-root",
            str(data_dir), "--out", str(out), "--limit", "1"]
    assert main(base + ["--compare-model", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not out.exists()
    assert main(base + ["--compare-model", str(model_dir)]) == 0


def test_a_bad_attention_query_leaves_no_folder(model_and_data, tmp_path, capsys):
    model_dir, data_dir = model_and_data
    out = tmp_path / "run"
    base = ["attention", "--model", str(model_dir), "--dataset", "tvbench", "--data-root",
            str(data_dir), "--out", str(out), "--limit", "1"]
    assert main(base + ["--query", "everywhere"]) == 2
    assert "query must be" in capsys.readouterr().err
    assert not out.exists()
    assert main(base + ["--query", "last"]) == 0


# ------------------------------------------------------------------ launcher variables
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "1"}, "MASTER_ADDR and MASTER_PORT are not set"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}, "MASTER_PORT is not set"),
])
def test_stale_launcher_variables_are_one_line(monkeypatch, env, message):
    from mapflow_tl.distributed import world

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match=message):
        world()


@pytest.mark.parametrize("rank", [0, 1])
def test_a_rank_without_peers_stops_after_the_join_timeout(model_and_data, tmp_path, rank):
    """WORLD_SIZE=2 with a loopback MASTER_ADDR and no other rank: a one-line error after
    MAPFLOW_JOIN_TIMEOUT seconds, nothing written (the old code waited for ever)."""
    model_dir, data_dir = model_and_data
    out = tmp_path / "run"
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "MAPFLOW_JOIN_TIMEOUT": "2", "OMP_NUM_THREADS": "1"}
    env.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "mapflow_tl.cli",
                             *flow_args(model_dir, data_dir, out)],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert time.time() - start < 90
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mapflow-tl flow: error: rank ") and "did not join" in last
    assert "MAPFLOW_JOIN_TIMEOUT" in last and "Traceback" not in result.stderr
    assert not out.exists()


# ------------------------------------------------------------------------------- merging
def _shard(out, rank, samples, *, world_size):
    writer = RunWriter(out / "shards" / f"rank-{rank:03d}", {**CONFIG, "world_size": world_size})
    for sample in samples:
        writer.write("flow", [{"sample": sample, "layer": layer} for layer in range(2)])
        writer.write("samples", [{"sample": sample}])
    writer.finish()


def test_merge_orders_rows_by_sample_and_never_duplicates(tmp_path):
    """Samples s0..s8 dealt round-robin to 3 ranks (3 each): the merge lists them s0..s8,
    whatever the rank order; a stale shard of a 4th rank and a sample also present in a later
    shard add nothing."""
    order = [f"s{i}" for i in range(9)]
    for rank in range(3):
        _shard(tmp_path, rank, order[rank::3] + (["s0"] if rank == 2 else []), world_size=3)
    _shard(tmp_path, 3, ["s3", "s7"], world_size=4)   # left by a run over 4 ranks
    merge_shards(tmp_path, order, 3)
    assert [r["sample"] for r in read_table(tmp_path, "samples")] == order
    assert [(r["sample"], r["layer"]) for r in read_table(tmp_path, "flow")] == \
        [(s, layer) for s in order for layer in range(2)]


def test_resume_over_another_number_of_ranks_is_refused_by_every_rank(tmp_path):
    """A 2-rank run's folder: a resume as 3 ranks is refused on the top folder — also for rank
    2, whose shard does not exist yet — before anything is written."""
    from mapflow_tl.runs import check_run_folder

    _shard(tmp_path, 0, ["a"], world_size=2)
    _shard(tmp_path, 1, ["b"], world_size=2)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(RunFolderError, match="world_size: 2 then, 3 now"):
        check_run_folder(tmp_path, {**CONFIG, "world_size": 3}, resume=True, overwrite=False)
    check_run_folder(tmp_path, {**CONFIG, "world_size": 2}, resume=True, overwrite=False)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("command, table, extra", [
    ("attention", "attention", ["--query", "last"]),
    ("prune", "prune", ["--random-seeds", "0"]),
])
def test_attention_and_prune_resumes_recompute_deleted_rows(model_and_data, tmp_path, command,
                                                            table, extra):
    model_dir, data_dir = model_and_data
    out = tmp_path / "run"
    argv = [command, "--model", str(model_dir), "--dataset", "tvbench", "--data-root",
            str(data_dir), "--out", str(out), "--limit", "1", *extra]
    assert main(argv) == 0
    complete = read_table(out, table)
    victim = complete[-1]["sample"]
    kept = json.dumps(next(r for r in complete if r["sample"] == victim))   # one row stays
    _drop_rows(out, table, lambda r: r["sample"] != victim or json.dumps(r) == kept)
    assert victim in {r["sample"] for r in read_table(out, table)}
    assert len(read_table(out, table)) < len(complete)
    assert main(argv + ["--resume"]) == 0
    again = read_table(out, table)
    assert sorted(json.dumps(r, sort_keys=True) for r in again) == \
        sorted(json.dumps(r, sort_keys=True) for r in complete)


def test_a_run_from_before_manifests_keeps_its_tables_owned(tmp_path):
    """run.json without "files" (an older run): a report written into it must not shrink what
    --overwrite replaces to the report, or the old flow.jsonl would stay and mix with new rows."""
    (tmp_path / "run.json").write_text(json.dumps(CONFIG))
    (tmp_path / "flow.jsonl").write_text('{"sample": "old"}\n')
    (tmp_path / "notes.csv").write_text("mine\n")
    from mapflow_tl import outputs

    outputs.record(tmp_path, "run", ["report.html"])
    assert json.loads((tmp_path / "run.json").read_text())["files"] == [
        "flow.jsonl", "report.html", "run.json"]
    writer = RunWriter(tmp_path, CONFIG, overwrite=True)
    writer.write("flow", [{"sample": "new"}])
    writer.close()
    assert [r["sample"] for r in read_table(tmp_path, "flow")] == ["new"]
    assert (tmp_path / "notes.csv").read_text() == "mine\n"


def test_overwrite_of_a_multi_rank_run_clears_only_what_its_manifests_list(tmp_path):
    """--overwrite as 2 ranks over a run once split over 3: rank 0 removes the merged tables and
    the third rank's shard files, and leaves a file of the user's in that shard."""
    from mapflow_tl.cli.run import _clear_for_overwrite

    for rank in range(3):
        _shard(tmp_path, rank, [f"s{rank}"], world_size=3)
    merged = RunWriter(tmp_path, {**CONFIG, "world_size": 3}, resume=True)
    merge_shards(tmp_path, ["s0", "s1", "s2"], 3)
    merged.close()
    (tmp_path / "shards" / "rank-002" / "mine.txt").write_text("keep")
    (tmp_path / "notes.csv").write_text("keep")
    _clear_for_overwrite(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.csv", "shards"]
    assert sorted(p.name for p in (tmp_path / "shards" / "rank-002").iterdir()) == ["mine.txt"]
    assert (tmp_path / "shards" / "rank-000" / "flow.jsonl").is_file()   # its rank replaces it


def test_train_refuses_a_folder_that_is_not_a_checkpoint_before_training(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("mine")
    assert main(["synthtv", "train", "--stage", "image", "--steps", "1", "--no-knockout",
                 "--out", str(tmp_path)]) == 2
    assert "thesis.tex" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thesis.tex"]
