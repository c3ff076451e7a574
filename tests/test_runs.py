"""Crash-safe, resumable runs: SIGKILL and SIGINT partway, resume, compare with an uninterrupted
run — identical rows, none duplicated, none missing."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mapflow_tl import runs
from mapflow_tl.runs import (RunFolderError, RunWriter, check_interrupt, circuit_fingerprint,
                             read_table, skipped_at_load, skipped_at_prepare, sticky_interrupts)


@pytest.fixture(autouse=True)
def default_sigint():
    """Ctrl-C handling is tested as a terminal delivers it. A suite started in the background
    (``make test &``, nohup) inherits SIGINT *ignored*, which Python then keeps, so put Python's
    default handler back for these tests (and give it to the runs they start, below)."""
    previous = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _sigint_default() -> None:   # in the child, before exec: Python installs its handler again
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def flow_command(model_dir, data_dir, out, *extra):
    return [sys.executable, "-m", "mapflow_tl.cli", "flow", "--model", str(model_dir),
            "--dataset", "tvbench", "--data-root", str(data_dir), "--out", str(out),
            "--mode", "all", "--window", "3", "--circuit", "cross-frame", "--circuit",
            "vql-to-ql", *extra]


def run(command, **kwargs):
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kwargs)


def start_and_interrupt(command, out: Path, sig: int, after_samples: int):
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               preexec_fn=_sigint_default)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if len(read_table(out, "samples")) >= after_samples:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be interrupted"
    process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def rows_by_key(out):
    rows = read_table(out, "flow")
    keys = [(r["sample"], r["circuit"], r["curve"], r["layer"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicated rows"
    return dict(zip(keys, rows))


@pytest.fixture(scope="module")
def uninterrupted(model_and_data, tmp_path_factory):
    model_dir, data_dir = model_and_data
    out = tmp_path_factory.mktemp("full") / "run"
    result = run(flow_command(model_dir, data_dir, out))
    assert result.returncode == 0, result.stderr[-3000:]
    return rows_by_key(out)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_run_resumes_to_identical_rows(model_and_data, uninterrupted, tmp_path, sig):
    model_dir, data_dir = model_and_data
    out = tmp_path / "run"
    command = flow_command(model_dir, data_dir, out)
    code, stderr = start_and_interrupt(command, out, sig, after_samples=3)
    if sig == signal.SIGINT:
        assert code == 130, stderr[-2000:]
        assert "interrupted" in stderr and "--resume" in stderr
    else:
        assert code == -signal.SIGKILL
    partial = read_table(out, "samples")
    assert 3 <= len(partial) < 12
    refused = run(command)
    assert refused.returncode == 2 and "pass --resume" in refused.stderr
    resumed = run(command + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = rows_by_key(out)
    assert rows.keys() == uninterrupted.keys()
    assert rows == uninterrupted  # floats equal to the last bit on CPU
    assert len(read_table(out, "samples")) == 12


def test_sample_batch_changes_how_not_what(model_and_data, uninterrupted, tmp_path):
    """--sample-batch 1 (one sample per sweep) gives the default run's rows up to rounding, and
    is not part of the run's identity: a resume may change it."""
    model_dir, data_dir = model_and_data
    out = tmp_path / "run"
    command = flow_command(model_dir, data_dir, out, "--limit", "2")  # 2 samples per task
    result = run(command + ["--sample-batch", "1"])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = rows_by_key(out)
    assert len({key[0] for key in rows}) > 2 and rows.keys() <= uninterrupted.keys()
    for key, row in rows.items():
        expected = uninterrupted[key]
        assert row["token"] == expected["token"] and row["correct"] == expected["correct"]
        assert row["p_pred"] == pytest.approx(expected["p_pred"], abs=1e-5)
    resumed = run(command + ["--sample-batch", "3", "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert rows_by_key(out) == rows


class _InterruptedFinaliser:
    """Receives SIGINT inside ``__del__``, as decord's VideoReader does when Ctrl-C lands while it
    is freed: Python prints "Exception ignored in ..." and drops the KeyboardInterrupt."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the handler runs here, inside the finaliser


def test_interrupt_swallowed_by_a_finaliser_still_stops_the_run(monkeypatch):
    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda hook: swallowed.append(hook.exc_type))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    _InterruptedFinaliser()  # without the guard the interrupt is simply lost
    assert swallowed == [KeyboardInterrupt]
    check_interrupt()
    with sticky_interrupts():
        _InterruptedFinaliser()
        assert swallowed == [KeyboardInterrupt] * 2  # swallowed by Python ...
        with pytest.raises(KeyboardInterrupt):
            check_interrupt()  # ... and raised again at the next sample boundary
    check_interrupt()  # forgotten once the run is over
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_resume_with_another_configuration_is_refused(tmp_path):
    config = {"command": "flow", "model": "a", "circuit": ["cross-frame"], "window": 9,
              "dataset": "synthtv", "seed": 0}
    RunWriter(tmp_path, config).write("flow", [{"sample": "1"}])
    with pytest.raises(ValueError, match="window: 9 then, 5 now.*seed: 0 then, 1 now"):
        RunWriter(tmp_path, {**config, "window": 5, "seed": 1}, resume=True)
    with pytest.raises(ValueError, match="model: 'a' then, 'b' now"):
        RunWriter(tmp_path, {**config, "model": "b"}, resume=True)
    with pytest.raises(ValueError, match="already holds a run; pass --resume"):
        RunWriter(tmp_path, config)
    RunWriter(tmp_path, config, resume=True)  # same configuration: fine


def test_half_written_row_is_dropped_on_resume(tmp_path):
    config = {"command": "flow", "model": "a"}
    writer = RunWriter(tmp_path, config)
    writer.write("flow", [{"sample": "1", "value": 1.5}, {"sample": "2", "value": 2.5}])
    with open(tmp_path / "flow.jsonl", "a") as handle:
        handle.write('{"sample": "3", "val')  # a crash mid-write
    assert [r["sample"] for r in read_table(tmp_path, "flow")] == ["1", "2"]
    writer = RunWriter(tmp_path, config, resume=True)
    writer.write("flow", [{"sample": "3", "value": 3.5}])
    assert [r["sample"] for r in read_table(tmp_path, "flow")] == ["1", "2", "3"]
    writer.retain("flow", "sample", {RunWriter.key({"sample": "1"}, "sample")})
    assert [r["sample"] for r in read_table(tmp_path, "flow")] == ["1"]


def test_corrupt_row_in_the_middle_is_an_error_naming_the_line(tmp_path):
    (tmp_path / "flow.jsonl").write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(RunFolderError, match="flow.jsonl: line 2 is not a JSON object row"):
        read_table(tmp_path, "flow")
    (tmp_path / "flow.jsonl").write_text('{"a": 1}\n[1, 2]\n{"a": 2}\n')
    with pytest.raises(RunFolderError, match="flow.jsonl: line 2 is not a JSON object row"):
        read_table(tmp_path, "flow")


# ------------------------------------------------------------------ issue 24: faults injected
CONFIG = {"command": "flow", "model": "m", "dataset": "tvbench", "circuit": ["cross-frame"],
          "window": 9, "seed": 0, "dtype": "float32"}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("resume", [False, True])
def test_foreign_folder_is_refused_and_left_untouched(tmp_path, resume):
    """The user's own flow.jsonl and CSVs in --out (no run.json): refused by name, and not one
    byte in the folder changes (today's data loss: rows rewritten, CSVs overwritten)."""
    (tmp_path / "flow.jsonl").write_text('{"mine": 1}\n')
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    before = snapshot(tmp_path)
    with pytest.raises(RunFolderError, match=rf"{tmp_path} is not empty and is not a mapflow-tl "
                       r"run \(no run.json; it holds flow.jsonl, results.csv\); nothing in it "
                       r"was changed"):
        RunWriter(tmp_path, CONFIG, resume=resume)
    assert snapshot(tmp_path) == before


def test_empty_and_own_folders_are_accepted(tmp_path):
    (tmp_path / "empty").mkdir()
    RunWriter(tmp_path / "empty", CONFIG).finish()
    RunWriter(tmp_path / "new" / "nested", CONFIG).finish()
    # a folder holding only per-rank shards of a run not merged yet is ours, and is that run
    RunWriter(tmp_path / "dist" / "shards" / "rank-000", {**CONFIG, "world_size": 2}).finish()
    with pytest.raises(RunFolderError, match="already holds a run; pass --resume"):
        RunWriter(tmp_path / "dist", {**CONFIG, "world_size": 2})
    with pytest.raises(RunFolderError, match="world_size: 2 then, 1 now"):
        RunWriter(tmp_path / "dist", {**CONFIG, "world_size": 1}, resume=True)
    RunWriter(tmp_path / "dist", {**CONFIG, "world_size": 2}, resume=True).finish()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        RunWriter(tmp_path / "file", CONFIG)


HOLDER = """
import sys, time
from mapflow_tl.runs import RunWriter
writer = RunWriter(sys.argv[1], {"command": "flow", "model": "m"}, resume=True)
writer.write("flow", [{"sample": "held"}])
print("locked", flush=True)
time.sleep(120)
"""


def hold_lock(folder: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)],
                               stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_second_process_is_refused_with_the_holders_pid(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        for resume in (True, False):
            with pytest.raises(RunFolderError, match=rf"{tmp_path} is in use by another run: "
                               rf"process {holder.pid} on .* holds .*run.lock; wait for it"):
                RunWriter(tmp_path, {"command": "flow", "model": "m"}, resume=resume)
    finally:
        holder.kill()
        holder.wait()
    # killed with SIGKILL: the kernel dropped its lock; the stale lock file is taken over
    assert (tmp_path / "run.lock").is_file()
    with RunWriter(tmp_path, {"command": "flow", "model": "m"}, resume=True) as writer:
        writer.write("flow", [{"sample": "mine"}])
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "run.lock").exists()  # released and removed on exit
    assert [r["sample"] for r in read_table(tmp_path, "flow")] == ["held", "mine"]


def test_lock_is_released_on_exceptions_and_shared_within_a_process(tmp_path):
    def failing_run():
        writer = RunWriter(tmp_path, {"command": "flow", "model": "m"})
        writer.write("flow", [{"sample": "1"}])
        raise RuntimeError("a bug mid-run")

    with pytest.raises(RuntimeError):
        failing_run()
    other = subprocess.run([sys.executable, "-c", HOLDER.replace("time.sleep(120)", ""),
                            str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert other.returncode == 0, other.stderr[-2000:]
    # two writers of one process (the lens command's keyword table) share the lock
    first = RunWriter(tmp_path, {"command": "flow", "model": "m"}, resume=True)
    second = RunWriter(tmp_path, {"command": "flow", "model": "m"}, resume=True)
    first.finish()
    holder_check = [sys.executable, "-c", "import sys; from mapflow_tl.runs import RunWriter; "
                    "RunWriter(sys.argv[1], {'command': 'flow', 'model': 'm'}, resume=True)",
                    str(tmp_path)]
    refused = subprocess.run(holder_check, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and f"process {os.getpid()}" in refused.stderr
    second.close()
    assert subprocess.run(holder_check, capture_output=True, timeout=60).returncode == 0


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("holder, refused", [
    ("dead", None), ("live", "process {pid} on {host}"),
    ("other-host", r"process 1 on elsewhere .*if that process is gone, delete .*run.lock")])
def test_without_kernel_locks_stale_holders_are_found_by_pid_and_host(
        tmp_path, monkeypatch, holder, refused):
    """Filesystems without flock: the lock file's pid and host decide."""
    import socket

    monkeypatch.setattr(runs, "fcntl", None)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid = {"dead": dead_pid(), "live": sleeper.pid, "other-host": 1}[holder]
        host = "elsewhere" if holder == "other-host" else socket.gethostname()
        (tmp_path / "run.lock").write_text(json.dumps({"pid": pid, "host": host}))
        if refused is None:
            RunWriter(tmp_path, CONFIG).finish()
            assert not (tmp_path / "run.lock").exists()
        else:
            with pytest.raises(RunFolderError, match=refused.format(pid=pid, host=host)):
                RunWriter(tmp_path, CONFIG)
            assert json.loads((tmp_path / "run.lock").read_text())["pid"] == pid
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize("key, then, now", [
    ("world_size", 2, 3),
    ("definitions", {"relative_change": "paper"}, {"relative_change": "reference"}),
])
def test_resume_identity_covers_ranks_and_definitions(tmp_path, key, then, now):
    RunWriter(tmp_path, {**CONFIG, key: then}).write("flow", [{"sample": "1"}])
    with pytest.raises(RunFolderError, match=rf"{key}: .* then, .* now"):
        RunWriter(tmp_path, {**CONFIG, key: now}, resume=True)
    RunWriter(tmp_path, {**CONFIG, key: then}, resume=True).finish()


def test_resume_identity_covers_the_circuit_file_content(tmp_path):
    """A user's file shadowing a built-in name: same name, other content, refused."""
    builtin, shadow = tmp_path / "a" / "cross_frame.py", tmp_path / "b" / "cross_frame.py"
    builtin.parent.mkdir()
    shadow.parent.mkdir()
    builtin.write_text("NAME = 'cross-frame'\nEDGES = 448\n")
    shadow.write_text("NAME = 'cross-frame'\nEDGES = 32\n")
    crlf = tmp_path / "crlf.py"
    crlf.write_bytes(builtin.read_text().replace("\n", "\r\n").encode())
    assert circuit_fingerprint(builtin) == circuit_fingerprint(crlf) != circuit_fingerprint(shadow)

    class Loaded:  # what load_circuit returns: a Circuit with its file's path
        path = shadow

    assert circuit_fingerprint(Loaded()) == circuit_fingerprint(shadow)
    run = tmp_path / "run"
    RunWriter(run, {**CONFIG, "circuit_content": {"cross-frame": circuit_fingerprint(builtin)}})
    with pytest.raises(RunFolderError, match="circuit_content: {'cross-frame': '[0-9a-f]{16}'} "
                                             "then, {'cross-frame': '[0-9a-f]{16}'} now"):
        RunWriter(run, {**CONFIG, "circuit_content": {"cross-frame": circuit_fingerprint(shadow)}},
                  resume=True)
    with pytest.raises(ValueError, match="cannot read circuit file .*missing.py"):
        circuit_fingerprint(tmp_path / "missing.py")


@pytest.mark.parametrize("tail", [
    '{"sample": "3", "va\x00\x00\n',   # torn write, newline included
    "\x00\x00\x00\x00\n",               # zero-filled block
    "[1, 2]\n", "3\n", "null\n",        # valid JSON, not a row
    '{"sample": "3", "va',              # half a line (the case handled before)
    '[1]\n\n{"sample": "3"\n\n',         # several damaged lines and blanks at the end
])
def test_damaged_last_lines_are_dropped_and_later_resumes_work(tmp_path, tail):
    writer = RunWriter(tmp_path, CONFIG)
    writer.write("flow", [{"sample": "1"}, {"sample": "2"}])
    writer.close()
    with open(tmp_path / "flow.jsonl", "a") as handle:
        handle.write(tail)
    assert [r["sample"] for r in read_table(tmp_path, "flow")] == ["1", "2"]
    for extra in ("3", "4"):  # resume, add a row; resume again: nothing fails on the old tail
        writer = RunWriter(tmp_path, CONFIG, resume=True)
        assert writer.completed("flow", "sample") == {(json.dumps(str(i)),)
                                                      for i in range(1, int(extra))}
        writer.write("flow", [{"sample": extra}])
        writer.finish()
    assert [r["sample"] for r in read_table(tmp_path, "flow")] == ["1", "2", "3", "4"]
    assert (tmp_path / "flow.jsonl").read_text() == "".join(
        json.dumps({"sample": str(i)}) + "\n" for i in range(1, 5))


def test_empty_skipped_table_has_its_header(tmp_path):
    writer = RunWriter(tmp_path, CONFIG)
    writer.write("skipped", [])
    writer.finish()
    assert (tmp_path / "skipped.csv").read_text().splitlines() == [
        "sample,task,file,index,field,reason,stage"]


def test_skipped_rows_have_one_schema_with_the_entry():
    from mapflow_tl.data.loaders import Sample, Skipped
    from mapflow_tl.data.errors import DataError

    at_load = skipped_at_load(Skipped("/b/json/a.json", 3, "answer", "'z' is not one of",
                                      "Action Antonym"))
    sample = Sample(id="action_antonym/4", dataset="tvbench", task="Action Antonym",
                    video=Path("/b/video/x.mp4"), question="q", options=("a", "b"),
                    answer_index=0, entry=4)
    at_prepare = skipped_at_prepare(sample, DataError("/b/video/x.mp4: cannot decode",
                                                      path="/b/video/x.mp4"))
    assert list(at_load) == list(at_prepare) == list(runs.SKIPPED_COLUMNS)
    assert at_load == {"sample": None, "task": "Action Antonym", "file": "/b/json/a.json",
                       "index": 3, "field": "answer", "reason": "'z' is not one of",
                       "stage": "load"}
    assert at_prepare == {"sample": "action_antonym/4", "task": "Action Antonym",
                          "file": "/b/video/x.mp4", "index": 4, "field": None,
                          "reason": "/b/video/x.mp4: cannot decode", "stage": "prepare"}
    assert runs.describe_skipped(at_prepare) == ("/b/video/x.mp4 entry 4 (sample "
                                                 "action_antonym/4): /b/video/x.mp4: cannot decode")


def test_unwritable_or_full_folder_is_a_one_line_run_folder_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match=rf"cannot write the run folder {tmp_path}/file/run "
                                             r".*Not a directory"):
        RunWriter(tmp_path / "file" / "run", CONFIG)
    writer = RunWriter(tmp_path / "run", CONFIG)
    writer.write("flow", [{"sample": "1"}])

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(RunFolderError, match=r"cannot write the run folder .*: No space left on "
                                             r"device; free some space and continue with "
                                             r"--resume \(rows written so far are kept\)"):
        writer.write("flow", [{"sample": "2"}])
    monkeypatch.undo()
    writer.close()
    assert [r["sample"] for r in read_table(tmp_path / "run", "flow")][:1] == ["1"]


def test_overwrite_replaces_our_run_under_the_lock(tmp_path):
    writer = RunWriter(tmp_path, CONFIG)
    writer.write("flow", [{"sample": "old"}])
    writer.finish()
    (tmp_path / "flow.parquet").write_bytes(b"PAR1")  # the typed copy a finished run may have
    RunWriter(tmp_path, {**CONFIG, "window": 5}, overwrite=True).finish()
    assert not any((tmp_path / f"flow.{ext}").exists() for ext in ("jsonl", "csv", "parquet"))
    assert json.loads((tmp_path / "run.json").read_text())["window"] == 5


def test_resume_refuses_a_retrained_checkpoint_or_edited_annotations(model_and_data, tmp_path):
    """The same --model path with another config.json, or the same data root with an edited
    question, would mix rows of two models or two datasets under one run: refused by name."""
    import shutil

    model_dir, data_dir = model_and_data
    model, data = tmp_path / "model", tmp_path / "data"
    shutil.copytree(model_dir, model)
    shutil.copytree(data_dir, data)
    out = tmp_path / "run"
    command = flow_command(model, data, out, "--limit", "1")
    assert run(command).returncode == 0
    original = (model / "config.json").read_text()
    (model / "config.json").write_text(json.dumps({**json.loads(original), "note": "retrained"}))
    refused = run(command + ["--resume"])
    assert refused.returncode == 2 and "model_content" in refused.stderr
    (model / "config.json").write_text(original)
    assert run(command + ["--resume"]).returncode == 0      # the same checkpoint again
    annotation = next((data / "json").glob("*.json"))
    entries = json.loads(annotation.read_text())
    entries[0]["question"] = entries[0]["question"] + " really"
    annotation.write_text(json.dumps(entries))
    refused = run(command + ["--resume"])
    assert refused.returncode == 2 and "dataset_content" in refused.stderr
    assert "model_content" not in refused.stderr


def test_rows_with_nan_or_inf_are_refused_and_nothing_is_written(tmp_path):
    """JSON has no NaN: Python wrote the token NaN, which other readers reject (issue 36)."""
    from mapflow_tl.errors import NonFiniteError

    writer = RunWriter(tmp_path, {"command": "flow", "model": "a"})
    writer.write("flow", [{"sample": "1", "p_pred": 0.5}])
    before = (tmp_path / "flow.jsonl").read_text()
    with pytest.raises(NonFiniteError, match=r"table 'flow': the row of sample '2' holds NaN or "
                                             r"inf in \['p_pred', 'top_probs'\]"):
        writer.write("flow", [{"sample": "2", "p_pred": 0.1},
                              {"sample": "2", "p_pred": float("nan"),
                               "top_probs": [0.5, float("inf")], "token": 3}])
    assert (tmp_path / "flow.jsonl").read_text() == before  # not the first row of the two either
    assert all(json.loads(line) for line in before.splitlines())
