"""How every analysis command runs over samples: one orchestration for all of them.

An :class:`AnalysisRun` loads the model and the dataset, takes this process' share of the samples,
opens the run folder (:class:`~mapflow_tl.runs.RunWriter`: refuses foreign folders, locks, resumes)
and yields prepared samples with a progress bar, recording the ones that cannot be prepared.
Commands only say what to compute per sample. Under a launcher with several processes
(``torchrun``, ``accelerate launch``) each rank takes every ``size``-th sample, writes to
``OUT/shards/rank-NNN`` and rank 0 merges the shards in sample order at :meth:`finish`.

Nothing heavy is imported at module level: building the parser must stay cheap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..errors import InputError

__all__ = ["AnalysisRun", "add_run_arguments", "positive_int", "DTYPE_NAMES", "canonical_dtype",
           "resolve_dtype", "checkpoint_dtype",
           "choose_threads", "subsample_per_task", "check_sampling", "circuit_config"]

#: Accepted ``--dtype`` spellings → the canonical torch name (equal spellings are one config);
#: ``auto`` is resolved by :func:`resolve_dtype` once the device is known.
DTYPE_NAMES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16",
               "bf16": "bfloat16", "float16": "float16", "fp16": "float16", "auto": "auto"}

#: Arguments that do not change the rows (where and how fast, not what; ``--sample-batch`` up to
#: rounding), left out of run.json's identity.
_NOT_CONFIG = ("handler", "resume", "out", "device", "strict", "debug", "threads", "overwrite",
               "allow_outside_root", "sample_batch")


def canonical_dtype(name: str) -> str:
    """The canonical name of a dtype spelling (``fp32`` → ``float32``)."""
    try:
        return DTYPE_NAMES[str(name).strip().lower()]
    except KeyError:
        raise InputError(f"unknown dtype {name!r}; choose one of {sorted(DTYPE_NAMES)}") from None


def checkpoint_dtype(name_or_path: str) -> str | None:
    """The dtype a checkpoint's ``config.json`` declares (``torch_dtype`` or ``dtype``, at the
    top or in its language model's sub-config), canonical; None when it declares none."""
    import json

    from ..models import resolve_checkpoint

    config = json.loads((resolve_checkpoint(name_or_path) / "config.json").read_text())
    for section in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        for key in ("torch_dtype", "dtype"):
            declared = section.get(key) if isinstance(section, dict) else None
            if isinstance(declared, str) and declared.lower() in DTYPE_NAMES:
                return DTYPE_NAMES[declared.lower()]
    return None


def resolve_dtype(requested: str, model: str, device: str) -> str:
    """The dtype a run uses: ``requested`` unless it is ``auto`` (the default), which is the
    checkpoint's own dtype on a CUDA GPU — every official run is bf16, the dtype the paper's
    checkpoints declare (tasks/eval/model_utils.py:108-111, 217) — bfloat16 where the
    checkpoint declares none; float32 elsewhere (CPU, MPS), where half precision is slow or
    partly supported and its rounding flips near-tied answers."""
    if requested != "auto":
        return requested
    if not str(device).startswith("cuda"):
        return "float32"
    return checkpoint_dtype(model) or "bfloat16"


