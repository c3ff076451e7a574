"""Named circuits: the paper's experiments (and a user's own) as data.

A circuit is one Python file in a circuits folder. The ones that ship with mapflow-tl are the
repository's ``circuits/`` folder, installed as the package ``mapflow_tl.builtin_circuits`` and
read with :mod:`importlib.resources` (a wheel and an editable install read the same files); a
user's own come from ``--dir`` folders, ``$MAPFLOW_CIRCUITS`` or a ``.py`` path. A circuit file
defines:

- ``NAME`` — the circuit's name (``cross-frame``, ``vql-to-ql``, …), a plain string literal:
  circuits are found by reading ``NAME`` from the source without running the file;
- ``DESCRIPTION`` — one line for ``mapflow-tl circuits``;
- either ``curves(seg, n_layers) -> {curve name: Edges}`` — an information-flow circuit: each curve
  is one edge set knocked out with a sliding layer window (Map the Flow §2);
- or ``pathway(seg, n_layers) -> PathwaySpec`` — an effective-pathway circuit (Finding 4): the
  edges kept open and blocked in every layer.

Loading a circuit runs its file's code, like an import: load circuits you trust. Asking for a
circuit by name runs only the file that declares that name; a ``.py`` file without a ``NAME``
(a helper) is not a circuit and is never run by a lookup.

Circuits are built from a SegmentMap and the layer count only: no model-family branches, no layer
ranges keyed by a model-size string. A user's circuit is a new file of the same shape.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.resources
import importlib.util
import os
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable

from .edges import Edges
from .errors import InputError
from .hooks import PathwaySpec
from .layers import layer_range  # re-exported: circuit files import it from here (docs)
from .segments import SegmentMap

__all__ = [
    "Circuit",
    "CircuitFile",
    "builtin_dir",
    "circuit_dirs",
    "circuit_files",
    "layer_range",
    "list_circuits",
    "load_circuit",
    "paper_pathway",
    "PAPER_FLOW_CIRCUITS",
]

#: The paper's information-flow circuits, what ``mapflow-tl flow`` runs without ``--circuit``:
#: the official script's four ``--target`` choices (analysis/information_flow_analysis.py:63-64,
#: 306-328): cross-frame (Finding 1), video/question/last (Fig. 3), question and options → last
#: and video/question → true option (Fig. 4).
PAPER_FLOW_CIRCUITS = ("cross-frame", "vql-to-ql", "question-and-options-to-last",
                       "vq-to-true-opt")

#: The package the repository's ``circuits/`` folder is installed as (see setup.py).
BUILTIN_PACKAGE = "mapflow_tl.builtin_circuits"


@dataclass(frozen=True)
class Circuit:
    """A loaded circuit: an information-flow circuit has ``curves``, a pathway circuit ``pathway``."""

    name: str
    description: str
    path: Path
    curves: Callable[[SegmentMap, int], dict[str, Edges]] | None = None
    pathway: Callable[[SegmentMap, int], PathwaySpec] | None = None
    #: The random-pruning ratio the paper used against this pathway (the file's
    #: ``RANDOM_RATIO``; the official ``--random_block_ratio``), None when it has none.
    random_ratio: float | None = None

    @property
    def kind(self) -> str:
        return "flow" if self.curves is not None else "pathway"

    def build(self, seg: SegmentMap, n_layers: int) -> dict[str, Edges] | PathwaySpec:
        """:meth:`build_curves` or :meth:`build_pathway`, whichever the circuit defines."""
        return (self.build_curves(seg, n_layers) if self.curves is not None
                else self.build_pathway(seg, n_layers))

    def build_curves(self, seg: SegmentMap, n_layers: int) -> dict[str, Edges]:
        if self.curves is None:
            raise InputError(f"circuit {self.name!r} ({self.path}) is a pathway circuit; it has "
                             f"no knockout curves")
        curves = _run_user_code(self.path, "curves()", self.curves, seg, n_layers)
        if not curves or not all(isinstance(e, Edges) for e in curves.values()):
            raise InputError(f"circuit {self.name!r} ({self.path}): curves() must return a "
                             f"non-empty {{name: Edges}} mapping")
        return curves

    def build_pathway(self, seg: SegmentMap, n_layers: int) -> PathwaySpec:
        if self.pathway is None:
            raise InputError(f"circuit {self.name!r} ({self.path}) is an information-flow "
                             f"circuit; it has no pathway spec")
        spec = _run_user_code(self.path, "pathway()", self.pathway, seg, n_layers)
        if not isinstance(spec, PathwaySpec):
            raise InputError(f"circuit {self.name!r} ({self.path}): pathway() must return a "
                             f"PathwaySpec")
        return spec


@dataclass(frozen=True)
class CircuitFile:
    """A ``.py`` file in a circuits folder, read without running it.

    ``name`` is its literal ``NAME``; None with ``problem`` None means the file declares no
    ``NAME`` (a helper, not a circuit); ``problem`` says why the name could not be read (a syntax
    error, a ``NAME`` that is not a string literal).
    """

    path: Path
    name: str | None
    problem: str | None = None


def builtin_dir() -> Path:
    """The folder of the circuits that ship with mapflow-tl: ``mapflow_tl/builtin_circuits`` in
    an installed wheel, the repository's ``circuits/`` in an editable install."""
    try:
        folder = importlib.resources.files(BUILTIN_PACKAGE)
    except ModuleNotFoundError:
        raise ImportError(f"the built-in circuits ({BUILTIN_PACKAGE}) are not installed: this "
                          f"install of mapflow-tl predates them; reinstall it (in a source "
                          f"checkout: pip install -e .)") from None
    if not isinstance(folder, Path):  # e.g. a zipped install: circuit files must be real files
        raise ImportError(f"the built-in circuits ({BUILTIN_PACKAGE}) are not a folder on disk "
                          f"({folder!r}); install mapflow-tl unzipped")
    return folder


