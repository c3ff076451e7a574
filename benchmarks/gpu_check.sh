#!/usr/bin/env bash
# The GPU figures of issue 26 in one prepared run (a session with a lent GPU: about 8 minutes on
# an H200, inside one 10-minute command). Writes one JSON line per benchmark into $OUT (or the
# folder given as $1) and a log; each step has its own time limit, so that one that hangs
# leaves the others' results.
#
#   bash benchmarks/gpu_check.sh /tmp/gpu-results
#
# Steps: the knockout sweep at 7B width (d_model 4096, 32 layers, 1257 positions, 352
# configurations) in bfloat16 and float32 against HF SDPA and eager with 4D masks (peers on every
# 32nd configuration); the planner's cost model fitted on the GPU in bfloat16; several samples
# swept together at 7B width in bfloat16.
set -u
out="${1:-${OUT:-benchmarks/results/gpu}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s)" | tee -a "$out/log"
    timeout "$limit" "$@" >"$out/$name.json" 2>>"$out/log"
    echo "   exit $?" | tee -a "$out/log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >>"$out/log" 2>&1
step h200_paper_d4096_bfloat16 180 $python benchmarks/knockout_sweep.py --device cuda \
    --d-model 4096 --dtype bfloat16 --scale paper --rounds 2 --stride 32 --no-float64
step h200_paper_d4096_float32 180 $python benchmarks/knockout_sweep.py --device cuda \
    --d-model 4096 --dtype float32 --scale paper --rounds 2 --stride 32 --no-float64
step h200_cost_model_bfloat16 60 $python benchmarks/fit_cost_model.py --device cuda \
    --d-model 4096 --dtype bfloat16
step h200_samples_d4096_bfloat16 120 $python benchmarks/sample_batching.py --device cuda \
    --d-model 4096 --dtype bfloat16 --scale paper --samples 4 --rounds 2 --stride 32
