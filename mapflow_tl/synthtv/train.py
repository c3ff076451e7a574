"""Train the two SynthTV VideoLLMs on CPU, deterministically.

- stage ``image``: a freshly initialised model learns the single-frame image tasks (colour, shape,
  position, scene), each image shown as a 1-frame video — the image-only LLaVA-NeXT of the paper;
- stage ``video``: the image model is fine-tuned on the five temporal tasks (8-frame videos) while
  a fifth of every step's items stay on image tasks — the paper's Video-FT twin.

Training data are drawn fresh every step from the generator (``seed`` of the stage, item indices
counting up), so no item is seen twice and the held-out evaluation seed never appears. The image
stage's vision phase trains the vision tower and projector; its main loop then keeps the tower
fixed and trains projector and language model (``freeze_vision_tower``, as LLaVA keeps CLIP
fixed); the video stage trains every parameter. AdamW, linear warm-up and cosine decay, on the
stage's ``threads`` CPU threads (2: the issue's 2-core machine; reproducible: the same command
with the same thread count gives the same weights).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..errors import InputError
from . import build
from . import generator as gen

__all__ = ["TrainConfig", "STAGES", "make_batch", "make_training_batch", "answer_logits", "train",
           "save_checkpoint", "CHECKPOINT_DIR", "checkpoint_path", "task_cycle", "vision_loss"]

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
MODEL_NAMES = {"image": "synthtv-image", "video": "synthtv-video-ft"}


def checkpoint_path(name: str) -> Path:
    """Directory of a shipped checkpoint: ``synthtv-image`` or ``synthtv-video-ft``."""
    if name not in MODEL_NAMES.values():
        raise InputError(f"unknown SynthTV model {name!r}; known: {sorted(MODEL_NAMES.values())}")
    return CHECKPOINT_DIR / name


@dataclass
class TrainConfig:
    stage: str = "image"
    seed: int = 0                    # model initialisation and batch order
    data_seed: int = 1               # generator seed of the training items
    steps: int = 500
    video_batch: int = 0             # temporal items per step (8-frame videos)
    # Relative share of each temporal task in the video items, "task:weight,…" (integer
    # weights; tasks not named weigh 1): "object_count:2" draws two Object Count items for
    # every one of each other task. Empty: every task equally.
    video_task_weights: str = ""
    image_batch: int = 32            # image items per step (1-frame videos)
    lr: float = 2e-3
    warmup: int = 30
    weight_decay: float = 0.01
    init_from: str | None = None     # checkpoint to fine-tune (video stage)
    # The training target is the whole answer in TVBench's format, "A) it grows": the letter and
    # then the option it names (weight of the tokens after the letter).
    answer_text_weight: float = 1.0
    # Share of items asked open-ended ("Question: … ASSISTANT: Answer: it grows", no options):
    # the model names the answer itself, which aligns video features with words directly (the
    # role of LLaVA's alignment stage) and makes picking a letter a matter of comparison.
    open_ended_fraction: float = 0.5
    # Main-loop steps at the start that ask every video/image item open-ended (LLaVA's
    # alignment stage: name what is seen before choosing among options).
    open_ended_steps: int = 0
    # Text-only multiple-choice items per step ("Question: find it grows . Options: …"): the
    # language pretraining a real VideoLLM's LLM brings — picking the letter of the option that
    # matches — which a from-scratch backbone otherwise needs thousands of steps to discover.
    text_batch: int = 16
    # A text-only phase before the main loop: multiple-choice "find X" prompts in large batches
    # until the backbone picks the matching option's letter (~99% after ~400 steps of 128).
    # A from-scratch backbone mixing this in small doses stalls at 72-87%; a real VideoLLM's LLM
    # arrives with this skill from its language pretraining.
    text_pretrain_steps: int = 0
    text_pretrain_batch: int = 128
    text_pretrain_lr: float = 3e-3
    # A vision phase before everything else: the vision tower and projector learn to describe
    # single frames (scene; for every colour, the shape and the grid cell of the object of that
    # colour, or its absence) through a temporary classification head that is then discarded —
    # the role of CLIP's own pre-training for a real VideoLLM, whose vision tower arrives already
    # able to see shapes. Trained only through the language loss, the tiny tower never learns
    # shape (open-ended shape naming stays at chance).
    # Logit-lens auxiliary loss (0: off): at the last prompt position, the residual stream after
    # block ``answer_lens_layer`` (HF ``hidden_states[k]``), read through the final norm and the
    # unembedding, must name the answer's first word (weight ``answer_lens_weight``) — on video,
    # image and text-only "find X" items alike. A stand-in for the next-token pre-training that
    # leaves a real LLM's answer concepts readable in word space mid-network; it shapes where the
    # answer word becomes decodable at the last position, so a model trained with it must not be
    # used for logit-lens claims about the answer *word* at that position.
    answer_lens_layer: int = 0
    answer_lens_weight: float = 1.0
    vision_pretrain_steps: int = 0
    vision_pretrain_batch: int = 64
    vision_pretrain_lr: float = 2e-3
    # Weight of the shape read-out in the vision phase's loss (the other read-outs weigh 1):
    # shape is the one property a single 8-px patch does not show by its colour alone, and with
    # equal weights the tower learns position, size and scene and leaves shape near chance.
    vision_shape_weight: float = 1.0
    # Keep the vision tower fixed in the main loop (projector and language model still train),
    # as LLaVA keeps its pre-trained CLIP fixed: trained through the language loss from the
    # start, the tower forgot most of what the vision phase taught it about shape (a probe on its
    # tokens fell from 95 % to 60 %) before the language model had learnt to read it.
    freeze_vision_tower: bool = False
    threads: int = 1
    model: build.ModelConfig = field(default_factory=build.ModelConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


STAGES = {
    "image": TrainConfig(stage="image", seed=0, data_seed=1, steps=5500, video_batch=0,
                         image_batch=32, text_batch=16, lr=2e-3, warmup=30,
                         open_ended_fraction=0.5, answer_lens_layer=4,
                         vision_pretrain_steps=5000, vision_shape_weight=5.0,
                         freeze_vision_tower=True, text_pretrain_steps=300, threads=2),
    "video": TrainConfig(stage="video", seed=0, data_seed=2, steps=4500, video_batch=28,
                         video_task_weights="action_sequence:4,object_count:5",
                         image_batch=6, text_batch=6, lr=2e-3, warmup=30,
                         open_ended_fraction=0.3, answer_lens_layer=6,
                         init_from="synthtv-image", threads=2),
}


# ----------------------------------------------------------------------------------- batches
def make_batch(items: Sequence[gen.Item], tokenizer, config: build.ModelConfig) -> dict[str, Any]:
    """Left-padded token ids, attention mask, normalised frames ``[B, T, 3, H, W]`` and the answer
    letter ids of items that all have the same number of frames."""
    frames = {len(item.states) for item in items}
    if len(frames) != 1:
        raise ValueError(f"a batch needs items with one frame count, got {sorted(frames)}")
    encoded = [build.encode_item(item, tokenizer, config) for item in items]
    length = max(len(e["input_ids"]) for e in encoded)
    input_ids = torch.full((len(items), length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e["input_ids"])
        input_ids[row, length - n:] = torch.tensor(e["input_ids"])
        attention_mask[row, length - n:] = 1
    pixels = build.normalize_frames(np.stack([item.frames for item in items]))
    return {
        "input_ids": input_ids, "attention_mask": attention_mask, "pixel_values_videos": pixels,
        "answer_ids": torch.tensor([e["answer_id"] for e in encoded]),
        "tasks": [item.task for item in items],
    }


def make_training_batch(items: Sequence[gen.Item], tokenizer, config: build.ModelConfig,
                        open_ended_fraction: float = 0.0) -> dict[str, Any]:
    """Right-padded prompt + answer with per-position targets; ``prompt_last`` is each item's
    last prompt position and ``answer_word`` the first token of its answer text.

    Multiple-choice items end in "Best option:(" and are followed by the answer in TVBench's
    format, "A ) grows": the letter is the main target (``letter_mask``), the words after it
    are the answer text. Open-ended items (a fraction ``open_ended_fraction`` of every block of
    100 item indices, spread through the block: ``37 · index mod 100`` below the fraction) have
    no options, end in the same "Best option:(" and are followed by the answer words alone.
    """
    sequences, first_target, is_letter, answer_word = [], [], [], []
    for item in items:
        open_ended = (37 * item.index % 100) < 100 * open_ended_fraction
        e = build.encode_item(item, tokenizer, config, open_ended=open_ended)
        text = item.named_answer if open_ended else item.answer
        words = tokenizer(("" if open_ended else ") ") + text,
                          add_special_tokens=False)["input_ids"]
        head = [] if open_ended else [e["answer_id"]]
        sequences.append(e["input_ids"] + head + words)
        first_target.append(len(e["input_ids"]) - 1)
        is_letter.append(not open_ended)
        answer_word.append(tokenizer(text, add_special_tokens=False)["input_ids"][0])
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(items), length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)
    targets = torch.full((len(items), length), -100, dtype=torch.long)
    letter_mask = torch.zeros((len(items), length), dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        n = len(sequence)
        input_ids[row, :n] = torch.tensor(sequence)
        attention_mask[row, :n] = 1
        start = first_target[row]
        targets[row, start:n - 1] = torch.tensor(sequence[start + 1:n])
        letter_mask[row, start] = is_letter[row]
    pixels = build.normalize_frames(np.stack([item.frames for item in items]))
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "pixel_values_videos": pixels, "targets": targets, "letter_mask": letter_mask,
            "prompt_last": torch.tensor(first_target), "answer_word": torch.tensor(answer_word)}


def text_item(seed: int, index: int) -> tuple[str, list[str], int]:
    """(question, candidates, answer index) of the ``index``-th generated item of a stream over
    all tasks (see :func:`_round_robin`), for a text-only prompt."""
    task, index = _round_robin(gen.ALL_TASKS, index)
    item = gen.make_item(task, seed, index)
    return item.question, item.candidates, item.answer_index


def make_text_batch(seed: int, n: int, step: int, tokenizer) -> dict[str, Any]:
    """Left-padded text-only prompts "find <answer> ." with the candidates of generated items,
    with the answer letter, the last position and the answer's first word (the logit-lens
    target)."""
    sequences, answers, words = [], [], []
    for j in range(n):
        _, candidates, answer_index = text_item(seed, step * n + j)
        text = build.text_prompt_text(f"find {candidates[answer_index]} .", candidates)
        sequences.append(tokenizer(text)["input_ids"])
        answers.append(tokenizer.convert_tokens_to_ids(build.LETTERS[answer_index]))
        words.append(tokenizer(candidates[answer_index], add_special_tokens=False)["input_ids"][0])
    length = max(len(s) for s in sequences)
    input_ids = torch.full((n, length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((n, length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, length - len(sequence):] = torch.tensor(sequence)
        attention_mask[row, length - len(sequence):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "answer_ids": torch.tensor(answers), "prompt_last": torch.full((n,), length - 1),
            "answer_word": torch.tensor(words)}


def answer_logits(model, batch: dict[str, Any]) -> torch.Tensor:
    """Next-token logits at the last prompt position, ``[B, vocab]`` (left padding); text-only
    batches have no ``pixel_values_videos``."""
    return _text_forward(model, batch, 0)[0]


def _text_forward(model, batch: dict[str, Any], lens_layer: int):
    """(last-position logits, residual stream after block ``lens_layer`` or None) of a
    left-padded batch."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values_videos=batch.get("pixel_values_videos"), logits_to_keep=1,
                output_hidden_states=bool(lens_layer))
    return out.logits[:, -1], (out.hidden_states[lens_layer] if lens_layer else None)


