"""Video benchmarks as one :class:`Sample` type: multiple choice (TVBench, MVBench, TOMATO,
Video-MME, LongVideoBench) and open-ended (TVBench open-ended, VCGBench).

Each loader reads a local root directory laid out exactly as the benchmark publishes it (see
``docs/data.md``); nothing is downloaded. Problems are reported with the file and field at fault:
a strict load raises :class:`~mapflow_tl.data.errors.DataError` at the first one, a non-strict
load keeps going and records each bad sample as a :class:`Skipped`.

    data = load_tvbench("/datasets/TVBench", tasks=["action_antonym"], limit=20)
    for sample in data: ...          # Sample(id, task, video, question, options, answer_index, ...)
    data.skipped                     # [] in a strict load; Skipped(file, index, field, reason) else
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from .errors import DataError
from .subtitles import Subtitles

__all__ = [
    "LoadedBenchmark",
    "MVBENCH_TASKS",
    "Sample",
    "Skipped",
    "TOMATO_TASKS",
    "TVBENCH_TASKS",
    "VCGBENCH_TASKS",
    "load_longvideobench",
    "load_mvbench",
    "load_tomato",
    "load_tvbench",
    "load_tvbench_open_ended",
    "load_vcgbench",
    "load_videomme",
    "tvbench_open_ended",
    "task_choices",
    "task_key",
]


@dataclass(frozen=True)
class Sample:
    """One multiple-choice question about one video, the same for every benchmark.

    - ``id``: unique within the dataset, "<task file stem>/<entry index or key>".
    - ``question``: the question text alone, without the options.
    - ``options``: the answer options in benchmark order; ``answer_index`` points into it.
    - ``video``: a video file, GIF or frame folder; ``start``/``end``: the part of it the
      question is about, in seconds (``None``: the whole video).
    - ``source``: "<annotation file>[<entry>]", where the sample came from; ``entry``: that
      entry's list position or key (``None`` for a sample built by hand).
    - ``metadata``: the benchmark's other fields of the entry, untouched.
    - open-ended questions (TVBench open-ended, VCGBench) have no ``options`` and
      ``answer_index=None``; ``reference`` is their reference answer text and ``answer_prompt``
      the text the official code starts the assistant's answer with (``None``: none).
    - ``frame_sampler``: the benchmark's official frame sampler (a name in
      :data:`~mapflow_tl.data.video.FRAME_SAMPLERS`, set from the dataset registry; ``None``: the
      model family's own); ``duration``: the annotation's length in seconds where the sampler
      needs it (LongVideoBench); ``subtitles``: a :class:`~mapflow_tl.data.subtitles.Subtitles`
      when subtitles were asked for (``None``: off, the default).
    """

    id: str
    dataset: str
    task: str
    video: Path
    question: str
    options: tuple[str, ...]
    answer_index: int | None
    start: float | None = None
    end: float | None = None
    source: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    entry: int | str | None = None
    reference: str | None = None
    answer_prompt: str | None = None
    frame_sampler: str | None = None
    duration: float | None = None
    subtitles: Any = None

    @property
    def open_ended(self) -> bool:
        """Whether the question is asked without options (answered in free text)."""
        return not self.options

    @property
    def answer(self) -> str:
        """The text of the true option (an open-ended question: its reference answer)."""
        if self.answer_index is None:
            return "" if self.reference is None else self.reference
        return self.options[self.answer_index]

    @property
    def answer_letter(self) -> str | None:
        """The true option's letter, "A" for index 0 (``None`` for an open-ended question)."""
        return None if self.answer_index is None else string.ascii_uppercase[self.answer_index]

    @property
    def bounds(self) -> tuple[float, float] | None:
        """(start, end) in seconds, or ``None`` when the whole video is used."""
        if self.start is None or self.end is None:
            return None
        return (self.start, self.end)


@dataclass(frozen=True)
class Skipped:
    """A sample (or whole file) left out of a non-strict load, and why.

    ``file`` is the annotation file or video at fault, ``index`` the entry (list position or
    key; ``None`` for the whole file), ``field`` the offending field (``None``: the whole entry).
    """

    file: str
    index: int | str | None
    field: str | None
    reason: str
    task: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "file": self.file,
            "index": self.index,
            "field": self.field,
            "reason": self.reason,
            "task": self.task,
        }

    def __str__(self) -> str:
        where = self.file
        if self.index is not None:
            where += f" entry {self.index}"
        if self.field is not None:
            where += f" field '{self.field}'"
        return f"{where}: {self.reason}"


@dataclass
class LoadedBenchmark:
    """The samples of one load, in file order, plus what was skipped (non-strict loads only).

    Iterating, ``len`` and indexing go over ``samples``.
    """

    name: str
    root: Path
    samples: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    def counts(self) -> dict[str, int]:
        """Number of samples per task, in load order."""
        counts: dict[str, int] = {}
        for sample in self.samples:
            counts[sample.task] = counts.get(sample.task, 0) + 1
        return counts


# Task tables. TVBench: the HF dataset FunAILab/TVBench (json/<task>.json, video/<task>/...),
# with the tasks whose questions are about a time window, as in its ``infer.ipynb`` data_list.
TVBENCH_TASKS: dict[str, tuple[str, bool]] = {
    "action_antonym": ("Action Antonym", False),
    "action_count": ("Action Count", False),
    "action_localization": ("Action Localization", True),
    "action_sequence": ("Action Sequence", True),
    "egocentric_sequence": ("Egocentric Sequence", False),
    "moving_direction": ("Moving Direction", False),
    "object_count": ("Object Count", False),
    "object_shuffle": ("Object Shuffle", False),
    "scene_transition": ("Scene Transition", False),
    "unexpected_action": ("Unexpected Action", False),
}

