"""``mapflow-tl synthtv …``: generate the benchmark, train and evaluate the SynthTV models."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

__all__ = ["register"]

SUMMARIES = {
    "image": "Image-only SynthTV model: its language model never sees more than one frame — "
             "trained on the single-frame image tasks (colour, shape, position, scene) after a "
             "vision pre-training on single frames (no frame order) and a text-only option "
             "look-up phase — the miniature of the paper's image-only LLaVA-NeXT-7B.",
    "video": "Video-fine-tuned SynthTV model: `synthtv-image` fine-tuned on the five temporal "
             "tasks with a fifth of each step's items kept on image tasks — the miniature of the "
             "paper's LLaVA-NeXT-7B-Video-FT.",
}


def _log(message: str) -> None:
    print(message, flush=True)


def _generate(args: argparse.Namespace) -> int:
    from .. import outputs
    from ..synthtv import generator as gen

    out = Path(args.out)
    # a folder we did not generate (a TVBench download, anything of the user's) is refused
    # before a file is written; one we generated lists what it holds in synthtv.json
    outputs.check_folder(out, "synthtv-benchmark")
    tasks = args.tasks or list(gen.ALL_TASKS)
    items = gen.generate(tasks, args.per_task, args.seed)
    names = [f"json/{gen.TASK_FILES[task]}" for task in items]
    if not args.no_videos:
        names += [f"video/{task}/{item.name}.mp4" for task, task_items in items.items()
                  for item in task_items]
    out.mkdir(parents=True, exist_ok=True)
    outputs.record(out, "synthtv-benchmark", names)   # before writing: a crash leaves it ours
    counts = gen.write_benchmark(out, items, write_videos=not args.no_videos)
    print(json.dumps({"out": str(args.out), "seed": args.seed, "counts": counts}, indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    from ..synthtv import train

    config = train.STAGES[args.stage]
    overrides = {k: v for k, v in (("steps", args.steps), ("threads", args.threads),
                                   ("init_from", args.init_from)) if v is not None}
    config = replace(config, **overrides, **_settings(args.set or [], config))
    from .. import outputs

    name = train.MODEL_NAMES[args.stage]
    out = Path(args.out) if args.out else train.checkpoint_path(name)
    outputs.check_folder(out, "synthtv-checkpoint")   # before training, not after
    start = time.time()
    monitor = _HeldOutMonitor(args.eval_per_task) if args.eval_every else None
    model, tokenizer, rows = train.train(config, log=_log, monitor=monitor,
                                     monitor_every=args.eval_every or 0)
    # The training time leaves out the monitoring's evaluations.
    seconds = time.time() - start - (monitor.seconds if monitor else 0.0)
    command = "mapflow-tl synthtv train " + " ".join(shlex.quote(a) for a in sys.argv[3:]) \
        if len(sys.argv) > 3 and sys.argv[1:3] == ["synthtv", "train"] \
        else f"mapflow-tl synthtv train --stage {args.stage}"
    training = {"train_config": config.to_dict(), "train_seconds": seconds,
                "final_loss": _final_loss(rows, args.stage),
                "command": command, "notes": args.notes,
                **({"monitor": [r for r in rows if r["phase"] == "monitor"],
                    "monitor_seconds": monitor.seconds} if monitor else {})}
    train.save_checkpoint(model, tokenizer, config, out, extra=training)
    _log(f"saved {out} after {seconds / 60:.1f} min; measuring …")
    return _write_card(out, args.stage, knockout=not args.no_knockout)


class _HeldOutMonitor:
    """Accuracy (%) per task on ``per_task`` questions of the monitoring seed
    (``evaluate.MONITOR_SEED``: neither a training seed nor the model card's held-out seed);
    ``seconds`` adds up the time spent evaluating."""

    def __init__(self, per_task: int):
        from ..synthtv import generator as gen
        from ..synthtv.evaluate import MONITOR_SEED

        self.items = gen.generate(gen.ALL_TASKS, per_task, MONITOR_SEED)
        self.seconds = 0.0

    def __call__(self, model, tokenizer) -> dict[str, float]:
        from ..synthtv.evaluate import evaluate

        start = time.time()
        measured = {task: 100 * row["accuracy"]
                    for task, row in evaluate(model, tokenizer, self.items).items()}
        self.seconds += time.time() - start
        return measured


def _final_loss(rows: list[dict], stage: str) -> float:
    """Mean loss of the stage's last 25 steps (rows of the text-pretraining phase excluded)."""
    recent = [r["loss"] for r in rows if r["phase"] == stage][-25:]
    return sum(recent) / max(1, len(recent))


def _settings(pairs: list[str], config) -> dict:
    """``--set key=value`` overrides of a stage's TrainConfig (``model.key=value`` for the
    ModelConfig's sizes), converted to the field's type."""
    from dataclasses import fields

    def typed(target, prefix: str) -> dict[str, type]:
        return {prefix + f.name: type(getattr(target, f.name)) for f in fields(target)
                if f.name != "model"}

    types = {**typed(config, ""), **typed(config.model, "model.")}
    settings: dict = {}
    model: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in types:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE with KEY one of "
                             f"{', '.join(sorted(types))}")
        kind = types[key]
        try:
            parsed = (value if kind in (str, type(None)) else
                      value.lower() in ("1", "true", "yes") if kind is bool else kind(value))
        except ValueError:
            raise SystemExit(f"--set {pair!r}: {key} expects type {kind.__name__}") from None
        if key.startswith("model."):
            model[key[len("model."):]] = parsed
        else:
            settings[key] = parsed
    if model:
        settings["model"] = replace(config.model, **model)
    return settings