def _text_loss(model, batch: dict[str, Any], config: TrainConfig,
               per: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, last-position logits) of a text-only batch: the letter's summed cross-entropy plus,
    when ``config.answer_lens_layer`` is set, the weighted logit-lens loss on the answer word,
    each divided by ``per``."""
    logits, hidden = _text_forward(model, batch, config.answer_lens_layer)
    loss = torch.nn.functional.cross_entropy(logits, batch["answer_ids"], reduction="sum") / per
    if hidden is not None:
        loss = loss + config.answer_lens_weight * _answer_lens_loss(model, hidden, batch) / per
    return loss, logits


def _round_robin(tasks: Sequence[str], k: int) -> tuple[str, int]:
    """(task, item index within that task) of the ``k``-th item of a stream that cycles through
    ``tasks``: every task counts its own items 0, 1, 2, … exactly as the evaluation sets do.
    A task may occur several times in ``tasks`` (a weighted stream, see :func:`task_cycle`):
    its occurrences still number its items consecutively.

    Numbering items by ``k`` itself would tie the item index to the task (``k ≡ task number``
    modulo the number of tasks), and the generator derives each item's option layout — how
    many options, which letter is right — from its index cycling with period 5 (2–3 options)
    or 9 (2–4 options): a task whose number of tasks shares the period would always have the
    same answer letter in training.
    """
    cycle, place = divmod(k, len(tasks))
    task = tasks[place]
    return task, cycle * tasks.count(task) + tasks[:place].count(task)


def task_cycle(tasks: Sequence[str], weights: str = "") -> tuple[str, ...]:
    """One cycle of a weighted training stream: each task of ``tasks`` repeated by its weight
    in ``weights`` ("task:weight,…"; 1 when not named), in ``tasks``' order."""
    parsed: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in weights.split(","))):
        task, sep, value = part.partition(":")
        if not sep or task not in tasks or not value.strip().isdigit() or int(value) < 1:
            raise InputError(f"video_task_weights: bad entry {part!r}; expected task:weight with "
                             f"a positive integer weight and a task among {', '.join(tasks)}")
        parsed[task] = int(value)
    return tuple(task for task in tasks for _ in range(parsed.get(task, 1)))