# MVBench: the HF dataset OpenGVLab/MVBench (json/<task>.json; videos unpacked under video/),
# with the video folder and bounds flag of each task from VideoChat2's mvbench.ipynb data_list.
MVBENCH_TASKS: dict[str, tuple[str, str, bool]] = {
    "action_sequence": ("Action Sequence", "star/Charades_v1_480", True),
    "action_prediction": ("Action Prediction", "star/Charades_v1_480", True),
    "action_antonym": ("Action Antonym", "ssv2_video", False),
    "fine_grained_action": ("Fine-grained Action", "Moments_in_Time_Raw/videos", False),
    "unexpected_action": ("Unexpected Action", "FunQA_test/test", False),
    "object_existence": ("Object Existence", "clevrer/video_validation", False),
    "object_interaction": ("Object Interaction", "star/Charades_v1_480", True),
    "object_shuffle": ("Object Shuffle", "perception/videos", False),
    "moving_direction": ("Moving Direction", "clevrer/video_validation", False),
    "action_localization": ("Action Localization", "sta/sta_video", True),
    "scene_transition": ("Scene Transition", "scene_qa/video", False),
    "action_count": ("Action Count", "perception/videos", False),
    "moving_count": ("Moving Count", "clevrer/video_validation", False),
    "moving_attribute": ("Moving Attribute", "clevrer/video_validation", False),
    "state_change": ("State Change", "perception/videos", False),
    "fine_grained_pose": ("Fine-grained Pose", "nturgbd", False),
    "character_order": ("Character Order", "perception/videos", False),
    "egocentric_navigation": ("Egocentric Navigation", "vlnqa", False),
    "episodic_reasoning": ("Episodic Reasoning", "tvqa/frames_fps3_hq", True),  # frame folders
    "counterfactual_inference": ("Counterfactual Inference", "clevrer/video_validation", False),
}

# MVBench's "video" revision on the Hub (what lmms-eval reads): the source folders sit at the root
# beside json/ (no video/ level), SSv2 and NTU RGB+D converted to mp4 (``ssv2_video_mp4``,
# ``nturgbd_convert``), and the windowed tasks' clips already cut to the question's window
# (``*_segment``), so their start/end (seconds in the uncut video) must not be applied again.
# Per task: candidate folders in order, each with whether start/end apply to its videos.
MVBENCH_VIDEO_REVISION: dict[str, tuple[tuple[str, bool], ...]] = {
    "action_sequence": (("star/Charades_segment", False), ("star/Charades_v1_480", True)),
    "action_prediction": (("star/Charades_segment", False), ("star/Charades_v1_480", True)),
    "object_interaction": (("star/Charades_segment", False), ("star/Charades_v1_480", True)),
    "action_localization": (("sta/sta_video_segment", False), ("sta/sta_video", True)),
    "episodic_reasoning": (("tvqa/video_fps3_hq_segment", False), ("tvqa/frames_fps3_hq", True)),
    "action_antonym": (("ssv2_video_mp4", False), ("ssv2_video", False)),
    "fine_grained_pose": (("nturgbd_convert", False), ("nturgbd", False)),
}

#: Videos a benchmark's download does not include: (dataset, task) -> where they come from.
NOT_DISTRIBUTED: dict[tuple[str, str], str] = {
    ("mvbench", "fine_grained_pose"): (
        "MVBench does not distribute the NTU RGB+D videos of Fine-grained Pose (they are "
        "licensed by the ROSE Lab, NTU Singapore): request NTU RGB+D at "
        "https://rose1.ntu.edu.sg/dataset/actionRecognition/ and put the listed videos in {folder}, "
        "or leave the task out (--task / tasks=)"),
}

# TOMATO: github yale-nlp/TOMATO, data/<reasoning type>.json (src/config.json "reasoning_types").
TOMATO_TASKS: tuple[str, ...] = (
    "count",
    "direction",
    "rotation",
    "shape&trend",
    "velocity&frequency",
    "visual_cues",
)


MISSING_TASK_FILE = ("task file missing: download it, or choose the tasks you have (--task on the "
                     "command line, tasks= in Python)")