def positive_int(text: str) -> int:
    """argparse type: a whole number ≥ 1 (``--limit 0`` or ``--window -3`` is refused before
    anything is written)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """``--frame-sampler`` and ``--subtitles``: how a benchmark's frames are picked and whether
    its subtitles go into the prompt (analysis commands, ``eval`` and ``data check``)."""
    from ..data.video import FRAME_SAMPLERS

    parser.add_argument("--frame-sampler", default=None, choices=FRAME_SAMPLERS,
                        help="how frames are picked from each video (default: the benchmark's "
                             "official rule — Video-MME linspace, LongVideoBench its "
                             "load_video, VCGBench Video-ChatGPT's get_seq_frames — else the "
                             "model family's own; docs/data.md)")
    # default None, not False: a run.json written before the flag existed resumes (no key = None)
    parser.add_argument("--subtitles", action="store_true", default=None,
                        help="put the subtitles of the sampled frames into the prompt, as the "
                             "benchmark's official evaluation with subtitles does (Video-MME, "
                             "LongVideoBench; default off)")


def add_run_arguments(parser: argparse.ArgumentParser, *, circuit: bool = True) -> None:
    """The arguments every analysis command shares."""
    from ..data.datasets import list_datasets

    parser.add_argument("--model", default="synthtv-video-ft",
                        help="built-in name, local checkpoint directory or cached hub id")
    parser.add_argument("--dataset", default="synthtv", type=str.lower, choices=list_datasets(),
                        help="dataset name (default %(default)s)")
    parser.add_argument("--data-root", default=None,
                        help="the benchmark's folder, as downloaded (not needed for synthtv)")
    parser.add_argument("--task", action="append", default=None,
                        help="task to run, as a file stem or as tables print it (repeatable; "
                             "default: all)")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="the first N samples of each task")
    add_sampling_arguments(parser)
    parser.add_argument("--sample", type=positive_int, default=None, metavar="N",
                        help="N samples of each task drawn at random, seeded with --sample-seed "
                             "(the official --test_ratio: random.seed(seed); random.sample, per "
                             "task)")
    parser.add_argument("--sample-seed", type=int, default=42,
                        help="seed of --sample (default %(default)s, the official one)")
    parser.add_argument("--out", required=True, help="run directory to write")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", type=canonical_dtype,
                        help=f"one of {', '.join(sorted(DTYPE_NAMES))} (default auto: the "
                             f"checkpoint's own dtype on a GPU, as the official bf16 runs; "
                             f"float32 on the CPU); run.json records the dtype used")
    parser.add_argument("--backend", default="auto", choices=("auto", "hooked", "bridge"),
                        help="TransformerLens backend of the backbone: hooked (HookedTransformer, "
                             "transformer-lens 3.9), bridge (TransformerBridge, transformer-lens "
                             "4.x) or auto (default: the installed one); run.json records the "
                             "one used")
    parser.add_argument("--num-frames", type=positive_int, default=None, metavar="N",
                        help="frames sampled from each video (default: the model family's "
                             "own); a prompt longer than the model's context is refused with "
                             "the largest N that fits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for torch (default: chosen for the model's size)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in the same --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a run of ours already in --out (never a folder we did "
                             "not write)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first bad sample instead of recording it as skipped")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="accept annotation paths that lead outside --data-root")
    if circuit:
        parser.add_argument("--circuit", action="append", default=None,
                            help="circuit name or .py file (repeatable)")
        parser.add_argument("--circuit-dir", action="append", default=None, metavar="DIR",
                            help="a folder of your own circuit files, searched before the "
                                 "built-in ones (repeatable; also $MAPFLOW_CIRCUITS)")


def check_sampling(args: argparse.Namespace) -> None:
    """Refuse ``--limit`` with ``--sample`` (two different selections), in one line."""
    if getattr(args, "limit", None) is not None and getattr(args, "sample", None) is not None:
        raise InputError(f"--limit {args.limit} takes the first samples of each task and "
                         f"--sample {args.sample} a seeded random draw: pass one of them")


def subsample_per_task(samples: list[Any], n: int | None, seed: int) -> list[Any]:
    """``n`` samples of each task drawn without replacement, as the official ``--test_ratio``
    does (``random.seed(seed)`` then ``random.sample(task_samples, min(n, len))``, reseeded for
    every task, so one task's draw does not depend on the others). Tasks keep their order of
    first appearance; within a task the samples come in ``random.sample``'s order (the official
    processing order). ``n=None`` keeps everything."""
    import random

    if n is None:
        return list(samples)
    by_task: dict[str, list[Any]] = {}
    for sample in samples:
        by_task.setdefault(str(getattr(sample, "task", "")), []).append(sample)
    chosen = []
    for task_samples in by_task.values():
        random.seed(seed)
        chosen += random.sample(task_samples, min(n, len(task_samples)))
    return chosen


def check_device(device: str) -> str:
    """``device`` when torch can use it here; a one-line error with the fix otherwise."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {device!r} is not a device torch knows; use cpu, cuda, "
                         f"cuda:N or mps") from None
    if parsed.type not in ("cpu", "cuda", "mps", "xpu"):
        raise InputError(f"--device {device}: analyses need a device that holds data ({parsed.type} "
                         f"does not); use cpu, cuda, cuda:N or mps")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: this torch has no CUDA device available; run "
                         f"with --device cpu")
    if parsed.type == "cuda" and parsed.index is not None \
            and parsed.index >= torch.cuda.device_count():
        raise InputError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) "
                         f"here")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"--device {device}: MPS is not available; run with --device cpu")
    return device


def choose_threads(d_model: int, n_layers: int, requested: int | None = None) -> int:
    """Torch CPU threads for a model of this size: ``requested`` when given; one thread for a
    small model, where splitting each small matrix product over cores costs more in
    synchronisation than it saves (a SynthTV flow ran 1.7–6.7× faster on one thread than with
    the default on a loaded 2-core machine); torch's default otherwise."""
    import torch

    if requested is not None:
        return requested
    if d_model * n_layers <= 512 * 12:
        return 1
    return torch.get_num_threads()


