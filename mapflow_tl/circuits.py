"""Named circuits: the paper's experiments (and a user's own) as data.

A circuit is one Python file in a circuits folder (the repository's ``circuits/`` by default, plus
any folder or file the user names). It defines:

- ``NAME`` — the circuit's name (``cross-frame``, ``vql-to-ql``, …);
- ``DESCRIPTION`` — one line for ``mapflow-tl circuits``;
- either ``curves(seg, n_layers) -> {curve name: Edges}`` — an information-flow circuit: each curve
  is one edge set knocked out with a sliding layer window (Map the Flow §2);
- or ``pathway(seg, n_layers) -> PathwaySpec`` — an effective-pathway circuit (Finding 4): the
  edges kept open and blocked in every layer.

Circuits are built from a SegmentMap and the layer count only: no model-family branches, no layer
ranges keyed by a model-size string. A user's circuit is a new file of the same shape.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable

from .edges import Edges
from .hooks import PathwaySpec
from .segments import SegmentMap

__all__ = ["Circuit", "load_circuit", "list_circuits", "circuit_dirs", "layer_range"]

#: The repository's circuits folder (next to the package in a source checkout / editable install).
DEFAULT_DIR = Path(__file__).resolve().parents[1] / "circuits"


@dataclass(frozen=True)
class Circuit:
    """A loaded circuit: an information-flow circuit has ``curves``, a pathway circuit ``pathway``."""

    name: str
    description: str
    path: Path
    curves: Callable[[SegmentMap, int], dict[str, Edges]] | None = None
    pathway: Callable[[SegmentMap, int], PathwaySpec] | None = None

    @property
    def kind(self) -> str:
        return "flow" if self.curves is not None else "pathway"

    def build_curves(self, seg: SegmentMap, n_layers: int) -> dict[str, Edges]:
        if self.curves is None:
            raise ValueError(f"circuit {self.name!r} ({self.path}) is a pathway circuit; it has "
                             f"no knockout curves")
        curves = self.curves(seg, n_layers)
        if not curves or not all(isinstance(e, Edges) for e in curves.values()):
            raise ValueError(f"circuit {self.name!r} ({self.path}): curves() must return a "
                             f"non-empty {{name: Edges}} mapping")
        return curves

    def build_pathway(self, seg: SegmentMap, n_layers: int) -> PathwaySpec:
        if self.pathway is None:
            raise ValueError(f"circuit {self.name!r} ({self.path}) is an information-flow "
                             f"circuit; it has no pathway spec")
        spec = self.pathway(seg, n_layers)
        if not isinstance(spec, PathwaySpec):
            raise ValueError(f"circuit {self.name!r} ({self.path}): pathway() must return a "
                             f"PathwaySpec")
        return spec


def layer_range(first: int, last: int, n_layers: int, *, circuit: str = "") -> range:
    """0-based layers for the paper's 1-based, inclusive "L{first}–{last}", checked against the
    model's depth."""
    if not 1 <= first <= last <= n_layers:
        raise ValueError(f"{circuit or 'circuit'}: layers L{first}–{last} (1-based) do not fit a "
                         f"{n_layers}-layer model")
    return range(first - 1, last)


def circuit_dirs(extra: Iterable[str | Path] = ()) -> list[Path]:
    """Folders searched for circuits: the given ones, ``$MAPFLOW_CIRCUITS`` (os.pathsep-separated),
    then the repository's ``circuits/``."""
    dirs = [Path(p) for p in extra]
    dirs += [Path(p) for p in os.environ.get("MAPFLOW_CIRCUITS", "").split(os.pathsep) if p]
    dirs.append(DEFAULT_DIR)
    return dirs


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"mapflow_circuit_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import circuit file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _from_module(module: ModuleType, path: Path) -> Circuit:
    missing = [attr for attr in ("NAME", "DESCRIPTION") if not hasattr(module, attr)]
    if missing:
        raise ValueError(f"circuit file {path} lacks {missing}: define NAME and DESCRIPTION")
    curves, pathway = getattr(module, "curves", None), getattr(module, "pathway", None)
    if (curves is None) == (pathway is None):
        raise ValueError(f"circuit file {path} must define exactly one of curves(seg, n_layers) "
                         f"or pathway(seg, n_layers)")
    return Circuit(module.NAME, module.DESCRIPTION, path, curves, pathway)


def list_circuits(extra_dirs: Iterable[str | Path] = ()) -> dict[str, Circuit]:
    """Every circuit found, by name (an earlier folder wins over a later one)."""
    found: dict[str, Circuit] = {}
    for folder in circuit_dirs(extra_dirs):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.py")):
            if path.name.startswith("_"):
                continue
            circuit = _from_module(_import(path), path)
            found.setdefault(circuit.name, circuit)
    return found


def load_circuit(name_or_path: str | Path, extra_dirs: Iterable[str | Path] = ()) -> Circuit:
    """A circuit by name, or from a ``.py`` file path."""
    path = Path(name_or_path)
    if path.suffix == ".py":
        if not path.is_file():
            raise ValueError(f"circuit file {path} does not exist")
        return _from_module(_import(path), path)
    circuits = list_circuits(extra_dirs)
    if str(name_or_path) not in circuits:
        raise ValueError(f"unknown circuit {str(name_or_path)!r}; available: {sorted(circuits)}")
    return circuits[str(name_or_path)]


def paper_pathway(
    seg: SegmentMap,
    n_layers: int,
    *,
    cross_frame: tuple[int, int],
    video_to_question: tuple[int, int],
    question_to_last: tuple[int, int],
    circuit: str = "",
) -> PathwaySpec:
    """The shape of the paper's effective pathways (Map the Flow, Finding 4), 1-based inclusive:

    keep cross-frame in ``cross_frame``, video→question in ``video_to_question`` and
    question→last in ``question_to_last``; block video→last and last→last in every layer; block
    video→video after the video→question range ends and question→question after the
    question→last range ends (for the 7B model: after L20 and after L25).
    """
    from . import edges as E

    def layers(bounds: tuple[int, int]) -> range:
        return layer_range(bounds[0], bounds[1], n_layers, circuit=circuit)

    return (
        PathwaySpec(n_layers)
        .keep(E.cross_frame(seg), layers(cross_frame))
        .keep(E.video_to_question(seg), layers(video_to_question))
        .keep(E.question_to_last(seg), layers(question_to_last))
        .block(E.video_to_last(seg) | E.last_to_last(seg), range(n_layers))
        .block(E.video_to_video(seg), range(video_to_question[1], n_layers))
        .block(E.question_to_question(seg), range(question_to_last[1], n_layers))
    )