class _Collector:
    """Raises at the first problem (strict) or records it as Skipped (non-strict)."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.skipped: list[Skipped] = []

    def problem(
        self,
        file: Path | str,
        index: int | str | None,
        field_name: str | None,
        reason: str,
        task: str | None = None,
    ) -> None:
        record = Skipped(str(file), index, field_name, reason, task)
        if self.strict:
            fix = ("fix the video or the annotation" if field_name == "video" else
                   "fix the annotation" if index is not None or field_name else "fix the file")
            raise DataError(
                f"{record}; {fix}, or skip it (run without --strict; strict=False in Python)",
                path=file,
                field=field_name,
            )
        self.skipped.append(record)


def task_key(name: str) -> str:
    """The form every loader matches task names in: case, spaces, underscores and hyphens
    ignored, so "Action Sequence" (how tables print it), "action_sequence" (the file stem),
    "action sequence" and "ActionSequence" name the same task."""
    return "".join(ch for ch in str(name).lower() if not (ch.isspace() or ch in "_-"))


def task_choices(stems: Sequence[str], display: Mapping[str, str]) -> str:
    """The tasks for an error message, in both forms a task is known by:
    "action_sequence ('Action Sequence'), colour"."""
    return ", ".join(f"{stem} ({display[stem]!r})" if display.get(stem, stem) != stem else stem
                     for stem in stems) or "none"


def _select(
    available: Sequence[str], display: Mapping[str, str], tasks: Sequence[str] | None, dataset: str
) -> list[str]:
    """File stems to load, in ``available`` order; ``tasks`` may name stems or display names
    (matched by :func:`task_key`)."""
    if tasks is None:
        return list(available)
    lookup = {task_key(stem): stem for stem in available}
    lookup.update({task_key(display.get(stem, stem)): stem for stem in available})
    chosen = []
    for name in tasks:
        stem = lookup.get(task_key(name))
        if stem is None:
            raise DataError(
                f"{dataset} has no task {name!r} under this data root; available: "
                f"{task_choices(available, display)} (by file stem or name; case, spaces and "
                f"underscores ignored)",
                field="tasks",
            )
        if stem not in chosen:
            chosen.append(stem)
    return chosen


def _read_json(path: Path, collector: _Collector, task: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        collector.problem(path, None, None, f"unreadable annotation file ({error})", task)
        return None
    except RecursionError:
        # json nests one Python call per level: a hostile or broken file of deeply nested
        # brackets must be one bad file, not a crash of the whole load
        collector.problem(path, None, None, "unreadable annotation file (JSON nested too deeply "
                                            "to read; no benchmark nests more than a few levels)",
                          task)
        return None


def _require_root(root: str | Path, sub: str, dataset: str, layout: str) -> Path:
    root = Path(root)
    if not (root / sub).is_dir():
        raise DataError(
            f"{root / sub}: not found; a {dataset} data root must hold {layout}",
            path=root / sub,
        )
    return root


def _text(entry: Mapping, name: str) -> str:
    value = entry.get(name)
    if not isinstance(value, str) or not value.strip():
        if name not in entry:
            raise _FieldError(name, "missing")
        raise _FieldError(name, f"not a non-empty string: {value!r}")
    return value


def _options(entry: Mapping, name: str) -> tuple[str, ...]:
    value = entry.get(name)
    if name not in entry:
        raise _FieldError(name, "missing")
    if not isinstance(value, list) or len(value) < 2:
        raise _FieldError(name, f"needs a list of at least 2 options, got {value!r}")
    for index, option in enumerate(value):
        # str() would turn null into the option "None" and a list into its repr: only text and
        # plain numbers (TVBench's counts, "3" or 3) are option texts
        if isinstance(option, bool) or not isinstance(option, (str, int, float)) or (
                isinstance(option, float) and not math.isfinite(option)):
            raise _FieldError(name, f"option {index} is {option!r}, not a text; every option "
                                    f"must be a non-empty string")
        if isinstance(option, str) and not option.strip():
            raise _FieldError(name, f"option {index} is empty text {option!r}")
    options = tuple(str(option) for option in value)
    # the same test the prompt builder applies (case and spacing ignored): options that differ
    # only there would be two letters for one answer
    keys = [" ".join(option.split()).casefold() for option in options]
    if len(set(keys)) != len(keys):
        raise _FieldError(name, f"options are not distinct: {list(options)}")
    if len(options) > len(string.ascii_uppercase):
        raise _FieldError(name, f"{len(options)} options; at most 26 can be lettered")
    return options


def _seconds(entry: Mapping, name: str) -> float:
    value = entry.get(name)
    if name not in entry:
        raise _FieldError(name, "missing (this task's questions are about a time window)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _FieldError(name, f"not a number of seconds: {value!r}")
    if not math.isfinite(value):  # Python's json reads NaN and Infinity
        raise _FieldError(name, f"not a finite number of seconds: {value!r}")
    return float(value)


class _FieldError(Exception):
    def __init__(self, field_name: str, reason: str) -> None:
        super().__init__(reason)
        self.field_name = field_name
        self.reason = reason


def _check_video(video: Path, check_videos: bool, missing: str | None = None) -> None:
    """``missing``: what to say when the video is absent (why, and where it comes from)."""
    if not check_videos:
        return
    try:
        exists = video.exists()
    except (OSError, ValueError) as error:  # a name too long for the file system, say
        reason = getattr(error, "strerror", None) or error
        raise _FieldError("video", f"not a usable file name ({reason}): {video.name[:80]!r}"
                                   f"{'…' if len(video.name) > 80 else ''}") from None
    if not exists:
        raise _FieldError("video", missing or f"video not found: {video}")


def _inside(root: Path, folder: Path, name: str, allow_outside_root: bool) -> Path:
    """``folder / name`` for an annotation's relative file name, refusing a name that leaves the
    benchmark root (an absolute path, ``..`` past the root) unless ``allow_outside_root``: a
    hostile or mistaken annotation file must not make a run read files elsewhere. The check is
    on the names (no symlinks resolved), so a video folder that is a symlink to another disk is
    fine."""
    path = folder / name
    if allow_outside_root:
        return path
    escapes = os.path.isabs(name) or not os.path.normpath(path).startswith(
        os.path.join(os.path.normpath(root), ""))
    if escapes:
        kind = "an absolute path" if os.path.isabs(name) else "a path"
        raise _FieldError("video", f"{name!r} is {kind} outside the benchmark root {root}; fix "
                                   f"the annotation, or allow it explicitly (--allow-outside-root "
                                   f"on the command line, allow_outside_root=True in Python)")
    return path


def _number(text: str) -> float | None:
    try:
        return float(text.strip())
    except ValueError:
        return None


def _answer_index(answer: Any, options: tuple[str, ...]) -> int:
    """The option an answer names: its exact text, or for a number (JSON ``3`` or ``3.0``) the one
    candidate of that value ("3"). Anything else is an error; a candidate that differs only in
    case or surrounding spaces is named as "did you mean", never taken silently."""
    if isinstance(answer, str) and answer in options:
        return options.index(answer)
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        if str(answer) in options:
            return options.index(str(answer))
        equal = [i for i, option in enumerate(options) if _number(option) == answer]
        if len(equal) == 1:
            return equal[0]
    near = [option for option in options
            if isinstance(answer, (str, int, float)) and not isinstance(answer, bool)
            and option.strip().casefold() == str(answer).strip().casefold()]
    hint = f"; did you mean {near[0]!r}?" if len(near) == 1 else (
        f"; did you mean one of {near}?" if near else "")
    raise _FieldError("answer", f"{answer!r} is not one of the candidates {list(options)}{hint}")


def _read_task_file(
    path: Path,
    task: str,
    collector: _Collector,
    limit: int | None,
    build: Callable[[int | str, Mapping[str, Any]], Sample],
    *,
    keyed: bool = False,
) -> list[Sample]:
    """The samples of one task file: a JSON list of entries (ids: list positions) or, ``keyed``,
    an object of id → entry. ``build(id, entry)`` makes a sample or raises ``_FieldError``; a
    missing or unreadable file, a file of the wrong shape and every bad entry are recorded with
    ``collector`` (which raises in a strict load). At most ``limit`` samples, in file order."""
    if not path.is_file():
        collector.problem(path, None, None, MISSING_TASK_FILE, task)
        return []
    entries = _read_json(path, collector, task)
    if entries is None:
        return []
    if not isinstance(entries, dict if keyed else list):
        expected = "a JSON object of id -> entry" if keyed else "a JSON list of entries"
        collector.problem(path, None, None,
                          f"expected {expected}, got {type(entries).__name__}", task)
        return []
    samples: list[Sample] = []
    for key, entry in (entries.items() if keyed else enumerate(entries)):
        if limit is not None and len(samples) >= limit:
            break
        try:
            if not isinstance(entry, dict):
                raise _FieldError("<entry>", f"expected an object, got {type(entry).__name__}")
            samples.append(build(key, entry))
        except _FieldError as error:
            field_name = None if error.field_name == "<entry>" else error.field_name
            collector.problem(path, key, field_name, error.reason, task)
    return samples


def _load_candidates_format(
    *,
    dataset: str,
    json_dir: Path,
    stems: Sequence[str],
    task_of: Callable[[str], str],
    video_dir_of: Callable[[str], Path],
    bounds_mode: Callable[[str], str],
    limit: int | None,
    collector: _Collector,
    check_videos: bool,
    root: Path,
    allow_outside_root: bool,
    missing_video: Callable[[str], str | None] = lambda stem: None,
    window_hint: str = "",
) -> list[Sample]:
    """The MVBench-style task JSON that TVBench (and SynthTV) share: a list of
    ``{"video", "question", "candidates", "answer"[, "start", "end"]}`` with ``answer`` the text of
    one candidate. ``bounds_mode(stem)``: "required" (start/end must be there), "optional" (used
    when there) or "ignored" (the reference reads no bounds for the task). Video names may not
    leave ``root`` unless ``allow_outside_root``; ``missing_video(stem)``: the message for a
    video the benchmark does not distribute (``None``: "video not found")."""
    def build(stem: str, task: str, path: Path, index: int, entry: Mapping[str, Any]) -> Sample:
        video = _inside(root, video_dir_of(stem), _text(entry, "video"), allow_outside_root)
        question = _text(entry, "question")
        options = _options(entry, "candidates")
        if "answer" not in entry:
            raise _FieldError("answer", "missing")
        answer_index = _answer_index(entry.get("answer"), options)
        start = end = None
        mode = bounds_mode(stem)
        has_bounds = "start" in entry or "end" in entry
        if mode == "required" or (mode == "optional" and has_bounds):
            try:
                start, end = _seconds(entry, "start"), _seconds(entry, "end")
            except _FieldError as error:
                if mode == "required" and error.reason.startswith("missing"):
                    error.reason += window_hint
                raise
            if end < start:
                raise _FieldError("end", f"end {end} s is before start {start} s")
        missing = missing_video(stem)
        _check_video(video, check_videos,
                     None if missing is None else f"video not found: {video}; {missing}")
        # start/end stay in metadata when they were not applied (a task that ignores them)
        known = {"video", "question", "candidates", "answer"} | (
            {"start", "end"} if start is not None else set())
        return Sample(id=f"{stem}/{index}", dataset=dataset, task=task, video=video,
                      question=question, options=options, answer_index=answer_index,
                      start=start, end=end, source=f"{path}[{index}]",
                      metadata={k: v for k, v in entry.items() if k not in known}, entry=index)

    samples: list[Sample] = []
    for stem in stems:
        path, task = json_dir / f"{stem}.json", task_of(stem)
        samples += _read_task_file(
            path, task, collector, limit,
            lambda index, entry, stem=stem, task=task, path=path:
                build(stem, task, path, index, entry))
    return samples


def load_tvbench(
    data_root: str | Path,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    *,
    strict: bool = True,
    check_videos: bool = True,
    require_windows: bool = True,
    allow_outside_root: bool = False,
) -> LoadedBenchmark:
    """TVBench as published on Hugging Face (FunAILab/TVBench, read as its ``infer.ipynb`` does):
    ``<root>/json/<task>.json`` lists ``{"video", "question", "candidates", "answer"}`` (answer =
    the text of one candidate; Action Sequence and Action Localization add ``"start"``/``"end"``
    in seconds), videos at ``<root>/video/<task>/<video>``.

    Every ``json/*.json`` is loaded: a file that is not one of the ten official tasks (a SynthTV
    task, say) is read the same way, with its file stem as task name, its ``start``/``end`` used
    when given. An entry of Action Sequence or Action Localization without ``start``/``end`` is
    an error naming the entry (the question is about a window, and the whole video would answer
    another question); ``require_windows=False`` reads such entries as whole videos, for a
    SynthTV set, which writes these task names without windows. The other official tasks'
    bounds are ignored, as the reference does. Video names that leave the root (``../``, an
    absolute path) are refused unless ``allow_outside_root``. ``tasks`` selects tasks by stem or
    name, ``limit`` caps the samples per task; ``strict`` and ``check_videos`` as in
    :func:`~mapflow_tl.data.datasets.load_dataset`.
    """
    root = _require_root(data_root, "json", "TVBench", "json/<task>.json and video/<task>/")
    json_dir = root / "json"
    available = sorted(p.stem for p in json_dir.glob("*.json"))
    display = {stem: TVBENCH_TASKS.get(stem, (stem, False))[0] for stem in available}
    stems = _select(available, display, tasks, "TVBench")

    def bounds_mode(stem: str) -> str:
        if stem in TVBENCH_TASKS:
            if not TVBENCH_TASKS[stem][1]:
                return "ignored"
            return "required" if require_windows else "optional"
        return "optional"

    collector = _Collector(strict)
    samples = _load_candidates_format(
        dataset="tvbench",
        json_dir=json_dir,
        stems=stems,
        task_of=lambda stem: display[stem],
        video_dir_of=lambda stem: root / "video" / stem,
        bounds_mode=bounds_mode,
        limit=limit,
        collector=collector,
        check_videos=check_videos,
        root=root,
        allow_outside_root=allow_outside_root,
        window_hint=" (a SynthTV set, written without windows, loads with --dataset synthtv "
                    "--data-root, or require_windows=False in Python)",
    )
    return LoadedBenchmark("tvbench", root, samples, collector.skipped)


def _mvbench_folder(root: Path, stem: str) -> tuple[Path, bool]:
    """The video folder of an MVBench task and whether its entries' start/end apply to the
    videos in it, for either published layout: ``video/<source>/`` (the main revision, unpacked)
    or the "video" revision's source folders at the root (:data:`MVBENCH_VIDEO_REVISION`)."""
    _, source, bounded = MVBENCH_TASKS[stem]
    if (root / "video").is_dir():
        return root / "video" / source, bounded
    candidates = MVBENCH_VIDEO_REVISION.get(stem, ((source, bounded),))
    for folder, applies in candidates:
        if (root / folder).is_dir():
            return root / folder, applies
    return root / candidates[0][0], candidates[0][1]


def load_mvbench(
    data_root: str | Path,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    *,
    strict: bool = True,
    check_videos: bool = True,
    allow_outside_root: bool = False,
) -> LoadedBenchmark:
    """MVBench as published on Hugging Face (OpenGVLab/MVBench): ``<root>/json/<task>.json`` in the
    same entry format as TVBench, and the videos in either published layout:

    - the main revision's archives unpacked under ``<root>/video/`` into the folders of
      VideoChat2's ``mvbench.ipynb`` data_list (``star/Charades_v1_480``, ``ssv2_video``,
      ``tvqa/frames_fps3_hq`` frame folders, ...; :data:`MVBENCH_TASKS`); start/end are used for
      the tasks that list them there;
    - the "video" revision: the source folders at the root beside ``json/`` (``star/``,
      ``ssv2_video_mp4/``, ``nturgbd_convert/``, ...; :data:`MVBENCH_VIDEO_REVISION`), where the
      windowed tasks' clips are already cut to their window (start/end kept in ``metadata``, not
      applied again).

    MVBench does not distribute the NTU RGB+D videos (Fine-grained Pose): a missing one says where
    they come from. The 20 official tasks are loaded; a missing task file is a problem (choose a
    subset with ``tasks``). Video names that leave the root are refused unless
    ``allow_outside_root``. Other arguments as :func:`load_tvbench`.
    """
    root = _require_root(data_root, "json", "MVBench", "json/<task>.json and the video folders")
    display = {stem: spec[0] for stem, spec in MVBENCH_TASKS.items()}
    stems = _select(list(MVBENCH_TASKS), display, tasks, "MVBench")
    folders = {stem: _mvbench_folder(root, stem) for stem in stems}

    def missing_video(stem: str) -> str | None:
        hint = NOT_DISTRIBUTED.get(("mvbench", stem))
        return None if hint is None else hint.format(folder=folders[stem][0])

    collector = _Collector(strict)
    samples = _load_candidates_format(
        dataset="mvbench",
        json_dir=root / "json",
        stems=stems,
        task_of=lambda stem: display[stem],
        video_dir_of=lambda stem: folders[stem][0],
        bounds_mode=lambda stem: "required" if folders[stem][1] else "ignored",
        limit=limit,
        collector=collector,
        check_videos=check_videos,
        root=root,
        allow_outside_root=allow_outside_root,
        missing_video=missing_video,
    )
    return LoadedBenchmark("mvbench", root, samples, collector.skipped)


def _tomato_answer(value: Any, options: tuple[str, ...]) -> int:
    """TOMATO stores the answer as the option index (``2``, or ``2.0`` from a float column); a
    letter ("B") is accepted too."""
    if isinstance(value, bool):
        raise _FieldError("answer", f"not an option index or letter: {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        index = value
    elif isinstance(value, str) and value.strip().upper() in tuple(string.ascii_uppercase):
        index = string.ascii_uppercase.index(value.strip().upper())
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        # isdigit alone accepts "²" and other digits int() cannot read
        index = int(value.strip())
    else:
        raise _FieldError("answer", f"not an option index or letter: {value!r}")
    if not 0 <= index < len(options):
        raise _FieldError("answer", f"{value!r} is not among the {len(options)} options")
    return index


def load_tomato(
    data_root: str | Path,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    *,
    strict: bool = True,
    check_videos: bool = True,
    allow_outside_root: bool = False,
) -> LoadedBenchmark:
    """TOMATO as published on GitHub (yale-nlp/TOMATO, read as its ``src/evaluate.py`` does):
    ``<root>/data/<reasoning type>.json`` maps ids to ``{"question", "options", "answer"
    (option index), "key", "demonstration_type", ...}``; the video is
    ``<root>/videos/<demonstration_type>/<key>.mp4``. The six reasoning types (:data:`TOMATO_TASKS`)
    are loaded; a missing file is a problem. A ``key`` or ``demonstration_type`` that leads
    outside the root is refused unless ``allow_outside_root``. Other arguments as
    :func:`load_tvbench`.
    """
    root = _require_root(data_root, "data", "TOMATO", "data/<reasoning type>.json and videos/")
    stems = _select(list(TOMATO_TASKS), {}, tasks, "TOMATO")
    collector = _Collector(strict)
    known = {"question", "options", "answer", "key", "demonstration_type"}

    def build(stem: str, path: Path, key: str, entry: Mapping[str, Any]) -> Sample:
        question = _text(entry, "question")
        options = _options(entry, "options")
        if "answer" not in entry:
            raise _FieldError("answer", "missing")
        answer_index = _tomato_answer(entry["answer"], options)
        video_key = _text(entry, "key")
        folder = _text(entry, "demonstration_type")
        video = _inside(root, root / "videos", f"{folder}/{video_key}.mp4", allow_outside_root)
        _check_video(video, check_videos)
        return Sample(id=f"{stem}/{key}", dataset="tomato", task=stem, video=video,
                      question=question, options=options, answer_index=answer_index,
                      source=f"{path}[{key}]",
                      metadata={k: v for k, v in entry.items() if k not in known}, entry=key)

    samples: list[Sample] = []
    for stem in stems:
        path = root / "data" / f"{stem}.json"
        samples += _read_task_file(
            path, stem, collector, limit,
            lambda key, entry, stem=stem, path=path: build(stem, path, key, entry), keyed=True)
    return LoadedBenchmark("tomato", root, samples, collector.skipped)


# ------------------------------------------------------------------ long-video benchmarks
#: Video-MME (HF lmms-lab/Video-MME): the annotation parquet, and the columns a sample needs.
VIDEOMME_PARQUET = "videomme/test-00000-of-00001.parquet"
VIDEOMME_COLUMNS = ("videoID", "question_id", "task_type", "question", "options", "answer")
#: The video file types the official loader tries, in its order (tasks/eval/videomme).
VIDEO_SUFFIXES = ("mp4", "avi", "mov", "mkv")


def _read_parquet_rows(path: Path, columns: Sequence[str], collector: _Collector,
                       dataset: str) -> list[dict[str, Any]] | None:
    """The rows of a parquet file as dicts (None, recorded with ``collector``, when it is missing,
    unreadable or lacks one of ``columns``)."""
    if not path.is_file():
        collector.problem(path, None, None, f"annotation file missing: a {dataset} data root "
                                            f"holds {VIDEOMME_PARQUET} as published")
        return None
    try:
        import pyarrow.parquet as pq
    except ImportError:  # a core dependency; only a broken install lacks it
        raise DataError(f"{path}: reading {dataset}'s parquet needs pyarrow: pip install "
                        f"pyarrow", path=path) from None
    try:
        table = pq.read_table(path)
    except Exception as error:  # noqa: BLE001 - pyarrow raises its own error types
        collector.problem(path, None, None, f"unreadable parquet file ({error})")
        return None
    missing = [name for name in columns if name not in table.column_names]
    if missing:
        collector.problem(path, None, None, f"missing column(s) {missing} (has "
                                            f"{table.column_names})")
        return None
    return table.to_pylist()


def _find_video(root: Path, folder: Path, name: str, suffixes: Sequence[str],
                allow_outside_root: bool) -> Path:
    """``folder/name.<suffix>`` for the first suffix that exists (the first one when none does,
    for the "not found" message)."""
    candidates = [_inside(root, folder, f"{name}.{suffix}", allow_outside_root)
                  for suffix in suffixes]
    return next((path for path in candidates if path.exists()), candidates[0])


def _lettered_options(entry: Mapping, name: str) -> tuple[str, ...]:
    """Video-MME's options, each written with its letter ("A. Apples."): the texts without the
    label (every benchmark's options are rendered by the prompt code, labels included). An
    option whose label is not its own letter is an error, since the answer names a letter."""
    value = entry.get(name)
    if hasattr(value, "tolist"):  # a numpy array from a pandas-written file
        value = value.tolist()
    labelled = _options({name: value}, name)
    texts = []
    for index, option in enumerate(labelled):
        label = f"{string.ascii_uppercase[index]}."
        if not option.startswith(label) or not option[len(label):].strip():
            raise _FieldError(name, f"option {index} {option!r} does not start with its letter "
                                    f"{label!r} followed by its text")
        texts.append(option[len(label):].strip())
    return _options({name: texts}, name)


def _letter_answer(value: Any, options: tuple[str, ...]) -> int:
    """An answer given as the letter of an option ("B")."""
    letters = string.ascii_uppercase[:len(options)]
    if not isinstance(value, str) or value.strip().upper() not in tuple(letters):
        raise _FieldError("answer", f"{value!r} is not one of the option letters "
                                    f"{', '.join(letters)}")
    return letters.index(value.strip().upper())


def load_videomme(
    data_root: str | Path,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    *,
    strict: bool = True,
    check_videos: bool = True,
    allow_outside_root: bool = False,
    subtitles: bool = False,
) -> LoadedBenchmark:
    """Video-MME as published on Hugging Face (lmms-lab/Video-MME), read as the official
    Map-the-Flow loader does (``tasks/eval/videomme``): ``<root>/videomme/test-00000-of-00001.
    parquet`` with one row per question (``video_id, duration, domain, sub_category, url,
    videoID, question_id, task_type, question, options, answer``; ``options`` are written with
    their letters, "A. Apples.", ``answer`` is a letter), videos unpacked from
    ``videos_chunked_*.zip`` to ``<root>/data/<videoID>.mp4`` (``.avi``, ``.mov``, ``.mkv`` are
    tried too). Tasks are the 12 ``task_type`` values; the whole video is used. Subtitles
    (``subtitles=True``) are ``<root>/subtitle/<videoID>.srt`` (``subtitle.zip`` unpacked), put
    into the prompt by lmms-eval's official rule (:mod:`mapflow_tl.data.subtitles`); off by
    default, as in the Map-the-Flow code. Other arguments as :func:`load_tvbench`.
    """
    root = _require_root(data_root, "videomme", "Video-MME",
                         f"{VIDEOMME_PARQUET} and data/<videoID>.mp4")
    subtitle_folder = root / "subtitle"
    if subtitles and not subtitle_folder.is_dir():
        raise DataError(f"{subtitle_folder}: not found; Video-MME subtitles are "
                        f"subtitle/<videoID>.srt (unpack subtitle.zip there) or leave "
                        f"--subtitles off", path=subtitle_folder, field="subtitles")
    path = root / VIDEOMME_PARQUET
    collector = _Collector(strict)
    rows = _read_parquet_rows(path, VIDEOMME_COLUMNS, collector, "Video-MME") or []
    available = list(dict.fromkeys(str(row.get("task_type")) for row in rows
                                   if isinstance(row.get("task_type"), str)))
    stems = _select(available, {}, tasks, "Video-MME")
    known = {"videoID", "question_id", "task_type", "question", "options", "answer"}
    counts: dict[str, int] = {}
    samples: list[Sample] = []
    for index, row in enumerate(rows):
        task = row.get("task_type")
        if isinstance(task, str) and task not in stems:
            continue
        if isinstance(task, str) and limit is not None and counts.get(task, 0) >= limit:
            continue
        try:
            task = _text(row, "task_type")
            key = _text(row, "question_id")
            question = _text(row, "question")
            options = _lettered_options(row, "options")
            answer_index = _letter_answer(row.get("answer"), options)
            video = _find_video(root, root / "data", _text(row, "videoID"), VIDEO_SUFFIXES,
                                allow_outside_root)
            _check_video(video, check_videos)
            track = None
            if subtitles:
                srt = _inside(root, subtitle_folder, _text(row, "videoID") + ".srt",
                              allow_outside_root)
                # the official prompt says "No subtitles available" for a video without a file
                track = Subtitles("videomme", srt if srt.is_file() else None)
        except _FieldError as error:
            collector.problem(path, index, error.field_name, error.reason,
                              task if isinstance(task, str) else None)
            continue
        counts[task] = counts.get(task, 0) + 1
        samples.append(Sample(
            id=f"{task}/{key}", dataset="videomme", task=task, video=video, question=question,
            options=options, answer_index=answer_index, source=f"{path}[{index}]",
            metadata={k: v for k, v in row.items() if k not in known}, entry=index,
            subtitles=track))
    return LoadedBenchmark("videomme", root, samples, collector.skipped)


#: LongVideoBench (HF longvideobench/LongVideoBench): the validation annotations.
LONGVIDEOBENCH_FILE = "lvb_val.json"


def load_longvideobench(
    data_root: str | Path,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    *,
    strict: bool = True,
    check_videos: bool = True,
    allow_outside_root: bool = False,
    subtitles: bool = False,
) -> LoadedBenchmark:
    """LongVideoBench as published on Hugging Face (longvideobench/LongVideoBench), read as the
    official Map-the-Flow loader does (``tasks/eval/longvideobench``): ``<root>/lvb_val.json``
    lists ``{"video_id", "question", "candidates", "correct_choice" (option index),
    "question_category", "video_path", "duration", "subtitle_path", "id", ...}``; the video is
    ``<root>/videos/<video_path>``. Tasks are the ``question_category`` values (``T3O``,
    ``S2E``, ...). ``duration`` (seconds) is kept for LongVideoBench's frame sampler.
    Subtitles are off, as in the official analyses (``insert_text=False``); ``subtitles=True``
    reads ``<root>/subtitles/<subtitle_path>`` (shifted by ``starting_timestamp_for_subtitles``)
    and puts the lines of the sampled frames before the question, not interleaved
    (:mod:`mapflow_tl.data.subtitles`). Other arguments as :func:`load_tvbench`.
    """
    root = Path(data_root)
    path = root / LONGVIDEOBENCH_FILE
    if not path.is_file():
        raise DataError(f"{path}: not found; a LongVideoBench data root must hold "
                        f"{LONGVIDEOBENCH_FILE} and videos/", path=path)
    collector = _Collector(strict)
    entries = _read_json(path, collector, "")
    if entries is not None and not isinstance(entries, list):
        collector.problem(path, None, None,
                          f"expected a JSON list of entries, got {type(entries).__name__}")
        entries = None
    entries = entries or []
    available = list(dict.fromkeys(e["question_category"] for e in entries
                                   if isinstance(e, dict)
                                   and isinstance(e.get("question_category"), str)))
    stems = _select(available, {}, tasks, "LongVideoBench")
    known = {"question", "candidates", "correct_choice", "question_category", "video_path", "id"}
    counts: dict[str, int] = {}
    samples: list[Sample] = []
    for index, entry in enumerate(entries):
        task = entry.get("question_category") if isinstance(entry, dict) else None
        if isinstance(task, str) and (task not in stems or (
                limit is not None and counts.get(task, 0) >= limit)):
            continue
        try:
            if not isinstance(entry, dict):
                raise _FieldError("<entry>", f"expected an object, got {type(entry).__name__}")
            task = _text(entry, "question_category")
            key = entry.get("id", index)
            question = _text(entry, "question")
            options = _options(entry, "candidates")
            if "correct_choice" not in entry:
                raise _FieldError("correct_choice", "missing (the test set's lvb_test_wo_gt.json "
                                                    "has no answers; use lvb_val.json)")
            answer_index = _tomato_answer(entry["correct_choice"], options)
            video = _inside(root, root / "videos", _text(entry, "video_path"),
                            allow_outside_root)
            _check_video(video, check_videos)
            duration = entry.get("duration")
            if duration is not None and (isinstance(duration, bool) or not isinstance(
                    duration, (int, float)) or not duration > 0):
                raise _FieldError("duration", f"{duration!r} is not a positive number of "
                                              f"seconds")
            track = None
            if subtitles:
                name = _text(entry, "subtitle_path")
                offset = entry.get("starting_timestamp_for_subtitles", 0.0)
                if isinstance(offset, bool) or not isinstance(offset, (int, float)):
                    raise _FieldError("starting_timestamp_for_subtitles",
                                      f"{offset!r} is not a number of seconds")
                track = Subtitles("longvideobench",
                                  _inside(root, root / "subtitles", name, allow_outside_root),
                                  float(offset), None if duration is None else float(duration))
                if not track.path.is_file():
                    raise _FieldError("subtitle_path", f"{track.path} not found (unpack the "
                                                       f"subtitles into subtitles/ or leave "
                                                       f"--subtitles off)")
        except _FieldError as error:
            field_name = None if error.field_name == "<entry>" else error.field_name
            if error.field_name == "answer":
                field_name = "correct_choice"
            collector.problem(path, index, field_name, error.reason,
                              task if isinstance(task, str) else None)
            continue
        counts[task] = counts.get(task, 0) + 1
        samples.append(Sample(
            id=f"{task}/{key}", dataset="longvideobench", task=task, video=video,
            question=question, options=options, answer_index=answer_index,
            source=f"{path}[{index}]",
            metadata={k: v for k, v in entry.items() if k not in known}, entry=index,
            duration=None if duration is None else float(duration), subtitles=track))
    return LoadedBenchmark("longvideobench", root, samples, collector.skipped)


# ------------------------------------------------------------------ open-ended benchmarks
# TVBench open-ended: the official Map-the-Flow code asks TVBench's questions without options
# and starts the answer with a per-task prompt (tasks/eval/mvbench/__init__.py, BaseDataset with
# open_ended=True); the word lists below are its own.
_OE_ANSWER_OBJECTS = ("jacket", "shoe", "bag", "headphone", "hat/cap", "glasses")
_OE_QUESTION_OBJECTS = tuple(f"the {colour} {shape}" for colour in (
    "cyan", "green", "blue", "gray", "purple", "yellow", "brown", "red")
    for shape in ("sphere", "cylinder", "cube"))
_OE_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                    "nine")
_OE_PLACES = ("throughout", "beginning", "middle", "end")
#: What the official open-ended prompt puts before the question (``qa_template``:
#: ``f"Question: {question}\n"``); kept apart from the question text, which stays the text alone.
TVBENCH_OPEN_ENDED_PREFIX = "Question: "
#: The question the official code asks every Scene Transition video open-endedly.
SCENE_TRANSITION_QUESTION = ("Where does the scene in the video change from one place to another "
                             "place?")


def tvbench_open_ended(task: str, question: str, answer: str) -> tuple[str, str, str | None]:
    """``(question, reference answer, answer prompt)`` of a TVBench question asked open-endedly,
    as the official code writes them: Action Antonym, Action Sequence, Action Localization,
    Moving Direction, Object Count and Scene Transition get an answer prompt and a reference
    named the way that prompt continues ("... moves to the" → "left"); the other tasks keep their
    question and answer, with no prompt. Raises ``_FieldError`` where the official code would
    fail (an Action Localization question naming no ``action '...'``, a count that is not a
    digit) or would take an answer the entry does not give (a localization answer naming no
    part of the video)."""
    key = task_key(task)
    if key == task_key("Action Antonym"):
        found = next((word for word in _OE_ANSWER_OBJECTS if word in answer), "")
        prompt = (f"\nThe action being performed in the video regarding the {found} is to"
                  if found else "\nThe action being performed in the video is to")
        return question, answer.lower(), prompt
    if key == task_key("Action Sequence"):
        return question, answer.lower(), "\nThe action the person is doing first is to"
    if key == task_key("Action Localization"):
        match = re.search(r"action '(.*?)'", question)
        if match is None:
            raise _FieldError("question", "names no action '...' to ask about open-endedly")
        # the official search, in its order and case: "Throughout", "beginning", "middle", "end"
        place = next((p for p in _OE_PLACES
                      if (p.capitalize() if p == "throughout" else p) in answer), None)
        if place is None:
            raise _FieldError("answer", f"{answer!r} names no part of the video "
                                        f"(Throughout, beginning, middle, end)")
        return question, place, f"\nThe action '{match.group(1)}' occurs at the"
    if key == task_key("Moving Direction"):
        found = next((word for word in _OE_QUESTION_OBJECTS if word in question), "the object")
        return (question, "right" if "right" in answer else "left",
                f"\n{found[:1].upper() + found[1:]} moves to the")
    if key == task_key("Object Count"):
        if not (len(answer) == 1 and answer.isascii() and answer.isdigit()):
            raise _FieldError("answer", f"{answer!r} is not a count from 0 to 9")
        return question, _OE_NUMBER_WORDS[int(answer)], "\nThe number of moving objects is"
    if key == task_key("Scene Transition"):
        named = answer.lower()
        # the official tests and replacements: str.replace drops every occurrence, not only
        # the leading one
        for test, lead in (("from the", "from the "), ("from a", "from a "), ("from", "from ")):
            if named.startswith(test):
                named = named.replace(lead, "")
                break
        return (SCENE_TRANSITION_QUESTION, named,
                "\nThe scene in the video changes from the")
    return question, answer, None


def load_tvbench_open_ended(
    data_root: str | Path,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    *,
    strict: bool = True,
    check_videos: bool = True,
    allow_outside_root: bool = False,
) -> LoadedBenchmark:
    """TVBench asked open-endedly, as the official Map-the-Flow code does
    (``tvbench_open_ended``): the TVBench download read by :func:`load_tvbench`, every question
    without its options, with the reference answer and the per-task answer prompt of
    :func:`tvbench_open_ended` (``Sample.reference``, ``Sample.answer_prompt``). The options are
    kept in ``metadata["candidates"]``, the official prompt's "Question: " before the question in
    ``metadata["question_prefix"]``. Arguments as :func:`load_tvbench`."""
    loaded = load_tvbench(data_root, tasks, limit, strict=strict, check_videos=check_videos,
                          allow_outside_root=allow_outside_root)
    collector = _Collector(strict)
    collector.skipped = list(loaded.skipped)
    samples: list[Sample] = []
    for sample in loaded:
        stem = sample.id.split("/", 1)[0]
        try:
            question, reference, prompt = tvbench_open_ended(sample.task, sample.question,
                                                             sample.answer)
        except _FieldError as error:
            collector.problem(loaded.root / "json" / f"{stem}.json", sample.entry,
                              error.field_name, error.reason, sample.task)
            continue
        samples.append(dataclasses.replace(
            sample, dataset="tvbench-oe", question=question, options=(), answer_index=None,
            reference=reference, answer_prompt=prompt,
            metadata={**sample.metadata, "candidates": list(sample.options),
                      "question_prefix": TVBENCH_OPEN_ENDED_PREFIX}))
    return LoadedBenchmark("tvbench-oe", loaded.root, samples, collector.skipped)


#: VCGBench (Video-ChatGPT's quantitative benchmark): task file → its question fields.
VCGBENCH_TASKS: dict[str, tuple[str, ...]] = {
    "generic_qa": ("Q",),
    "temporal_qa": ("Q",),
    "consistency_qa": ("Q1", "Q2"),
}


def load_vcgbench(
    data_root: str | Path,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
    *,
    strict: bool = True,
    check_videos: bool = True,
    allow_outside_root: bool = False,
) -> LoadedBenchmark:
    """VCGBench, Video-ChatGPT's quantitative evaluation (github mbzuai-oryx/Video-ChatGPT),
    laid out as the official Map-the-Flow loader reads it (``tasks/eval/vcgbench``):
    ``<root>/Benchmarking_QA/{generic_qa,temporal_qa,consistency_qa}.json`` list
    ``{"Q", "A", "video_name"}`` (consistency: ``"Q1"``, ``"Q2"`` — two phrasings of one
    question — and ``"A"``), videos at ``<root>/Test_Videos/<video_name>.mp4`` (or ``.mkv``).
    Open-ended samples (no options; ``reference`` = ``A``); a consistency entry gives two,
    ``consistency_qa/<i>/1`` and ``/2``, one per phrasing, as the official code asks both.
    ``limit`` counts entries. Other arguments as :func:`load_tvbench`."""
    root = _require_root(data_root, "Benchmarking_QA", "VCGBench",
                         "Benchmarking_QA/<task>.json and Test_Videos/")
    stems = _select(list(VCGBENCH_TASKS), {}, tasks, "VCGBench")
    collector = _Collector(strict)
    samples: list[Sample] = []
    for stem in stems:
        path = root / "Benchmarking_QA" / f"{stem}.json"
        keys = VCGBENCH_TASKS[stem]

        def build(index: int, entry: Mapping[str, Any], stem=stem, path=path,
                  keys=keys) -> list[Sample]:
            questions = [_text(entry, key) for key in keys]
            reference = _text(entry, "A")
            video = _find_video(root, root / "Test_Videos", _text(entry, "video_name"),
                                ("mp4", "mkv"), allow_outside_root)
            _check_video(video, check_videos)
            metadata = {k: v for k, v in entry.items() if k not in {"A", *keys}}
            return [Sample(id=f"{stem}/{index}" + (f"/{n}" if len(keys) > 1 else ""),
                           dataset="vcgbench", task=stem, video=video, question=question,
                           options=(), answer_index=None, source=f"{path}[{index}]",
                           metadata={**metadata, **({"phrasing": n} if len(keys) > 1 else {})},
                           entry=index, reference=reference)
                    for n, question in enumerate(questions, start=1)]

        # _read_task_file keeps one object per entry: a consistency entry's pair travels as one
        groups = _read_task_file(path, stem, collector, limit, build)
        samples += [sample for group in groups for sample in group]
    return LoadedBenchmark("vcgbench", root, samples, collector.skipped)