class AnalysisRun:
    """One analysis command over a dataset: the model(s), this process' samples and the writer.

    ``command`` names the run in ``run.json``; ``config`` adds to the configuration recorded
    there (everything that changes the rows belongs in it, so that ``--resume`` can refuse a
    different one) — in particular ``definitions``, the metric and lens definitions the command
    uses (e.g. ``{"correct": "decoded-letter", "accuracy": "all-samples"}``), so that an old run
    stays interpretable. ``check(vlm)`` validates arguments that depend on the model (a layer
    range) after loading it and before anything is written.
    """

    def __init__(self, args: argparse.Namespace, command: str,
                 config: dict[str, Any] | None = None,
                 check: Callable[[Any], None] | None = None, *,
                 circuits: Sequence[Any] = (),
                 check_sample: Callable[[Any, Any], None] | None = None,
                 sample_transform: Callable[[Any], Any] | None = None) -> None:
        import torch

        from ..data.datasets import load_dataset
        from ..distributed import shard, world
        from ..models import load_videollm
        from ..runs import RunWriter, check_run_folder, skipped_at_load

        check_sampling(args)
        self.args, self.world = args, world()
        # what each sample is turned into before it is prepared (the open-ended question of a
        # multiple-choice sample); the samples' identity (ids, fingerprint) stays the loaded one
        self._transform = sample_transform or (lambda sample: sample)
        self.device = device = self.world.device(check_device(args.device))
        args.dtype = resolve_dtype(args.dtype, args.model, str(device))   # run.json: the one used
        from ..models.backends import resolve_backend

        args.backend = resolve_backend(getattr(args, "backend", None))  # run.json: the one used
        self._progress = None
        if self.world.is_main:   # loading takes seconds to minutes before the first bar appears
            print(f"{command}: loading model {args.model} ({args.dtype}, {device})…",
                  file=sys.stderr, flush=True)
        frames = {} if getattr(args, "num_frames", None) is None \
            else {"num_frames": args.num_frames}
        self.vlm = load_videollm(args.model, dtype=getattr(torch, args.dtype), device=device,
                                 backend=args.backend, **frames)
        if str(device).startswith("cpu"):
            torch.set_num_threads(choose_threads(self.vlm.backbone.cfg.d_model,
                                                 self.vlm.n_layers, args.threads))
        if check is not None:
            check(self.vlm)
        if getattr(args, "frame_sampler", None) is None and hasattr(args, "frame_sampler"):
            # run.json: the benchmark's official rule (None: the model family's own)
            from ..data.datasets import resolve_dataset

            args.frame_sampler = resolve_dataset(args.dataset).frame_sampler
        loaded = load_dataset(args.dataset, args.data_root, args.task, args.limit,
                              seed=args.seed, strict=args.strict,
                              allow_outside_root=getattr(args, "allow_outside_root", False),
                              frame_sampler=getattr(args, "frame_sampler", None),
                              subtitles=getattr(args, "subtitles", False))
        samples = subsample_per_task(list(loaded), getattr(args, "sample", None),
                                     getattr(args, "sample_seed", 42))
        self.order = [str(getattr(sample, "id", "")) for sample in samples]
        self.samples = shard(samples, self.world)
        self._check_first_sample(samples, circuits, check_sample)
        self.config = {key: value for key, value in vars(args).items() if key not in _NOT_CONFIG}
        self.config.update(config or {})
        if "definitions" not in self.config:  # a caller that changes none records the defaults
            from ..metrics import DEFINITIONS

            self.config["definitions"] = dict(DEFINITIONS)
        self.config.update(command=command, model_family=self.vlm.family,
                           n_layers=self.vlm.n_layers, n_samples=len(samples),
                           world_size=self.world.size,
                           model_content=checkpoint_fingerprint(args.model),
                           dataset_content=samples_fingerprint(samples))
        out = Path(args.out)
        overwrite = getattr(args, "overwrite", False)
        if self.world.distributed:
            # every rank checks the whole run before any rank writes: a resume over another
            # number of ranks is refused by all of them, not by some while others write shards
            check_run_folder(out, self.config, resume=args.resume, overwrite=overwrite)
            self.world.barrier()
            if overwrite and self.world.is_main:
                _clear_for_overwrite(out, self.world.size)
            self.world.barrier()
            out = out / "shards" / f"rank-{self.world.rank:03d}"
        self.writer = RunWriter(out, self.config, resume=args.resume, overwrite=overwrite)
        (self.writer.out / "skipped.jsonl").unlink(missing_ok=True)
        if self.world.is_main:
            self.writer.write("skipped", [skipped_at_load(s) for s in loaded.skipped])

    def _check_first_sample(self, samples: list[Any], circuits: Sequence[Any],
                            check_sample: Callable[[Any, Any], None] | None) -> None:
        """Build every circuit (and run ``check_sample``) on the first sample that can be
        prepared, before anything is written: a circuit that raises, exits or names a segment
        the prompt lacks is a one-line error, not a traceback after ``run.json``."""
        if not circuits and check_sample is None:
            return
        for sample in samples:
            try:
                x = self.vlm.prepare(self._transform(sample))
            except ValueError:
                continue    # recorded as skipped when its turn comes
            for circuit in circuits:
                circuit.build(x.segments, self.vlm.n_layers)
            if check_sample is not None:
                check_sample(self.vlm, x)
            return

    def done(self, tables: Sequence[str]) -> set[tuple]:
        """The samples already complete in this run folder: marked done in ``samples`` with all
        their rows in ``tables`` (:meth:`~mapflow_tl.runs.RunWriter.verified`). Samples whose
        rows went missing are named on stderr and computed again."""
        done = self.writer.verified("samples", tables)
        if self.writer.redone:
            shown = ", ".join(self.writer.redone[:5]) + (
                f" and {len(self.writer.redone) - 5} more" if len(self.writer.redone) > 5 else "")
            print(f"{self.config['command']}: {len(self.writer.redone)} sample(s) marked done "
                  f"have missing or extra rows in {', '.join(tables)} ({shown}); computing them "
                  f"again", file=sys.stderr)
        return done

    def mark_done(self, x: Any, base: dict[str, Any], selected: bool = True) -> None:
        """Write sample ``x``'s completion marker (its ``samples`` row) after its rows, with the
        number of rows written per table and circuit, which a resume checks."""
        self.mark_all_done([(x, base, selected)])

    def mark_all_done(self, done: Sequence[tuple[Any, dict[str, Any], bool]]) -> None:
        """The completion markers of samples computed together, ``(x, base, selected)`` each, in
        one write: a killed process leaves all of them or none, so a resume computes the same
        group again (and gets the same bits)."""
        from ..schema import sample_fields

        rows = []
        for x, base, selected in done:
            fields = sample_fields(x)
            rows.append({**fields, **base, "selected": selected,
                         "row_counts": self.writer.row_counts(fields["sample"])})
        self.writer.write("samples", rows)
        self._advance(len(rows))

    def _close_progress(self) -> None:
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    def _advance(self, n: int) -> None:
        """The progress bar counts samples whose rows are written (or that were skipped), not
        samples prepared: several samples swept together advance it when their rows are in."""
        if self._progress is not None:
            self._progress.update(n)

    def each(self, table: str, done: set[tuple] | None = None) -> Iterator[tuple[Any, Any]]:
        """``(sample, prepared)`` for this rank's samples, with a progress bar, skipping those
        already in ``table`` (or in ``done``). A sample that cannot be prepared (unreadable
        video, prompt that cannot be placed) is recorded in the ``skipped`` table with its
        reason, unless ``--strict``."""
        from tqdm import tqdm

        from ..runs import RunWriter, check_interrupt, skipped_at_prepare

        done = self.writer.completed(table, "sample") if done is None else done
        keys = [RunWriter.key({"sample": str(getattr(s, "id", ""))}, "sample")
                for s in self.samples]
        self._progress = tqdm(total=len(self.samples), initial=sum(k in done for k in keys),
                              desc=f"{self.config['command']}"
                              + (f" [rank {self.world.rank}]" if self.world.distributed else ""),
                              unit="sample", dynamic_ncols=True, position=self.world.rank)
        # closed by finish() (the last samples handed out are marked done after this loop
        # ends), or here when the run stops, so that its error is the last line printed
        try:
            for sample, key in zip(self.samples, keys):
                check_interrupt()
                if key in done:
                    continue
                try:
                    prepared = self.vlm.prepare(self._transform(sample))
                except ValueError as error:
                    if self.args.strict:
                        raise
                    self.writer.write("skipped", [skipped_at_prepare(sample, error)])
                    self._advance(1)
                    continue
                yield sample, prepared
        except BaseException:
            self._close_progress()
            raise

    def prepared(self, table: str, done: set[tuple] | None = None) -> Iterator[Any]:
        """The prepared samples of :meth:`each`."""
        for _, prepared in self.each(table, done):
            yield prepared

    def write_derived(self, out: Path, tables: dict[str, list[dict[str, Any]]]) -> None:
        """Tables computed from the finished run's own tables (keyword counts from the lens
        table), replaced whole on every run and resume."""
        from ..runs import RunWriter

        for table in tables:
            (Path(out) / f"{table}.jsonl").unlink(missing_ok=True)
        writer = RunWriter(out, self.config, resume=True)
        for table, rows in tables.items():
            writer.write(table, rows)
        writer.finish()

    def finish(self) -> Path:
        """Close the tables; with several ranks, wait for all and merge on rank 0. Returns the
        run directory holding the complete tables (on rank 0)."""
        from ..runs import RunWriter, merge_shards

        self._close_progress()
        self.writer.finish()
        out = Path(self.args.out)
        if self.world.distributed:
            self.world.barrier()
            if self.world.is_main:
                merged = RunWriter(out, self.config, resume=True)   # holds the lock while merging
                merge_shards(out, self.order, self.world.size)
                merged.close()
            self.world.barrier()
            self.world.close()
        if self.world.is_main:
            summarise_skipped(out)
        return out