def circuit_dirs(extra: Iterable[str | Path] = ()) -> list[Path]:
    """Folders searched for circuits, earliest first: the given ones, ``$MAPFLOW_CIRCUITS``
    (os.pathsep-separated), then the built-in circuits (:func:`builtin_dir`)."""
    dirs = [Path(p) for p in extra]
    dirs += [Path(p) for p in os.environ.get("MAPFLOW_CIRCUITS", "").split(os.pathsep) if p]
    dirs.append(builtin_dir())
    return dirs


def _declared_name(path: Path) -> CircuitFile:
    """Read ``NAME = "..."`` from the file's top level without running it (the last assignment
    counts, as it would when the file runs)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as error:
        return CircuitFile(path, None, f"syntax error on line {error.lineno}: {error.msg}")
    except (OSError, ValueError) as error:  # unreadable, or null bytes
        return CircuitFile(path, None, f"cannot be read ({error})")
    value: ast.expr | None = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "NAME" for t in node.targets):
            value = node.value
        elif (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
              and node.target.id == "NAME" and node.value is not None):
            value = node.value
    if value is None:
        return CircuitFile(path, None)
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
        return CircuitFile(path, value.value)
    return CircuitFile(path, None, 'NAME must be a plain string literal (NAME = "my-circuit") so '
                                   'that circuits are found without running their files')


def circuit_files(extra_dirs: Iterable[str | Path] = ()) -> list[CircuitFile]:
    """Every ``.py`` file in the circuit folders (:func:`circuit_dirs` order, then by file name;
    names starting with ``_`` skipped), with its ``NAME`` read statically: no file is run. A
    folder in ``extra_dirs`` must exist; one in ``$MAPFLOW_CIRCUITS`` that does not is skipped."""
    extra_dirs = list(extra_dirs)
    missing = [str(folder) for folder in extra_dirs if not Path(folder).is_dir()]
    if missing:  # a mistyped --dir would otherwise just find nothing
        raise InputError(f"circuit folder(s) {missing} do not exist")
    files: list[CircuitFile] = []
    for folder in circuit_dirs(extra_dirs):
        if folder.is_dir():
            files += [_declared_name(path) for path in sorted(folder.glob("*.py"))
                      if not path.name.startswith("_")]
    return files


def _import(path: Path) -> ModuleType:
    # a module name unique to the file, so two folders' "pathway.py" do not meet in tracebacks
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    spec = importlib.util.spec_from_file_location(f"mapflow_circuit_{path.stem}_{digest}", path)
    if spec is None or spec.loader is None:
        raise InputError(f"cannot import circuit file {path}")
    module = importlib.util.module_from_spec(spec)
    _run_user_code(path, "", spec.loader.exec_module, module)
    return module


def _run_user_code(path: Path, what: str, function: Callable, *args):
    """Call a circuit file's code. A user's file may raise anything, or call ``sys.exit`` (which
    would end the command with its code, having done nothing): either is an InputError naming
    the file and the line, with the cause kept. Ctrl-C stays Ctrl-C."""
    try:
        return function(*args)
    except InputError:
        raise   # already one line naming the thing (a layer range past the model, say)
    except (Exception, SystemExit) as error:
        line = next((frame.lineno for frame in reversed(traceback.extract_tb(error.__traceback__))
                     if Path(frame.filename) == Path(path)), None)
        where = "" if line is None else f" (line {line})"
        what = f" {what}" if what else ""
        if isinstance(error, SystemExit):
            cause = f"it called sys.exit({error.code!r})"
        else:
            cause = f"{type(error).__name__}: {error}"
        raise InputError(f"circuit file {path} failed to run{what}: {cause}{where}; fix the "
                         f"circuit file") from error


def _from_module(module: ModuleType, path: Path) -> Circuit:
    missing = [attr for attr in ("NAME", "DESCRIPTION") if not hasattr(module, attr)]
    if missing:
        raise InputError(f"circuit file {path} lacks {missing}: define NAME and DESCRIPTION")
    curves, pathway = getattr(module, "curves", None), getattr(module, "pathway", None)
    if (curves is None) == (pathway is None):
        raise InputError(f"circuit file {path} must define exactly one of curves(seg, n_layers) "
                         f"or pathway(seg, n_layers)")
    ratio = getattr(module, "RANDOM_RATIO", None)
    if ratio is not None:
        if pathway is None:
            raise InputError(f"circuit file {path}: RANDOM_RATIO belongs to a pathway circuit "
                             f"(one with pathway(seg, n_layers)); remove it")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) \
                or not 0.0 < ratio < 1.0:
            raise InputError(f"circuit file {path}: RANDOM_RATIO must be a fraction in (0, 1) "
                             f"of the causal edges to block, got {ratio!r}")
        ratio = float(ratio)
    return Circuit(module.NAME, module.DESCRIPTION, path, curves, pathway, ratio)


def _load(file: CircuitFile) -> Circuit:
    if file.problem is not None:
        raise InputError(f"circuit file {file.path}: {file.problem}")
    circuit = _from_module(_import(file.path), file.path)
    if circuit.name != file.name:
        raise InputError(f"circuit file {file.path}: NAME reads {file.name!r} in the source but "
                         f"is {circuit.name!r} once run; assign NAME once, as a string literal")
    return circuit


def list_circuits(
    extra_dirs: Iterable[str | Path] = (), *, errors: list[str] | None = None
) -> dict[str, Circuit]:
    """Every circuit found, by name (an earlier folder wins over a later one). This runs every
    circuit file (to read its description and kind); files without ``NAME`` are helpers and are
    not run.

    A circuit file that cannot be loaded raises ValueError naming it, or, when ``errors`` is a
    list, adds that one-line message to it and is left out.
    """
    found: dict[str, Circuit] = {}
    for file in circuit_files(extra_dirs):
        if (file.name is None and file.problem is None) or file.name in found:
            continue
        try:
            circuit = _load(file)
        except ValueError as error:
            if errors is None:
                raise
            errors.append(str(error))
            continue
        found[circuit.name] = circuit
    return found


def load_circuit(name_or_path: str | Path, extra_dirs: Iterable[str | Path] = ()) -> Circuit:
    """A circuit by name (running only the file that declares it) or from a ``.py`` file path."""
    path = Path(name_or_path)
    if path.suffix == ".py":
        if not path.is_file():
            raise InputError(f"circuit file {path} does not exist")
        return _from_module(_import(path), path)
    name = str(name_or_path)
    files = circuit_files(extra_dirs)
    for file in files:
        if file.name == name:
            return _load(file)
    available = sorted({file.name for file in files if file.name is not None})
    unread = [f"{file.path} ({file.problem})" for file in files if file.problem is not None]
    raise InputError(f"unknown circuit {name!r}; available: {available}"
                     + (f"; not read: {'; '.join(unread)}" if unread else "")
                     + "; a circuit of your own: give its .py path, or its folder with "
                       "--circuit-dir DIR or $MAPFLOW_CIRCUITS")


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
