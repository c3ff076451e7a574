"""Measure a SynthTV checkpoint and write its model card (README.md).

Everything in the card is measured by :func:`measure`: per-task accuracy on the held-out seed
(``EVAL_SEED``, 200 questions per task), the exact accuracy on the small fixed set the tests check
(``TEST_SEED``), and the cross-frame knockout of Map the Flow's Finding 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import build
from . import generator as gen
from .evaluate import EVAL_SEED, TEST_SEED, cross_frame_study, evaluate

__all__ = ["EVAL_PER_TASK", "TEST_PER_TASK", "knockout_layer_sets", "measure", "write_card"]

EVAL_PER_TASK = 200
TEST_PER_TASK = 20

# The card points to the recipe's history instead of repeating it: every step, with its runs and
# measurements, is in docs/synthtv.md ("How the recipe came about").
RECIPE_HISTORY = ("Why the recipe looks as it does — every change, the run that motivated it and "
                  "its measurements: `docs/synthtv.md` in the mapflow-tl repository, section "
                  "\"How the recipe came about\".")


def knockout_layer_sets(n_layers: int) -> dict[str, list[int]]:
    """Named layer sets of the cross-frame knockout. ``early_to_middle`` is the first half of the
    backbone (the paper's layers 1–16 of 32); the sliding three-layer windows localise the
    effect; ``all`` is every layer."""
    sets = {"early_to_middle": list(range(n_layers // 2)),
            "late": list(range(n_layers // 2, n_layers)),
            "all": list(range(n_layers))}
    for center in range(n_layers):
        lo, hi = max(0, center - 1), min(n_layers - 1, center + 1)
        sets[f"window_{center}"] = list(range(lo, hi + 1))
    return sets


def measure(model, tokenizer, *, eval_per_task: int = EVAL_PER_TASK,
            test_per_task: int = TEST_PER_TASK, knockout: bool = True,
            path: str | Path | None = None) -> dict[str, Any]:
    """Everything a model card states: held-out and test-set accuracy per task (``model``,
    ``tokenizer``: the Hugging Face model) and, with ``knockout``, the cross-frame knockout
    study on the checkpoint at ``path`` loaded as a VideoLLM."""
    held_out = gen.generate(gen.ALL_TASKS, eval_per_task, EVAL_SEED)
    test_set = gen.generate(gen.ALL_TASKS, test_per_task, TEST_SEED)
    result: dict[str, Any] = {
        "eval": {"seed": EVAL_SEED, "per_task": eval_per_task,
                 "tasks": evaluate(model, tokenizer, held_out)},
        "test_set": {"seed": TEST_SEED, "per_task": test_per_task,
                     "tasks": evaluate(model, tokenizer, test_set)},
    }
    if knockout:
        n_layers = model.config.text_config.num_hidden_layers
        temporal = {task: held_out[task] for task in gen.TEMPORAL_TASKS}
        from ..models import load_videollm

        result["cross_frame_knockout"] = cross_frame_study(
            load_videollm(path), temporal, knockout_layer_sets(n_layers))
    return result


def _table(tasks: dict[str, dict]) -> list[str]:
    lines = ["| task | kind | accuracy | chance | n |", "|---|---|---|---|---|"]
    for task, row in tasks.items():
        kind = "temporal" if task in gen.TEMPORAL_TASKS else "image"
        lines.append(f"| {task} | {kind} | {100 * row['accuracy']:.1f} | "
                     f"{100 * row['chance']:.1f} | {row['n']} |")
    return lines


def _knockout_table(study: dict[str, dict]) -> list[str]:
    names = [k for k in next(iter(study.values())) if k not in ("clean", "chance", "n")]
    header = ["task", "clean"] + names
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, row in study.items():
        cells = [task, f"{100 * row['clean']['accuracy']:.1f}"]
        cells += [f"{100 * row[name]['accuracy']:.1f}" for name in names]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_card(path: str | Path, *, name: str, summary: str, training: dict[str, Any],
               measured: dict[str, Any], command: str) -> Path:
    path = Path(path)
    config = training["train_config"]
    side = round(build.tokens_per_frame(build.ModelConfig(**config["model"])) ** 0.5)
    lines = [
        f"# {name}", "",
        summary, "",
        "A SynthTV model organism of mapflow-tl: a real `LlavaNextVideoForConditionalGeneration` "
        "(CLIP vision tower seeing one frame at a time, 2×2 average pooling to "
        f"{side}×{side} tokens per frame, Llama backbone), a word-level tokenizer and a "
        "`LlavaNextVideoProcessor` configuration, trained on CPU from scratch on the SynthTV "
        "generator (`mapflow_tl/synthtv/generator.py`).", "",
        "## Reproduce", "", "```", command, "```", "",
        f"Training time: {training.get('train_seconds', 0) / 60:.1f} min on "
        f"{config.get('threads', 1)} CPU thread(s) ({config['steps']} steps). The same command "
        "on the same software and thread count gives the same weights (seeded).", "",
        "## Configuration", "", "```json", json.dumps(config, indent=2), "```", "",
        f"Data: training items are drawn fresh every step from generator seed "
        f"{config['data_seed']} (item indices counting up); evaluation uses the held-out seed "
        f"{measured['eval']['seed']} ({measured['eval']['per_task']} questions per task).", "",
        "## Accuracy (held-out seed)", "", *_table(measured["eval"]["tasks"]), "",
        f"## Fixed test set (seed {measured['test_set']['seed']}, "
        f"{measured['test_set']['per_task']} per task)", "",
        "`tests/test_synthtv.py` checks these exact figures (within 2 points):", "",
        *_table(measured["test_set"]["tasks"]), "",
    ]
    study = measured.get("cross_frame_knockout")
    if study:
        lines += [
            "## Cross-frame knockout (Map the Flow, Finding 1)", "",
            "Accuracy (%) on the held-out temporal questions when every frame-t token is kept "
            "from attending to the tokens of frames < t in the given layers (0-based), through "
            "`mapflow_tl.crossframe_knockout` (the demo's function) on the checkpoint loaded with "
            "`mapflow_tl.load_videollm`; an answer is correct when the argmax over the whole "
            "vocabulary is the true letter. `early_to_middle` = the first half of the layers; "
            "`window_l` = layers l−1…l+1.", "",
            *_knockout_table(study), "",
        ]
    notes = training.get("notes")
    lines += ["## Notes", ""] + ([notes, ""] if notes else []) + [RECIPE_HISTORY]
    path.mkdir(parents=True, exist_ok=True)
    (path / "README.md").write_text("\n".join(lines) + "\n")
    (path / "measurements.json").write_text(json.dumps(measured, indent=1) + "\n")
    return path / "README.md"