def _clear_for_overwrite(out: Path, size: int) -> None:
    """``--overwrite`` of a multi-rank run, on rank 0 before any rank writes: the merged tables
    and the shards of ranks this run does not have (each rank's writer replaces its own), only
    the files their manifests list."""
    from .. import outputs
    from ..runs import SHARDS_DIR

    outputs.remove_owned(out, "run")
    for shard in sorted((out / SHARDS_DIR).glob("rank-*")):
        number = shard.name[len("rank-"):]
        if shard.is_dir() and (not number.isdigit() or int(number) >= size):
            outputs.remove_owned(shard, "run")
            (shard / "run.lock").unlink(missing_ok=True)
            try:
                shard.rmdir()
            except OSError:
                pass    # it holds files that are not ours: left as they are


def summarise_skipped(out: Path) -> None:
    """Print how many samples were skipped and the first reasons, with their entries."""
    from ..runs import describe_skipped, read_table

    skipped = read_table(out, "skipped")
    if skipped:
        print(f"{len(skipped)} sample(s) skipped; reasons in {out / 'skipped.jsonl'}:",
              file=sys.stderr)
        for row in skipped[:5]:
            print(f"  {describe_skipped(row)}", file=sys.stderr)


def checkpoint_fingerprint(name_or_path: str) -> str:
    """16 hex digits of SHA-256 over a checkpoint's ``config.json`` text and the names and sizes
    of its other files: what ``--resume`` compares, so that a checkpoint retrained into the same
    folder is a different configuration. (Sizes, not contents: hashing gigabytes of weights at
    every start would cost more than the check is worth; a retrained model of the same shape
    keeps its sizes, and the config's training fields usually change.)"""
    import hashlib

    from ..models import resolve_checkpoint

    folder = resolve_checkpoint(name_or_path)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(path.name.encode())
        if path.name == "config.json" or path.suffix == ".json" and path.stat().st_size < 1 << 20:
            digest.update(path.read_bytes())
        else:
            digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()[:16]


