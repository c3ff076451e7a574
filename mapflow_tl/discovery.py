"""Pathway discovery: search, per edge type, for the fewest layers whose edges must stay open.

Map the Flow's effective pathways (Finding 4) are written by hand per model, their layer ranges
"determined manually based on observed patterns". This module finds them instead, with the
engine's sweeps (:meth:`~mapflow_tl.engine.KnockoutConfig.from_pathway`: a pathway is one
configuration; many candidate pathways of many samples are swept together).

**What is searched.** The edges from the video start on are split into disjoint edge types
(:func:`edge_types`): ``coarse`` — cross-frame, video→video within a frame, video→question,
question→question, question→last, video→last, last→last; ``fine`` — the same with the question
split at its options: video→non-option question, video→options, non-option question→last,
options→last (the "options" being the coarse question after the question text: the options with
their labels). A true/false-option split is refused on purpose: a pathway that keeps the true
option's edges open and the false ones' closed would read the answer key. Edges before the video
(system prompt) and into text between the spans stay open, as in the paper's pathways. A
pathway keeps each type open in one contiguous layer range (or none) and blocks it in every
other layer (:func:`pathway_from_layers`).

**The search** (:func:`greedy_search`) — greedy shrinking of layer ranges. Start: every type open
in every layer (the full model). Order: the types by their number of edges per layer, most
first (on the first search sample), unless ``order`` is given. For each type in turn: try to
close it in every layer; if that fails, repeatedly try the two one-layer shrinks of its range
(first layer + 1, last layer − 1), evaluated together, and take the one with the higher
accuracy (a tie: the first layer moves) while it is accepted. A candidate is accepted when its
accuracy on the search samples is at least the full model's minus ``epsilon`` (in accuracy as a
fraction: 0.02 is 2 points). A pass visits every type; passes repeat (at most ``passes``) while
one changed something, since closing a later type can make an earlier one closable. ``budget``
bounds the evaluations (one candidate pathway on one sample); a search that would exceed it
stops before that round and keeps its last accepted pathway, recording that it was cut short.

**Start** (``start``). ``scratch``: the full model, as above. ``curves``: each type's initial
range comes from its flow curve on the search samples (:func:`curve_ranges`): the paper's
layer-wise knockout sweep of the type alone (window ``k`` centred on each layer), the mean
relative change of the probability of the full model's answer over the search samples it answers
correctly; the range is the hull of the windows whose knockout lowers that probability by more
than ``threshold`` (a fraction, default 0.05 = 5 %), none (closed everywhere) when no window
does. The start pathway is evaluated first; accepted, it is the first step and the same greedy
shrinking follows; refused, the search starts from scratch (the evaluation is counted either
way). The curves are computed on the search split only, so the held-out split stays unseen.

**Cost** is counted as evaluations (the issue's "forwards": one pathway, one sample) and as
forward equivalents: the (layer, position) cells the fast engine recomputes over those of one
full forward (:func:`~mapflow_tl.engine.recomputed_cells`).

**Held-out honesty.** :func:`split_of` puts each sample in the search or the evaluation split by
SHA-256 of its id, never by position in the dataset: the same sample lands in the same split in
every run, whatever else is loaded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from . import edges as E
from .edges import Edges
from .errors import InputError
from .hooks import PathwaySpec
from .layers import check_layer

__all__ = [
    "SEARCH_TARGETS",
    "START_CHOICES",
    "SPLIT_RULE",
    "SearchSample",
    "SearchResult",
    "edge_types",
    "pathway_from_layers",
    "split_of",
    "greedy_search",
    "curve_ranges",
    "path_row",
    "steps_from_path",
    "search_together",
    "evaluate_pathways",
    "circuit_source",
    "discover",
    "variability",
]

#: The edge-type partitions the search can use (:func:`edge_types`).
SEARCH_TARGETS = ("coarse", "fine")

#: Where the search starts (:func:`greedy_search`'s ``starts``, :func:`curve_ranges`).
START_CHOICES = ("scratch", "curves")

#: How samples are split (recorded in run.json with the fraction and seed).
SPLIT_RULE = ("search when int(sha256('discover:{seed}:{sample id}')[:16], 16) / 2**64 < "
              "search_fraction, else eval")


def edge_types(seg, targets: str = "coarse") -> dict[str, Edges]:
    """The disjoint edge types a pathway opens or closes per layer, by name (see the module
    docstring); ``targets`` is ``"coarse"`` or ``"fine"``."""
    if targets not in SEARCH_TARGETS:
        raise InputError(f"search targets must be one of {SEARCH_TARGETS}, got {targets!r}")
    cross = E.cross_frame(seg)
    types = {"cross-frame": cross,
             "video → video within frames": E.video_to_video(seg) - cross}
    if targets == "coarse":
        types["video → question"] = E.video_to_question(seg)
    else:
        text = E.video_to_non_option_question(seg)
        types["video → non-option question"] = text
        types["video → options"] = E.video_to_question(seg) - text
    types["question → question"] = E.question_to_question(seg)
    if targets == "coarse":
        types["question → last"] = E.question_to_last(seg)
    else:
        text = E.non_option_question_to_last(seg)
        types["non-option question → last"] = text
        types["options → last"] = E.question_to_last(seg) - text
    types["video → last"] = E.video_to_last(seg)
    types["last → last"] = E.last_to_last(seg)
    for name, edges in types.items():
        edges._name = name
    return types


def pathway_from_layers(seg, n_layers: int, open_layers: Mapping[str, Iterable[int]], *,
                        targets: str = "coarse", circuit: str = "") -> PathwaySpec:
    """The pathway that keeps each edge type of :func:`edge_types` open only in its
    ``open_layers`` (0-based blocks; an empty list closes it everywhere). Every type must be
    named: a discovered circuit states each one."""
    types = edge_types(seg, targets)
    unknown = sorted(set(open_layers) - set(types))
    missing = [name for name in types if name not in open_layers]
    if unknown or missing:
        where = f"circuit {circuit!r}: " if circuit else ""
        raise InputError(f"{where}open layers must name exactly the {targets} edge types "
                         f"{list(types)}; unknown {unknown}, missing {missing}")
    spec = PathwaySpec(n_layers)
    for name, edges in types.items():
        spec.keep(edges, [check_layer(layer, n_layers) for layer in open_layers[name]])
    return spec


def split_of(sample: str, search_fraction: float = 0.5, seed: int = 0) -> str:
    """``"search"`` or ``"eval"`` for a sample id (:data:`SPLIT_RULE`): a fixed function of the
    id, so the two splits are disjoint and the same in every run."""
    if not 0.0 < search_fraction < 1.0:
        raise InputError(f"search fraction must lie in (0, 1) so that both splits get samples, "
                         f"got {search_fraction!r}")
    digest = hashlib.sha256(f"discover:{seed}:{sample}".encode("utf-8")).hexdigest()
    return "search" if int(digest[:16], 16) / 2**64 < search_fraction else "eval"


@dataclass
class SearchSample:
    """One sample as the search sees it: ``embeds`` ``[1, pos, d_model]``, its SegmentMap, the
    full model's correctness and ``correct(token)``: whether a predicted token is right under a
    pathway (None: no known answer)."""

    id: str
    embeds: Any
    segments: Any
    full_correct: bool
    correct: Callable[[int], bool | None]
    task: str = ""

    @property
    def n_positions(self) -> int:
        return int(self.embeds.shape[1])


Ranges = dict[str, tuple[int, int] | None]


@dataclass
class SearchResult:
    """A finished (or cut short) search: the kept ``ranges`` per edge type (inclusive 0-based
    ``(first, last)``, None: closed everywhere), the accepted ``steps`` in order (step 0: the
    start), the cost, and whether the budget stopped it (``complete`` False)."""

    ranges: Ranges
    steps: list[dict[str, Any]]
    full_accuracy: float
    evaluations: int = 0
    forwards: float = 0.0
    complete: bool = True
    order: list[str] = field(default_factory=list)
    #: How the search started: ``"scratch"``, ``"curves"`` (the curves' start accepted) or
    #: ``"curves refused"`` (evaluated, not accepted: the search went on from scratch).
    start: str = "scratch"
    #: The curves' start pathway's accuracy on the search samples (None: not evaluated here).
    start_accuracy: float | None = None

    def open_layers(self, ranges: Ranges | None = None) -> dict[str, list[int]]:
        """Each edge type's open layers (of ``ranges``, default the result's)."""
        return _open_layers(self.ranges if ranges is None else ranges)


def _open_layers(ranges: Ranges) -> dict[str, list[int]]:
    return {name: [] if bounds is None else list(range(bounds[0], bounds[1] + 1))
            for name, bounds in ranges.items()}


def _accuracy(flags: Sequence[bool | None]) -> float:
    return sum(bool(flag) for flag in flags) / len(flags) if flags else 0.0


def _steps(ranges: Ranges, order: Sequence[str], n_layers: int, passes: int, accept,
           record: Callable[..., None], start: Ranges | None = None,
           started: Callable[[bool, float], None] = lambda accepted, accuracy: None,
           resume: tuple[int, int, bool] | None = None):
    """The greedy shrinking as a coroutine: yields candidate range sets, receives their
    accuracies; ``ranges`` is updated in place as candidates are accepted. With ``start`` (the
    flow curves' ranges) that pathway is tried first and, accepted, replaces the full model.
    ``resume`` = (pass, index of the type in ``order``, inside): go on from an accepted step
    (``ranges`` already its ranges) exactly where the uninterrupted search would — inside that
    type's shrinking when the step was the type's, at the type otherwise."""
    if resume is None and start is not None and dict(start) != ranges:
        [accuracy] = yield [dict(start)]
        started(accept(accuracy), accuracy)
        if accept(accuracy):
            ranges.update(start)
            record("", "start: the flow curves' ranges", ranges, accuracy, 0)
    first_pass, first_index, inside = resume or (0, 0, False)
    for pass_ in range(first_pass, passes):
        # an accepted step in the resumed pass changed something
        changed = resume is not None and inside and pass_ == first_pass
        for index, name in enumerate(order):
            resumed = pass_ == first_pass
            if resumed and index < first_index:
                continue
            if ranges[name] is None:
                continue
            if not (resumed and inside and index == first_index):
                [accuracy] = yield [{**ranges, name: None}]
                if accept(accuracy):
                    ranges[name] = None
                    record(name, "closed everywhere", ranges, accuracy, pass_)
                    changed = True
                    continue
            while True:
                first, last = ranges[name]
                if first == last:
                    break
                candidates = [(first + 1, last), (first, last - 1)]
                accuracies = yield [{**ranges, name: c} for c in candidates]
                best = 0 if accuracies[0] >= accuracies[1] else 1
                if not accept(accuracies[best]):
                    break
                ranges[name] = candidates[best]
                record(name, f"layers {candidates[best][0]}–{candidates[best][1]}", ranges,
                       accuracies[best], pass_)
                changed = True
        if not changed:
            return


class _Unit:
    """One search (per task or per sample) stepped by :func:`search_together`."""

    def __init__(self, samples: Sequence[SearchSample], n_layers: int, targets: str,
                 epsilon: float, order: Sequence[str] | None, passes: int,
                 budget: int | None, start: Ranges | None = None,
                 resume_steps: Sequence[Mapping[str, Any]] | None = None,
                 on_step: Callable[[dict[str, Any]], None] | None = None) -> None:
        if not samples:
            raise InputError("a pathway search needs at least one search sample")
        self.samples, self.targets, self.budget = list(samples), targets, budget
        self.n_layers = n_layers
        self.types = [edge_types(s.segments, targets) for s in self.samples]
        names = list(self.types[0])
        if order is None:
            n = self.samples[0].n_positions
            order = sorted(names, key=lambda name: -self.types[0][name].count(n))
        unknown = sorted(set(order) - set(names))
        if unknown or len(set(order)) != len(order):
            raise InputError(f"search order must name each of {names} at most once; got "
                             f"{list(order)}")
        self.order = list(order) + [name for name in names if name not in order]
        self.full_accuracy = _accuracy([s.full_correct for s in self.samples])
        floor = self.full_accuracy - epsilon - 1e-9
        self.ranges: Ranges = {name: (0, n_layers - 1) for name in names}
        self.result = SearchResult(dict(self.ranges), [], self.full_accuracy,
                                   order=list(self.order))
        self.on_step = on_step
        resume = None
        if resume_steps and len(resume_steps) > 1:
            # go on from the last accepted step: its ranges, cost and place in the search
            self.result.steps = [dict(step, ranges=dict(step["ranges"]))
                                 for step in resume_steps]
            last = self.result.steps[-1]
            self.ranges.update(last["ranges"])
            self.result.evaluations, self.result.forwards = last["evaluations"], last["forwards"]
            if start is not None:
                curves = any(step["change"] == "start: the flow curves' ranges"
                             for step in self.result.steps)
                self.result.start = "curves" if curves else "curves refused"
            if last["edge_type"]:
                resume = (int(last["pass"]), self.order.index(last["edge_type"]), True)
            else:
                resume = (0, 0, False)
        else:
            self._record("", "start: every edge type open in every layer", self.ranges,
                         self.full_accuracy, 0)
        if start is not None and set(start) != set(names):
            raise InputError(f"a start pathway must name exactly the edge types {names}; got "
                             f"{sorted(start)}")

        def started(accepted: bool, accuracy: float) -> None:
            self.result.start = "curves" if accepted else "curves refused"
            self.result.start_accuracy = accuracy

        self._coroutine = _steps(self.ranges, self.order, n_layers, passes,
                                 lambda accuracy: accuracy >= floor, self._record, start,
                                 started, resume)
        self.pending: list[Ranges] | None = None
        self._advance(None)

    def _record(self, name: str, change: str, ranges: Ranges, accuracy: float,
                pass_: int) -> None:
        step = {"step": len(self.result.steps), "edge_type": name, "change": change,
                "ranges": dict(ranges), "accuracy": accuracy, "pass": pass_,
                "evaluations": self.result.evaluations, "forwards": self.result.forwards}
        self.result.steps.append(step)
        if self.on_step is not None:
            self.on_step(step)

    def _advance(self, accuracies: list[float] | None) -> None:
        try:
            self.pending = (next(self._coroutine) if accuracies is None
                            else self._coroutine.send(accuracies))
        except StopIteration:
            self.pending = None
        if self.pending is None:
            self.result.ranges = dict(self.ranges)

    def cost(self) -> int:
        return len(self.pending or ()) * len(self.samples)

    def stop(self) -> None:
        """The budget is spent: keep the last accepted pathway."""
        self._coroutine.close()
        self.pending = None
        self.result.ranges = dict(self.ranges)
        self.result.complete = False

    def spec(self, index: int, ranges: Ranges) -> PathwaySpec:
        spec = PathwaySpec(self.n_layers)
        for name, edges in self.types[index].items():
            bounds = ranges[name]
            spec.keep(edges, [] if bounds is None else range(bounds[0], bounds[1] + 1))
        return spec


def search_together(model, units: Sequence[Sequence[SearchSample]], *, targets: str = "coarse",
                    epsilon: float = 0.02, order: Sequence[str] | None = None, passes: int = 2,
                    budget: int | None = None, method: str = "fast",
                    progress: Callable[[str], None] | None = None,
                    starts: Sequence[Ranges | None] | None = None,
                    resume_steps: Sequence[Sequence[Mapping[str, Any]] | None] | None = None,
                    on_step: Callable[[int, dict[str, Any]], None] | None = None
                    ) -> list[SearchResult]:
    """:func:`greedy_search` of several independent searches (a per-task one, or one per
    sample: per-sample adaptive pathways) stepped together: each round, every unfinished
    search's candidates on every one of its samples are one engine sweep
    (:func:`~mapflow_tl.engine.sweep_samples`). ``budget`` bounds each search's evaluations;
    ``progress`` is called with a line after each round. ``starts[i]``: search i's start
    ranges (:func:`curve_ranges`), None: from scratch. ``resume_steps[i]``: search i's accepted
    steps so far (as recorded, :func:`steps_from_path`): it goes on from the last one as the
    uninterrupted search would. ``on_step(i, step)`` is called as search i accepts a step (to
    record it durably)."""
    from .engine import KnockoutConfig, recomputed_cells, sweep_samples

    if not 0.0 <= epsilon < 1.0:
        raise InputError(f"epsilon is an accuracy drop as a fraction in [0, 1) (0.02 = 2 "
                         f"points), got {epsilon!r}")
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise InputError(f"passes must be a positive int, got {passes!r}")
    if budget is not None and budget < 1:
        raise InputError(f"the search budget is a number of evaluations >= 1, got {budget!r}")
    n_layers = model.cfg.n_layers
    starts = [None] * len(units) if starts is None else list(starts)
    if len(starts) != len(units):
        raise InputError(f"{len(starts)} start pathways for {len(units)} searches")
    resume_steps = [None] * len(units) if resume_steps is None else list(resume_steps)
    searches = [_Unit(samples, n_layers, targets, epsilon, order, passes, budget, start, done,
                      None if on_step is None else
                      (lambda step, i=i: on_step(i, step)))
                for i, (samples, start, done) in enumerate(zip(units, starts, resume_steps))]
    while True:
        active = []
        for unit in searches:
            if unit.pending is None:
                continue
            if unit.budget is not None and unit.result.evaluations + unit.cost() > unit.budget:
                unit.stop()
                continue
            active.append(unit)
        if not active:
            break
        embeds, configs, owners = [], [], []
        for unit in active:
            for index, sample in enumerate(unit.samples):
                n = sample.n_positions
                sample_configs = [KnockoutConfig.from_pathway(unit.spec(index, ranges),
                                                              f"candidate {c}", n)
                                  for c, ranges in enumerate(unit.pending)]
                embeds.append(sample.embeds)
                configs.append(sample_configs)
                owners.append((unit, index))
                unit.result.forwards += recomputed_cells(
                    sample_configs, n, n_layers, method=method) / (n_layers * n)
        logits = sweep_samples(model, embeds, configs, method=method)
        flags: dict[int, list[list[bool | None]]] = {}
        for (unit, index), sample_logits in zip(owners, logits):
            tokens = sample_logits.argmax(-1).tolist()
            flags.setdefault(id(unit), []).append(
                [unit.samples[index].correct(int(token)) for token in tokens])
        for unit in active:
            per_sample = flags[id(unit)]
            unit.result.evaluations += unit.cost()
            accuracies = [_accuracy([sample[c] for sample in per_sample])
                          for c in range(len(unit.pending))]
            unit._advance(accuracies)
        if progress is not None:
            done = sum(unit.pending is None for unit in searches)
            progress(f"{sum(unit.result.evaluations for unit in searches)} evaluations, "
                     f"{sum(len(unit.result.steps) - 1 for unit in searches)} accepted steps, "
                     f"{done}/{len(searches)} search(es) finished")
    return [unit.result for unit in searches]


def path_row(step: Mapping[str, Any], complete: bool = True) -> dict[str, Any]:
    """The ``discover_path`` row of an accepted step (``complete``: the search had not been
    stopped by its budget)."""
    return {"search": "task", "step": step["step"], "pass": step.get("pass"),
            "edge_type": step["edge_type"], "change": step["change"],
            "open_layers": json.dumps(_open_layers(step["ranges"]), ensure_ascii=False),
            "search_accuracy": 100 * step["accuracy"], "evaluations": step["evaluations"],
            "forwards": step["forwards"], "complete": complete}


def steps_from_path(rows: Sequence[Mapping[str, Any]], names: Sequence[str],
                    n_layers: int) -> list[dict[str, Any]]:
    """The accepted steps a ``discover_path`` table recorded (for a resume), checked: numbered
    0, 1, … without gaps, step 0 the full model, every step naming exactly the edge types
    ``names`` with contiguous 0-based open layers below ``n_layers``, the cost never falling.
    A closing row of a search its budget stopped (``complete`` False) is dropped. Raises
    :class:`InputError` saying what to do otherwise."""
    fix = "rerun with --overwrite (or another --out)"
    steps = []
    for index, row in enumerate(rows):
        if row.get("search") != "task":
            raise InputError(f"discover_path row {index} is not of the per-task search; {fix}")
        if row.get("complete") is False:
            continue
        try:
            layers = json.loads(row["open_layers"])
        except (TypeError, ValueError):
            raise InputError(f"discover_path step {row.get('step')}: unreadable open layers; "
                             f"{fix}") from None
        if sorted(layers) != sorted(names):
            raise InputError(f"discover_path step {row.get('step')} names edge types "
                             f"{sorted(layers)}, this search {sorted(names)}; {fix}")
        ranges: Ranges = {}
        for name in names:
            opened = layers[name]
            if opened and (opened != list(range(opened[0], opened[-1] + 1))
                           or not 0 <= opened[0] <= opened[-1] < n_layers):
                raise InputError(f"discover_path step {row.get('step')}: {name} open in "
                                 f"{opened}, not a range of the model's {n_layers} layers; {fix}")
            ranges[name] = (opened[0], opened[-1]) if opened else None
        steps.append({"step": int(row["step"]), "edge_type": row["edge_type"],
                      "change": row["change"], "ranges": ranges,
                      "accuracy": row["search_accuracy"] / 100, "pass": row.get("pass"),
                      "evaluations": int(row["evaluations"]), "forwards": row["forwards"]})
    if not steps or [s["step"] for s in steps] != list(range(len(steps))) \
            or any(b != (0, n_layers - 1) for b in steps[0]["ranges"].values()):
        raise InputError(f"discover_path does not hold the search's steps 0, 1, … from the full "
                         f"model; {fix}")
    if any(b["evaluations"] < a["evaluations"] for a, b in zip(steps, steps[1:])):
        raise InputError(f"discover_path: the recorded cost falls between steps; {fix}")
    return steps


def greedy_search(model, samples: Sequence[SearchSample], **options) -> SearchResult:
    """The per-task pathway search (module docstring) on ``samples`` (the search split) over the
    backbone ``model`` (a ``HookedTransformer``); options as :func:`search_together`."""
    return search_together(model, [samples], **options)[0]


def curve_ranges(model, samples: Sequence[SearchSample], *, targets: str = "coarse",
                 window: int | None = None, threshold: float = 0.05,
                 method: str = "fast") -> dict[str, Any]:
    """The flow curves' start for :func:`greedy_search` (module docstring, "Start").

    For each edge type and window centre l: the type knocked out in the window (the paper's
    layer sweep, :func:`~mapflow_tl.engine.layer_sweep`, ``k`` = ``window``, default
    :func:`~mapflow_tl.layers.default_window_size`) on each sample of ``samples`` the full model
    answers correctly, and the relative change ``(p_knocked - p_clean) / p_clean`` of the
    probability of its clean answer token, averaged over those samples. A centre is *needed*
    when that mean is below ``-threshold``; the type's start range is the hull of the needed
    centres' windows (None when none is needed).

    Returns ``{"ranges": {type: (first, last) | None}, "rows": [{edge_type, center, layers,
    samples, relative_change, needed}], "evaluations": configs × samples (one knocked-out
    window of one type on one sample), "forwards": recomputed cells over one forward's}``."""
    from .engine import KnockoutConfig, layer_sweep, recomputed_cells, sweep_samples
    from .layers import default_window_size

    if not 0.0 <= threshold < 1.0:
        raise InputError(f"the curves' threshold is a relative drop in [0, 1) (0.05 = 5 %), got "
                         f"{threshold!r}")
    used = [s for s in samples if s.full_correct]
    if not used:
        raise InputError("the flow curves' start needs search samples the full model answers "
                         "correctly; none is: start from scratch")
    n_layers = model.cfg.n_layers
    k = default_window_size(n_layers) if window is None else window
    embeds, configs, forwards = [], [], 0.0
    for sample in used:
        n = sample.n_positions
        sample_configs = [KnockoutConfig("clean", E.Edges.empty(), (0,), per_layer=(
            E.Edges.empty(),))] + layer_sweep(edge_types(sample.segments, targets), n_layers, k=k)
        embeds.append(sample.embeds)
        configs.append(sample_configs)
        forwards += recomputed_cells(sample_configs, n, n_layers, method=method) / (n_layers * n)
    logits = sweep_samples(model, embeds, configs, method=method)
    change: dict[tuple[str, int], list[float]] = {}
    window_of: dict[tuple[str, int], tuple[int, ...]] = {}
    for sample_configs, sample_logits in zip(configs, logits):
        probs = sample_logits.float().softmax(-1)
        answer = int(probs[0].argmax())
        clean = float(probs[0, answer])
        for config, p in zip(sample_configs[1:], probs[1:]):
            key = (config.curve, int(config.center))
            change.setdefault(key, []).append((float(p[answer]) - clean) / clean)
            window_of[key] = config.layers
    rows, ranges = [], {name: None for name in edge_types(used[0].segments, targets)}
    for (name, center), values in change.items():
        mean = sum(values) / len(values)
        needed = mean < -threshold
        layers = window_of[(name, center)]
        rows.append({"edge_type": name, "center": center, "layers": list(layers),
                     "samples": len(values), "relative_change": mean, "needed": needed})
        if needed:
            bounds = ranges[name]
            ranges[name] = (min(layers) if bounds is None else min(bounds[0], min(layers)),
                            max(layers) if bounds is None else max(bounds[1], max(layers)))
    evaluations = sum(len(c) - 1 for c in configs)
    return {"ranges": ranges, "rows": rows, "evaluations": evaluations, "forwards": forwards,
            "window": k, "threshold": threshold}


def evaluate_pathways(model, samples: Sequence[SearchSample],
                      specs: Sequence[Sequence[PathwaySpec]], *,
                      method: str = "fast") -> list[list[int]]:
    """The predicted token of every sample under each of its pathway specs
    (``specs[i][j]``: sample i's j-th pathway), swept together by the engine."""
    from .engine import KnockoutConfig, sweep_samples

    configs = [[KnockoutConfig.from_pathway(spec, f"pathway {j}", sample.n_positions)
                for j, spec in enumerate(sample_specs)]
               for sample, sample_specs in zip(samples, specs)]
    logits = sweep_samples(model, [s.embeds for s in samples], configs, method=method)
    return [[int(t) for t in sample_logits.argmax(-1).tolist()] for sample_logits in logits]


def circuit_source(name: str, description: str, provenance: str, n_layers: int, targets: str,
                   open_layers: Mapping[str, Sequence[int]]) -> str:
    """The text of a discovered pathway's circuit file: the usual shape (``NAME``,
    ``DESCRIPTION``, ``pathway(seg, n_layers)``), its provenance in the docstring, the open
    layers as data."""
    import textwrap

    layers = ",\n".join(f"    {json.dumps(name, ensure_ascii=False)}: {list(open_layers[name])}"
                        for name in open_layers)
    # wrapped to the project's line length; no backslash or closing quotes can end the docstring
    text = "\n\n".join(textwrap.fill(paragraph, 96) for paragraph in provenance.split("\n"))
    text = text.replace("\\", "/").replace('"""', "'''")
    return (f'"""{text}\n"""\n\n'
            f"from mapflow_tl.discovery import pathway_from_layers\n"
            f"from mapflow_tl.errors import InputError\n\n"
            f"NAME = {json.dumps(name)}\n"
            f"DESCRIPTION = {json.dumps(description, ensure_ascii=False)}\n\n"
            f"#: The depth the pathway was discovered on.\n"
            f"N_LAYERS = {n_layers}\n"
            f"#: The edge-type partition searched (mapflow_tl.discovery.edge_types).\n"
            f"TARGETS = {json.dumps(targets)}\n"
            f"#: Each edge type's open layers (0-based blocks); closed in every other layer.\n"
            f"OPEN_LAYERS = {{\n{layers},\n}}\n\n\n"
            f"def pathway(seg, n_layers):\n"
            f"    if n_layers != N_LAYERS:\n"
            f"        raise InputError(f\"circuit {{NAME!r}} was discovered on a \"\n"
            f"                         f\"{{N_LAYERS}}-layer model; this one has \"\n"
            f"                         f\"{{n_layers}} layers\")\n"
            f"    return pathway_from_layers(seg, n_layers, OPEN_LAYERS, targets=TARGETS, "
            f"circuit=NAME)\n")


def _aggregate(method: str, step: int | None, label: str, seed: int | None, split: str,
               flags: Sequence[bool | None], accounting: Sequence[tuple[int, int]]
               ) -> dict[str, Any]:
    """One trade-off row: accuracy over the split's samples and the paper's edge accounting
    (kept and total causal edges summed over layers and samples)."""
    kept = sum(k for k, _ in accounting)
    total = sum(t for _, t in accounting)
    return {"method": method, "step": step, "label": label, "seed": seed, "split": split,
            "samples": len(flags), "correct": sum(bool(f) for f in flags),
            "accuracy": 100 * _accuracy(flags), "kept_edges": kept, "total_edges": total,
            "retained": kept / total if total else None}


def discover(vlm, xs: Sequence[Any], bases: Sequence[Mapping[str, Any]], *,
             correctness: str = "official", targets: str = "coarse", epsilon: float = 0.02,
             order: Sequence[str] | None = None, passes: int = 2, budget: int | None = None,
             search_fraction: float = 0.5, split_seed: int = 0, hands: Sequence[Any] = (),
             seeds: Sequence[int] = (0, 1, 2), per_sample: int = 0,
             sample_budget: int | None = 200, method: str = "fast",
             progress: Callable[[str], None] | None = None, start: str = "scratch",
             curve_window: int | None = None, curve_threshold: float = 0.05,
             resume_path: Sequence[Mapping[str, Any]] | None = None,
             record_path: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Discover a per-task pathway on the search split of prepared samples ``xs`` (clean
    predictions ``bases``, :func:`~mapflow_tl.analyses.base_prediction`), evaluate it on the
    held-out split, and optionally search ``per_sample`` per-sample pathways.

    Returns ``{"result": SearchResult, "split": {sample: "search"|"eval"}, "tables": {...}}``
    with the tables ``discover`` (the trade-off curve on the evaluation split: the full model;
    every accepted step of the search; each hand-written pathway of ``hands``; the random
    baseline — :meth:`~mapflow_tl.hooks.PathwaySpec.random_like`, official-uniform at each of
    those pathways' own blocked fraction, drawn per sample and seed — plus the search steps'
    search-split accuracies), ``discover_path`` (the accepted steps) and ``discover_samples``
    (per-sample pathways against the per-task one, layer by layer), and with ``start="curves"``
    ``discover_curves`` (the flow curves of the search split the start came from,
    :func:`curve_ranges`; their cost is ``"curves"`` in the result). Per-sample searches start
    from scratch.

    ``record_path`` is called with each ``discover_path`` row as the search accepts the step
    (and with a closing row, ``complete`` False, when the budget stops it), so that a killed
    search keeps its work; ``resume_path``: those rows of an earlier, interrupted run of the
    same configuration. The search goes on from their last step after checking them
    (:func:`steps_from_path`) and re-measuring that step's accuracy on the search split, which
    must equal the recorded one."""
    from .analyses import grade, video_region
    from .schema import sample_fields

    seeds = list(seeds)
    samples, split = [], {}
    for x, base in zip(xs, bases):
        fields = sample_fields(x)
        if base.get("base_correct") is None:
            raise InputError(f"sample {fields['sample']!r} has no known answer: a pathway search "
                             f"measures accuracy; give every sample its answer")
        sample = SearchSample(str(fields["sample"]), x.embeds, x.segments,
                              bool(base["base_correct"]),
                              lambda token, x=x: grade(vlm, x, token, correctness,
                                                       knockout=True), str(fields["task"]))
        samples.append((sample, x))
        split[sample.id] = split_of(sample.id, search_fraction, split_seed)
    search = [s for s, _ in samples if split[s.id] == "search"]
    held_out = [(s, x) for s, x in samples if split[s.id] == "eval"]
    if not search or not held_out:
        raise InputError(f"the {len(samples)} samples split into {len(search)} search and "
                         f"{len(held_out)} evaluation samples; both need some: load more "
                         f"samples or change --search-fraction")
    backbone, n_layers = vlm.backbone, vlm.n_layers
    options = dict(targets=targets, epsilon=epsilon, order=order, passes=passes, method=method,
                   progress=progress)
    if start not in START_CHOICES:
        raise InputError(f"the search starts from one of {START_CHOICES}, got {start!r}")
    curves = None
    if start == "curves":
        # on the search split only: the held-out samples never shape the start
        curves = curve_ranges(backbone, search, targets=targets, window=curve_window,
                              threshold=curve_threshold, method=method)
    resumed = None
    if resume_path:
        names = list(edge_types(search[0].segments, targets))
        resumed = steps_from_path(resume_path, names, n_layers)
        last = resumed[-1]
        tokens = evaluate_pathways(backbone, search, [[pathway_from_layers(
            s.segments, n_layers, _open_layers(last["ranges"]), targets=targets)]
            for s in search], method=method)
        accuracy = _accuracy([s.correct(t[0]) for s, t in zip(search, tokens)])
        if abs(accuracy - last["accuracy"]) > 1e-9:
            raise InputError(f"discover --resume: step {last['step']} recorded "
                             f"{100 * last['accuracy']:.2f} % on the search split, this model and "
                             f"data give {100 * accuracy:.2f} %: the table is not this run's; "
                             f"rerun with --overwrite")
    result = search_together(
        backbone, [search], budget=budget, starts=[curves["ranges"] if curves else None],
        resume_steps=[resumed],
        on_step=None if record_path is None else (lambda _, step: record_path(path_row(step))),
        **options)[0]
    # a resumed search its budget had already stopped has its closing row
    closed = bool(resume_path) and resume_path[-1].get("complete") is False
    if record_path is not None and not result.complete and not closed:
        record_path(path_row({**result.steps[-1], "step": len(result.steps), "pass": None,
                              "edge_type": "", "change": f"stopped: budget spent, the pathway "
                              f"of step {result.steps[-1]['step']} is kept"}, complete=False))

    # the trade-off curve on the held-out split: every variant of every sample, one sweep
    variants: list[tuple[str, int | None, str, int | None]] = []   # method, step, label, seed
    for step in result.steps[1:]:
        label = f"step {step['step']}: {step['edge_type']} {step['change']}"
        variants.append(("search", step["step"], label, None))
        variants += [("random", step["step"], f"random at {label}", seed) for seed in seeds]
    for circuit in hands:
        variants.append(("hand", None, circuit.name, None))
        variants += [("random", None, f"random at {circuit.name}", seed) for seed in seeds]
    specs, accounting = [], []
    for sample, x in held_out:
        n = sample.n_positions
        region = video_region(x)
        own: dict[str, PathwaySpec] = {}
        for step in result.steps[1:]:
            own[f"step {step['step']}"] = pathway_from_layers(
                sample.segments, n_layers, _open_layers(step["ranges"]), targets=targets)
        for circuit in hands:
            own[circuit.name] = circuit.build_pathway(sample.segments, n_layers)
        sample_specs = []
        for method_name, step, label, seed in variants:
            key = f"step {step}" if step is not None else label.removeprefix("random at ")
            spec = own[key]
            if method_name == "random":
                spec = spec.random_like(region, n, seed, sample=sample.id)
            sample_specs.append(spec)
        specs.append(sample_specs)
        accounting.append([spec.edge_accounting(n) for spec in sample_specs])
    tokens = evaluate_pathways(backbone, [s for s, _ in held_out], specs, method=method)
    full_total = [(n_layers * E.causal_edge_count(s.n_positions),) * 2 for s, _ in held_out]
    rows = [_aggregate("full", 0, "full model", None, "eval",
                       [s.full_correct for s, _ in held_out], full_total)]
    for j, (method_name, step, label, seed) in enumerate(variants):
        flags = [sample.correct(tokens[i][j]) for i, (sample, _) in enumerate(held_out)]
        rows.append(_aggregate(method_name, step, label, seed, "eval", flags,
                               [accounting[i][j] for i in range(len(held_out))]))
    # the search path on its own split, as the search measured it
    search_total = [(n_layers * E.causal_edge_count(s.n_positions),) * 2 for s in search]
    rows.append(_aggregate("full", 0, "full model", None, "search",
                           [s.full_correct for s in search], search_total))
    for step in result.steps[1:]:
        kept = [pathway_from_layers(s.segments, n_layers, _open_layers(step["ranges"]),
                                    targets=targets).edge_accounting(s.n_positions)
                for s in search]
        row = _aggregate("search", step["step"],
                         f"step {step['step']}: {step['edge_type']} {step['change']}", None,
                         "search", [], kept)
        row.update(samples=len(search), accuracy=100 * step["accuracy"],
                   correct=round(step["accuracy"] * len(search)))
        rows.append(row)

    path = [path_row(step) for step in result.steps]
    if not result.complete:
        path.append(path_row({**result.steps[-1], "step": len(result.steps), "pass": None,
                              "edge_type": "", "change": f"stopped: budget spent, the pathway "
                              f"of step {result.steps[-1]['step']} is kept"}, complete=False))

    per_sample_rows = []
    chosen = [s for s, _ in held_out if s.full_correct][:per_sample]
    if chosen:
        task_open = result.open_layers()
        for sample, found in zip(chosen, search_together(
                backbone, [[s] for s in chosen], budget=sample_budget, **options)):
            sample_open = found.open_layers()
            spec = pathway_from_layers(sample.segments, n_layers, sample_open, targets=targets)
            kept, total = spec.edge_accounting(sample.n_positions)
            for name in task_open:
                for layer in range(n_layers):
                    per_sample_rows.append({
                        "sample": sample.id, "task": sample.task, "edge_type": name,
                        "layer": layer, "task_open": layer in task_open[name],
                        "sample_open": layer in sample_open[name],
                        "sample_retained": kept / total, "evaluations": found.evaluations,
                        "complete": found.complete})
    curve_rows = [{**row, "layers": json.dumps(row["layers"])}
                  for row in (curves["rows"] if curves else [])]
    return {"result": result, "split": split,
            "curves": None if curves is None else {
                key: curves[key] for key in ("evaluations", "forwards", "window", "threshold")},
            "tables": {"discover": rows, "discover_path": path,
                       "discover_samples": per_sample_rows, "discover_curves": curve_rows}}


def variability(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per edge type and layer, from ``discover_samples`` rows: how many per-sample pathways
    there are, how many keep the layer open, and the share that differ from the per-task
    pathway there (open where it is closed, or closed where it is open)."""
    cells: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for row in rows:
        cells.setdefault((row["edge_type"], int(row["layer"])), []).append(row)
    return [{"edge_type": name, "layer": layer, "samples": len(group),
             "task_open": bool(group[0]["task_open"]),
             "sample_open": sum(bool(r["sample_open"]) for r in group),
             "differ": sum(bool(r["sample_open"]) != bool(r["task_open"]) for r in group)
             / len(group)}
            for (name, layer), group in cells.items()]
