"""The built wheel works on its own: built from this tree, installed into a fresh virtualenv that
cannot see the source tree (nor decord, as on ARM), it lists the built-in circuits and runs a
one-sample SynthTV flow.

The new virtualenv borrows the dependencies (torch, TransformerLens, …) from the environment
running the tests through a .pth file, so nothing is downloaded; mapflow_tl itself must come from
the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.wheel  # about 30 s: `pytest -m "not wheel"` leaves it out while iterating

REPO = Path(__file__).resolve().parents[1]
TOP_LEVEL_FILES = ("pyproject.toml", "setup.py", "README.md", "LICENSE")
# what the build reads; build outputs and caches left in the tree stay out
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 180):
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, (f"{' '.join(map(str, command))} exited "
                                    f"{result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """Build the wheel from a copy of this tree and install it into a new virtualenv."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in TOP_LEVEL_FILES:
        shutil.copy2(REPO / name, source / name)
    for folder in ("mapflow_tl", "circuits"):
        shutil.copytree(REPO / folder, source / folder, ignore=IGNORE)
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "MAPFLOW_CIRCUITS", "PYTHONHOME")}
    env["MAPFLOW_CACHE"] = str(root / "cache")
    env["OMP_NUM_THREADS"] = "1"
    # no build isolation: setuptools and wheel come from this environment, nothing is downloaded
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(root / "dist"), str(source)], root, env)
    (wheel,) = (root / "dist").glob("mapflow_tl-*.whl")

    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], root, env)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    # pip from this environment installs into the new one
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)], root, env)
    site_packages = Path(run([str(python), "-c", "import sysconfig; "
                              "print(sysconfig.get_paths()['purelib'])"], root, env).stdout.strip())
    # dependencies: this environment's site-packages, after the new venv's own (a .pth line adds
    # the folder to the end of sys.path and does not run the .pth files in it, so this
    # environment's editable mapflow_tl finder stays out)
    here = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site_packages / "zz_test_dependencies.pth").write_text("\n".join(sorted(here)) + "\n")
    # and as on ARM Linux or an Apple-silicon Mac, where decord does not install: the flow run
    # reads its videos with PyAV (import decord fails, find_spec("decord") is None)
    (site_packages / "zz_test_no_decord.pth").write_text(
        "import sys; sys.modules['decord'] = None\n")
    work = root / "work"  # cwd: not the source tree
    work.mkdir()
    scripts = python.parent
    return {"wheel": wheel, "venv": venv, "python": python, "site": site_packages,
            "cli": scripts / ("mapflow-tl.exe" if os.name == "nt" else "mapflow-tl"),
            "work": work, "env": env}  # type: ignore[dict-item]


def test_wheel_contents(installed):
    with zipfile.ZipFile(installed["wheel"]) as wheel:
        names = set(wheel.namelist())
        metadata = next(wheel.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    packaged = {n for n in names if n.startswith("mapflow_tl/")}
    sources = {str(p.relative_to(REPO)).replace(os.sep, "/")
               for p in (REPO / "mapflow_tl").rglob("*.py") if "__pycache__" not in p.parts}
    assert sources <= packaged, f"missing from the wheel: {sorted(sources - packaged)}"
    circuits = {f"mapflow_tl/builtin_circuits/{p.name}" for p in (REPO / "circuits").glob("*.py")}
    assert circuits <= packaged, f"missing from the wheel: {sorted(circuits - packaged)}"
    assert not any(n.startswith("circuits/") for n in names), "a top-level circuits package"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in metadata
    assert ('Requires-Dist: decord; (sys_platform == "linux" and platform_machine == "x86_64") or '
            '(sys_platform == "win32" and platform_machine == "AMD64")') in metadata


def test_installed_wheel_lists_circuits_and_runs_a_flow(installed):
    env, work = installed["env"], installed["work"]
    where = run([str(installed["python"]), "-c",
                 "import importlib.resources, mapflow_tl; print(mapflow_tl.__file__); "
                 "print(importlib.resources.files('mapflow_tl.builtin_circuits')); "
                 "from mapflow_tl.data.video import resolve_reader; print(resolve_reader())"],
                work, env).stdout.split()
    package, circuits_dir = Path(where[0]), Path(where[1])
    assert installed["site"] in package.parents, f"mapflow_tl imported from {package}"
    assert circuits_dir == installed["site"] / "mapflow_tl" / "builtin_circuits"
    assert where[2] == "pyav"

    listed = run([str(installed["cli"]), "circuits"], work, env).stdout
    names = {line.split()[0] for line in listed.splitlines() if line.strip()}
    assert {"cross-frame", "vql-to-ql", "pathway-synthtv"} <= names
    assert len(names) == len([p for p in (REPO / "circuits").glob("*.py")
                              if not p.name.startswith("_")])

    out = work / "flow"
    run([str(installed["cli"]), "flow", "--model", "synthtv-video-ft", "--dataset", "synthtv",
         "--task", "action_sequence", "--limit", "1", "--window", "3", "--mode", "all",
         "--circuit", "cross-frame", "--out", str(out)], work, env, timeout=300)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (out / "flow.jsonl").read_text().splitlines()]
    assert len(samples) == 1 and samples[0]["selected"]
    # one row per window centre of the 8-layer model, for the one curve of cross-frame
    assert len(rows) == 8 and {row["circuit"] for row in rows} == {"cross-frame"}