def _write_card(path: Path, stage: str, knockout: bool = True) -> int:
    """Measure the checkpoint at ``path`` and (re)write its model card."""
    from ..synthtv import train
    from ..synthtv.card import measure, write_card
    from ..synthtv.evaluate import load

    training = json.loads((Path(path) / "training.json").read_text())
    model, tokenizer = load(path)
    measured = measure(model, tokenizer, knockout=knockout, path=path)
    write_card(path, name=train.MODEL_NAMES[stage], summary=SUMMARIES[stage], training=training,
               measured=measured, command=training["command"])
    print(json.dumps({task: round(row["accuracy"], 4)
                      for task, row in measured["eval"]["tasks"].items()}, indent=2))
    return 0


def _card(args: argparse.Namespace) -> int:
    from ..synthtv import train

    stage = {name: stage for stage, name in train.MODEL_NAMES.items()}.get(args.model)
    path = train.checkpoint_path(args.model) if stage else Path(args.model)
    if stage is None:
        stage = json.loads((path / "training.json").read_text())["train_config"]["stage"]
    return _write_card(path, stage, knockout=not args.no_knockout)


def _eval(args: argparse.Namespace) -> int:
    from ..synthtv import generator as gen
    from ..synthtv.card import knockout_layer_sets
    from ..synthtv.evaluate import EVAL_SEED, cross_frame_study, evaluate, load

    model, tokenizer = load(args.model)
    tasks = args.tasks or list(gen.ALL_TASKS)
    items = gen.generate(tasks, args.per_task, args.seed if args.seed is not None else EVAL_SEED)
    result = {"model": args.model, "seed": args.seed if args.seed is not None else EVAL_SEED,
              "tasks": evaluate(model, tokenizer, items)}
    if args.knockout:
        temporal = {t: v for t, v in items.items() if t in gen.TEMPORAL_TASKS}
        layer_sets = knockout_layer_sets(model.config.text_config.num_hidden_layers)
        from ..models import load_videollm
        from ..synthtv.train import MODEL_NAMES, checkpoint_path

        path = (checkpoint_path(args.model) if args.model in MODEL_NAMES.values()
                else args.model)
        result["cross_frame_knockout"] = cross_frame_study(load_videollm(path), temporal,
                                                           layer_sets)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for task, row in result["tasks"].items():
            print(f"{task:<18} {100 * row['accuracy']:5.1f}%  (chance {100 * row['chance']:.1f}%,"
                  f" n={row['n']})")
    return 0


def register(subparsers) -> None:
    synthtv = subparsers.add_parser(
        "synthtv", help="SynthTV: synthetic temporal VideoQA benchmark and its tiny VideoLLMs")
    commands = synthtv.add_subparsers(dest="synthtv_command", metavar="SUBCOMMAND")
    synthtv.set_defaults(handler=lambda args: (synthtv.print_help(), 0)[1])

    generate = commands.add_parser("generate", help="write videos (.mp4) and TVBench-format JSON")
    generate.add_argument("--out", required=True,
                          help="output directory (json/, video/): new, empty or one generate "
                               "wrote (never a downloaded benchmark)")
    generate.add_argument("--per-task", type=int, default=200, help="questions per task")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--tasks", nargs="*", help="subset of tasks (default: all)")
    generate.add_argument("--no-videos", action="store_true", help="write only the JSON files")
    generate.set_defaults(handler=_generate)

    train = commands.add_parser("train", help="train a SynthTV model and write its model card")
    train.add_argument("--stage", choices=("image", "video"), required=True)
    train.add_argument("--steps", type=int, help="override the stage's number of steps")
    train.add_argument("--threads", type=int,
                       help="CPU threads (default: the stage's, 2; the same count gives the "
                            "same weights)")
    train.add_argument("--init-from", help="checkpoint to fine-tune (video stage)")
    train.add_argument("--out", help="checkpoint directory (default: the shipped one)")
    train.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                       help="override fields of the stage's training configuration, e.g. "
                            "--set lr=0.001 image_batch=64 model.text_hidden=96")
    train.add_argument("--no-knockout", action="store_true", help="skip the knockout study")
    train.add_argument("--notes", help="free text added to the model card")
    train.add_argument("--eval-every", type=int, metavar="N",
                       help="log held-out accuracy per task every N steps (monitoring seed "
                            "1001; the trained weights are the same with or without it)")
    train.add_argument("--eval-per-task", type=int, default=60, metavar="K",
                       help="questions per task of that monitoring (default 60)")
    train.set_defaults(handler=_train)

    card = commands.add_parser("card", help="measure a trained checkpoint, rewrite its card")
    card.add_argument("--model", required=True,
                      help="synthtv-image, synthtv-video-ft or a checkpoint directory")
    card.add_argument("--no-knockout", action="store_true")
    card.set_defaults(handler=_card)

    evaluate = commands.add_parser("eval", help="per-task accuracy of a SynthTV model")
    evaluate.add_argument("--model", default="synthtv-video-ft",
                          help="synthtv-image, synthtv-video-ft or a checkpoint directory")
    evaluate.add_argument("--per-task", type=int, default=200)
    evaluate.add_argument("--seed", type=int, help="generator seed (default: held-out 1000)")
    evaluate.add_argument("--tasks", nargs="*")
    evaluate.add_argument("--knockout", action="store_true",
                          help="also run the cross-frame knockout study")
    evaluate.add_argument("--json", action="store_true", help="print JSON")
    evaluate.set_defaults(handler=_eval)
