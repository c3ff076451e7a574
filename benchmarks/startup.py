"""Start-up time of the command line against ``python -c "import torch"``, measured as the issue
asks: interleaved pairs in one run, the median of each, and their ratio. Prints one JSON line.

    .venv/bin/python benchmarks/startup.py --pairs 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = {
    "mapflow-tl --help": [str(Path(sys.executable).parent / "mapflow-tl"), "--help"],
    "mapflow-tl circuits": [str(Path(sys.executable).parent / "mapflow-tl"), "circuits"],
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
}


def _time(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7, help="interleaved rounds (default 7)")
    args = parser.parse_args()
    for command in COMMANDS.values():      # warm the file cache once, untimed
        _time(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.pairs):
        for name, command in COMMANDS.items():
            times[name].append(_time(command))
    medians = {name: statistics.median(values) for name, values in times.items()}
    torch_median = medians['python -c "import torch"']
    print(json.dumps({"pairs": args.pairs, "median_seconds": medians,
                      "ratio_to_import_torch": {name: medians[name] / torch_median
                                                for name in COMMANDS}}))


if __name__ == "__main__":
    main()