def samples_fingerprint(samples) -> str:
    """16 hex digits of SHA-256 over every sample's id, question, options, answer and window,
    and the size and modification time of its video: an edited annotation file, a dataset
    generated differently or a video replaced between a run and its resume is a different
    configuration on ``--resume``. (Not the video paths: a dataset moved to another folder with
    its times kept — ``cp -p``, ``rsync -t`` — is the same. Only ``stat`` is read: hashing every
    video at each start would cost more than the check is worth.)"""
    import hashlib
    import json

    digest = hashlib.sha256()
    for sample in samples:
        fields = [str(getattr(sample, name, None)) for name in
                  ("id", "question", "options", "answer_index", "start", "end")]
        digest.update(json.dumps(fields + _video_stat(getattr(sample, "video", None))).encode())
    return digest.hexdigest()[:16]


def _video_stat(video: Any) -> list[int]:
    """Size and modification time (ns) of a video file, or of a frame folder's files; nothing
    for a video that is not a path or cannot be read (preparing it will say why)."""
    import os

    if not isinstance(video, (str, Path)):
        return []
    try:
        path = Path(video)
        entries = sorted(path.iterdir()) if path.is_dir() else [path]
        stats = [os.stat(entry) for entry in entries]
    except OSError:
        return []
    return [value for stat in stats for value in (stat.st_size, stat.st_mtime_ns)]


def circuit_config(circuits) -> dict[str, Any]:
    """What a run records of its circuits: their names and, for ``--resume``, a fingerprint of
    each file's content (a different file under the same name is a different configuration)."""
    from ..runs import circuit_fingerprint

    return {"circuit_content": {circuit.name: circuit_fingerprint(circuit)
                                for circuit in circuits}}
