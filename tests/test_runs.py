"""Crash-safe, resumable runs: SIGKILL and SIGINT partway, resume, compare with an uninterrupted
run — identical rows, none duplicated, none missing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mapflow_tl.runs import RunWriter, check_interrupt, read_table, sticky_interrupts



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
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
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
    with pytest.raises(ValueError, match="flow.jsonl: line 2 is not valid JSON"):
        read_table(tmp_path, "flow")
