"""Data-parallel runs under torchrun: 2 CPU processes (gloo) give the rows of 1 process, up to the
float rounding that different batch shapes make (docs/scaling.md, the numerical contract)."""

import os
import socket
import subprocess
import sys

from mapflow_tl.runs import read_table
from mapflow_tl.testing import assert_rows_close


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def command(model_dir, data_dir, out):
    return ["-m", "mapflow_tl.cli", "flow", "--model", str(model_dir), "--dataset", "tvbench",
            "--data-root", str(data_dir), "--out", str(out), "--mode", "all", "--window", "3",
            "--circuit", "cross-frame"]


def test_two_gloo_processes_equal_one(model_and_data, tmp_path):
    model_dir, data_dir = model_and_data
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, *command(model_dir, data_dir, tmp_path / "one")],
                            capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    double = subprocess.run(launcher + command(model_dir, data_dir, tmp_path / "two"),
                            capture_output=True, text=True, timeout=300, env=env)
    assert double.returncode == 0, double.stderr[-3000:]
    for table in ("flow", "samples"):
        one, two = read_table(tmp_path / "one", table), read_table(tmp_path / "two", table)
        assert len(one) > 0, table
        # each rank batches its own samples together, so a sample's sums run in other shapes:
        # the same rows, answers and flags, probabilities within rounding
        assert_rows_close(two, one)
    shards = sorted(p.name for p in (tmp_path / "two" / "shards").iterdir())
    assert shards == ["rank-000", "rank-001"]
    per_rank = [len(read_table(tmp_path / "two" / "shards" / s, "samples")) for s in shards]
    assert per_rank == [6, 6]
    assert (tmp_path / "two" / "run.json").is_file()


def launch(nproc, argv, env):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    return subprocess.run(launcher + argv, capture_output=True, text=True, timeout=300, env=env)


def test_rank_change_is_refused_by_every_rank_and_merges_keep_sample_order(model_and_data,
                                                                           tmp_path):
    """2 ranks over 6 samples (3 each, dealt alternately), then a resume as 3 ranks — refused by
    every rank before anything is written, rank 2 included — then a resume as 2 ranks: exit 0,
    the rows of each sample once, in the dataset's sample order (not rank by rank)."""
    from mapflow_tl.data.datasets import load_dataset

    model_dir, data_dir = model_and_data
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    argv = command(model_dir, data_dir, out) + ["--limit", "3"]
    first = launch(2, argv, env)
    assert first.returncode == 0, first.stderr[-3000:]
    order = [s.id for s in load_dataset("tvbench", data_dir, None, 3)]
    assert len(order) == 6
    samples = read_table(out, "samples")
    assert [r["sample"] for r in samples] == order
    flow = read_table(out, "flow")
    positions = [order.index(r["sample"]) for r in flow]
    assert positions == sorted(positions) and set(positions) == set(range(6))
    tables = {name: (out / name).read_bytes() for name in ("flow.jsonl", "samples.jsonl")}

    refused = launch(3, argv + ["--resume"], env)
    assert refused.returncode != 0
    assert "world_size: 2 then, 3 now" in refused.stderr
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["rank-000", "rank-001"]
    assert {name: (out / name).read_bytes() for name in tables} == tables

    resumed = launch(2, argv + ["--resume"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "6/6 samples" in resumed.stdout
    keys = [(r["sample"], r["curve"], r["layer"]) for r in read_table(out, "flow")]
    assert len(keys) == len(set(keys)) == len(flow)
    assert [r["sample"] for r in read_table(out, "samples")] == order