def _items(tasks: Sequence[str], n: int, seed: int, step: int) -> list[gen.Item]:
    """n fresh items for one step, round-robin over ``tasks`` (see :func:`_round_robin`)."""
    items = []
    for j in range(n):
        task, index = _round_robin(tasks, step * n + j)
        items.append(gen.make_item(task, seed, index))
    return items


def _lr_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------- training
def _answer_lens_loss(model, hidden: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """Summed cross-entropy of the answer's first word read from ``hidden`` ``[B, pos, d]`` at
    each item's last prompt position through the final norm and the unembedding (logit lens)."""
    rows = torch.arange(hidden.shape[0])
    residual = model.model.language_model.norm(hidden[rows, batch["prompt_last"]])
    return torch.nn.functional.cross_entropy(model.lm_head(residual), batch["answer_word"],
                                             reduction="sum")


def _progress(log, rows: list[dict], phase: str, step: int, steps: int, start: float,
              metrics: Sequence[tuple[str, str]], every: int) -> None:
    """Log the phase's mean ``metrics`` (label, row key) over its last ``every`` rows, every
    ``every`` steps and at its last step."""
    if step % every and step != steps - 1:
        return
    recent = []  # the phase's own last rows: monitor rows in between must not shorten the window
    for row in reversed(rows):
        if len(recent) == every:
            break
        if row["phase"] == phase:
            recent.append(row)
    means = "  ".join(f"{label} {np.mean([r[key] for r in recent]):.3f}" for label, key in metrics)
    log(f"[{phase}] step {step:4d}/{steps}  {means}  {time.time() - start:6.0f}s")


def _optimizer(parameters, lr: float, config: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=config.weight_decay,
                             betas=(0.9, 0.98))


def _text_pretrain(model, tokenizer, config: TrainConfig, log, start: float) -> list[dict]:
    """The text-only multiple-choice phase (see ``TrainConfig.text_pretrain_steps``): its own
    AdamW with linear warm-up, then constant learning rate; items from ``data_seed + 200``."""
    optimizer = _optimizer(model.parameters(), config.text_pretrain_lr, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(1, config.warmup)))
    rows = []
    for step in range(config.text_pretrain_steps):
        batch = make_text_batch(config.data_seed + 200, config.text_pretrain_batch, step,
                                tokenizer)
        loss, logits = _text_loss(model, batch, config, per=config.text_pretrain_batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        accuracy = float((logits.argmax(-1) == batch["answer_ids"]).float().mean())
        rows.append({"phase": "text", "step": step, "loss": float(loss.detach()),
                     "text_accuracy": accuracy})
        _progress(log, rows, "text", step, config.text_pretrain_steps, start,
                  [("loss", "loss"), ("text acc", "text_accuracy")], every=25)
    return rows


POSITION_BINS = 16                    # vision pre-training: object centre, 2-px bins per axis
SIZE_EDGES = (2.75, 3.75, 4.75, 5.75)  # … and half-size (radius) in five bins
IGNORE = -100


def frame_labels(state: gen.FrameState) -> list[int]:
    """Vision pre-training targets of one frame: the scene; then, for every colour of
    ``gen.COLOURS``, the shape class (0 = no visible object of that colour, 1 + index in
    ``gen.SHAPES``); then per colour the x bin, the y bin (``POSITION_BINS`` across the frame)
    and the size bin (radius against ``SIZE_EDGES``) of its object — ``IGNORE`` when absent."""
    n = len(gen.COLOURS)
    shape, x_bin, y_bin, size_bin = [0] * n, [IGNORE] * n, [IGNORE] * n, [IGNORE] * n
    for obj in state.objects:
        if obj.visible:
            k = list(gen.COLOURS).index(obj.colour)
            shape[k] = 1 + gen.SHAPES.index(obj.shape)
            x_bin[k], y_bin[k] = _position_bin(obj.x), _position_bin(obj.y)
            size_bin[k] = int(np.searchsorted(SIZE_EDGES, obj.radius))
    return [list(gen.SCENES).index(state.scene), *shape, *x_bin, *y_bin, *size_bin]


def _position_bin(coordinate: float) -> int:
    return min(POSITION_BINS - 1, max(0, int(coordinate * POSITION_BINS / gen.FRAME_SIZE)))


def _label_classes() -> list[int]:
    n = len(gen.COLOURS)
    return ([len(gen.SCENES)] + [1 + len(gen.SHAPES)] * n + [POSITION_BINS] * (2 * n)
            + [len(SIZE_EDGES) + 1] * n)


def pretraining_frames(seed: int, n: int, step: int) -> tuple[list[gen.FrameState], np.ndarray]:
    """``n`` single frames for vision pre-training step ``step``: the step's items of a stream
    over every task (:func:`_items`; image and temporal tasks alike, so the tower sees every
    size, position and scene the videos hold), one frame of each — frames one at a time, no
    order between them. Returns ``(states, pixels uint8 [n, H, W, 3])``."""
    states, pixels = [], []
    for item in _items(gen.ALL_TASKS, n, seed, step):
        t = (item.index * 5) % len(item.states)        # 5 is coprime with 8: every frame in turn
        states.append(item.states[t])
        pixels.append(item.frames[t])
    return states, np.stack(pixels)


def vision_loss(logits: Sequence[torch.Tensor], labels: torch.Tensor,
                weights: Sequence[float]) -> torch.Tensor:
    """The vision phase's loss: the ``weights``-weighted mean over read-out groups of each group's
    cross-entropy (``logits[k]`` ``[B, classes_k]`` against ``labels[:, k]``, ``IGNORE`` skipped;
    a group with no label in the batch adds 0 but still counts in the denominator)."""
    total = sum(weights[k] * torch.nn.functional.cross_entropy(group, labels[:, k],
                                                               ignore_index=IGNORE)
                for k, group in enumerate(logits) if (labels[:, k] != IGNORE).any())
    return total / sum(weights)


def _vision_pretrain(model, config: TrainConfig, log, start: float) -> list[dict]:
    """The vision phase (see ``TrainConfig.vision_pretrain_steps``): frames from
    ``data_seed + 300``. The temporary head reads the frame's tokens as a *set* — a per-token
    MLP, averaged over tokens, then a linear read-out — so every token must say itself what it
    shows and where in the frame it is (the language model sees tokens, not a flattened grid).
    It is discarded afterwards."""
    classes = _label_classes()
    hidden = model.config.text_config.hidden_size
    tokens = build.tokens_per_frame(config.model)
    generator = torch.Generator().manual_seed(config.seed + 300)
    per_token = torch.nn.Sequential(torch.nn.Linear(hidden, 4 * hidden), torch.nn.GELU())
    readout = torch.nn.Linear(4 * hidden, sum(classes))
    head = torch.nn.ModuleList([per_token, readout])
    for parameter in head.parameters():    # seeded apart from the model's own initialisation
        torch.nn.init.normal_(parameter, std=0.02, generator=generator)
    parameters = [*model.model.vision_tower.parameters(),
                  *model.model.multi_modal_projector.parameters(), *head.parameters()]
    optimizer = _optimizer(parameters, config.vision_pretrain_lr, config)
    n_colours = len(gen.COLOURS)
    # read-out groups: scene, the shape of each colour, then x, y and size of each colour
    weights = [1.0] + [config.vision_shape_weight] * n_colours + [1.0] * (3 * n_colours)
    rows = []
    for step in range(config.vision_pretrain_steps):
        states, frames = pretraining_frames(config.data_seed + 300, config.vision_pretrain_batch,
                                            step)
        pixels = build.normalize_frames(frames[:, None])
        labels = torch.tensor([frame_labels(state) for state in states])
        features = model.model.get_video_features(pixel_values_videos=pixels).pooler_output
        features = _unit_rms(features.reshape(len(states), tokens, hidden))
        logits = readout(per_token(features).mean(1)).split(classes, dim=-1)
        loss = vision_loss(logits, labels, weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        shape_logits = torch.stack(logits[1:1 + n_colours], 1)
        present = labels[:, 1:1 + n_colours] > 0
        shape_accuracy = float((shape_logits.argmax(-1) == labels[:, 1:1 + n_colours])[present]
                               .float().mean())
        x_logits = torch.stack(logits[1 + n_colours:1 + 2 * n_colours], 1)
        x_error = (x_logits.argmax(-1) - labels[:, 1 + n_colours:1 + 2 * n_colours]).abs()
        rows.append({"phase": "vision", "step": step, "loss": float(loss.detach()),
                     "shape_accuracy": shape_accuracy,
                     "x_bin_error": float(x_error[present].float().mean())})
        _progress(log, rows, "vision", step, config.vision_pretrain_steps, start,
                  [("loss", "loss"), ("shape acc", "shape_accuracy"),
                   ("x-bin error", "x_bin_error")], every=50)
    scale = _rescale_projector(model, config)
    log(f"[vision] projector output rescaled by {scale:.3g} to unit RMS per token")
    return rows


def _unit_rms(x: torch.Tensor) -> torch.Tensor:
    """``x`` divided by its root mean square over the last axis: what the backbone's RMSNorm
    makes of a token before any layer reads it."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


@torch.no_grad()
def _rescale_projector(model, config: TrainConfig) -> float:
    """Scale the projector's last linear layer so that video tokens have unit RMS on average
    (norm √d, measured on fixed frames). The head reads tokens through :func:`_unit_rms`, so
    their scale is free to drift during the vision phase; left at hundreds, it would drown
    everything the backbone's own layers add to the video positions' residual stream."""
    _, frames = pretraining_frames(config.data_seed + 301, 64, 0)
    pixels = build.normalize_frames(frames[:, None])
    features = model.model.get_video_features(pixel_values_videos=pixels).pooler_output
    scale = float(features.pow(2).mean(-1).sqrt().mean().reciprocal())
    last = model.model.multi_modal_projector.linear_2
    last.weight.mul_(scale)
    last.bias.mul_(scale)
    return scale


def train(config: TrainConfig, *, log: Callable[[str], None] = print,
          model=None, tokenizer=None,
          monitor: Callable[[Any, Any], dict[str, float]] | None = None,
          monitor_every: int = 0) -> tuple[Any, Any, list[dict]]:
    """Run one stage; returns (model, tokenizer, per-step log rows).

    ``monitor(model, tokenizer)``, when given, is called every ``monitor_every`` main-loop steps
    and after the last one with the model in eval mode (e.g. held-out accuracy per task); what
    it returns is logged and kept as a row of phase ``"monitor"``. Training draws no random
    numbers after initialisation, so monitoring leaves the trained weights unchanged.
    """
    if monitor is not None and monitor_every < 1:
        raise InputError(f"monitor_every={monitor_every}: a monitor needs a positive interval")
    video_tasks = task_cycle(gen.TEMPORAL_TASKS, config.video_task_weights)   # checked first
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    tokenizer = tokenizer or build.build_tokenizer()
    if model is None:
        if config.init_from:
            from transformers import LlavaNextVideoForConditionalGeneration

            source = (checkpoint_path(config.init_from)
                      if config.init_from in MODEL_NAMES.values() else Path(config.init_from))
            model = LlavaNextVideoForConditionalGeneration.from_pretrained(source)
        else:
            model = build.build_model(config.model, tokenizer, seed=config.seed)
    n_layers = model.config.text_config.num_hidden_layers
    if not 0 <= config.answer_lens_layer <= n_layers:
        raise InputError(f"answer_lens_layer={config.answer_lens_layer}: expected 0 (off) or a "
                         f"block 1..{n_layers} of this {n_layers}-layer backbone")
    model.train()
    rows = []
    start = time.time()
    if config.vision_pretrain_steps:
        rows += _vision_pretrain(model, config, log, start)
    if config.text_pretrain_steps:
        rows += _text_pretrain(model, tokenizer, config, log, start)
    if config.freeze_vision_tower:
        model.model.vision_tower.requires_grad_(False)
    optimizer = _optimizer([p for p in model.parameters() if p.requires_grad], config.lr, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    for step in range(config.steps):
        groups = []
        if config.video_batch:
            groups.append(_items(video_tasks, config.video_batch, config.data_seed, step))
        if config.image_batch:
            groups.append(_items(gen.IMAGE_TASKS, config.image_batch, config.data_seed, step))
        total = sum(len(g) for g in groups) + config.text_batch
        loss_value, correct, n_letters, lens_value, n_lens = 0.0, 0, 0, 0.0, 0
        optimizer.zero_grad(set_to_none=True)
        for items in groups:
            batch = make_training_batch(
                items, tokenizer, config.model,
                1.0 if step < config.open_ended_steps else config.open_ended_fraction)
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                        pixel_values_videos=batch["pixel_values_videos"],
                        output_hidden_states=bool(config.answer_lens_layer))
            logits = out.logits
            per_token = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), batch["targets"], ignore_index=-100, reduction="none")
            letter = batch["letter_mask"]
            text = (batch["targets"] != -100) & ~letter
            # Each item counts once: its letter (multiple choice) plus its answer words averaged.
            words_per_item = text.sum(1, keepdim=True).clamp(min=1)
            loss = (per_token[letter].sum()
                    + config.answer_text_weight * (per_token * text / words_per_item).sum()) / total
            if config.answer_lens_layer:
                lens = _answer_lens_loss(model, out.hidden_states[config.answer_lens_layer], batch)
                loss = loss + config.answer_lens_weight * lens / total
                lens_value += float(lens.detach())
                n_lens += len(items)
            loss.backward()
            loss_value += float(loss.detach())
            correct += int((logits[letter].argmax(-1) == batch["targets"][letter]).sum())
            n_letters += int(letter.sum())
        if config.text_batch:
            batch = make_text_batch(config.data_seed + 100, config.text_batch, step, tokenizer)
            loss, logits = _text_loss(model, batch, config, per=total)
            loss.backward()
            loss_value += float(loss.detach())
            text_correct = int((logits.argmax(-1) == batch["answer_ids"]).sum())
        else:
            text_correct = 0
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        rows.append({"phase": config.stage, "step": step, "loss": loss_value,
                     "accuracy": correct / max(1, n_letters),
                     "text_accuracy": text_correct / max(1, config.text_batch),
                     **({"lens_loss": lens_value / n_lens} if n_lens else {})})
        _progress(log, rows, config.stage, step, config.steps, start,
                  [("loss", "loss"), ("train acc", "accuracy"), ("text acc", "text_accuracy")],
                  every=25)
        if monitor is not None and ((step + 1) % monitor_every == 0 or step == config.steps - 1):
            model.eval()
            with torch.no_grad():
                measured = monitor(model, tokenizer)
            model.train()
            rows.append({"phase": "monitor", "step": step, **measured})
            log(f"[monitor] after step {step + 1}: "
                + "  ".join(f"{key} {value:.3g}" for key, value in measured.items()))
    model.eval()
    return model, tokenizer, rows


def save_checkpoint(model, tokenizer, config: TrainConfig, out: str | Path,
                    extra: dict[str, Any] | None = None) -> Path:
    """``save_pretrained`` (safetensors) of model and tokenizer, the processor files, the chat
    template, and ``training.json`` (config and summary)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    for name, content in build.processor_files(config.model).items():
        (out / name).write_text(json.dumps(content, indent=2) + "\n")
    (out / "chat_template.jinja").write_text(build.CHAT_TEMPLATE)
    record = {"train_config": config.to_dict(), **(extra or {})}
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return out
