"""The VideoLLM wrapper and the family-adapter interface.

Flow of one analysis (DESIGN §3): ``load_videollm`` → ``prepare(sample)`` gives embeddings and a
:class:`~mapflow_tl.segments.SegmentMap` → hooks → ``run_with_hooks``. Everything that differs
between model families lives in one :class:`FamilyAdapter` subclass per family (one file each under
``mapflow_tl/models/``), registered by the ``model_type`` of its ``config.json``. Experiment code
only ever sees :class:`VideoLLM` and :class:`Prepared`.

An adapter provides three things:

1. the prompt: the family's chat template around the paper's multiple-choice block, with the exact
   character spans of question, options and last position;
2. the video features: frames through the HF vision tower and projector exactly as the HF model
   runs them, and where in the token sequence they go (frames, their H×W grids, separators);
3. the backbone: the HF text decoder and LM head, converted to a ``HookedTransformer``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8
from transformer_lens import HookedTransformer

from ..hooks import HookList
from ..segments import SegmentMap
from .backbone import run_from_embeds

__all__ = [
    "VideoSample",
    "Prepared",
    "VideoLLM",
    "FamilyAdapter",
    "register_adapter",
    "supported_architectures",
    "adapter_for",
    "read_config",
    "as_video_sample",
]


@dataclass
class VideoSample:
    """One question about one video: what :meth:`VideoLLM.prepare` takes.

    ``video`` is a path (file, frame folder, GIF) or frames as a uint8 array ``[T, H, W, 3]``.
    ``options`` are the option texts without labels; ``answer`` the index of the true one (None
    when unknown). ``start``/``end`` bound the clip in seconds.
    """

    video: str | Path | np.ndarray
    question: str
    options: Sequence[str] = ()
    answer: int | None = None
    start: float | None = None
    end: float | None = None
    id: str = ""
    task: str = ""


def as_video_sample(sample: Any) -> VideoSample:
    """A :class:`VideoSample` from itself or from a benchmark sample
    (:class:`mapflow_tl.data.benchmarks.Sample`: ``answer_index`` and bounds in seconds)."""
    if isinstance(sample, VideoSample):
        return sample
    missing = [name for name in ("video", "question") if not hasattr(sample, name)]
    if missing:
        raise ValueError(f"a sample needs 'video' and 'question'; {type(sample).__name__} "
                         f"lacks {missing}")
    answer = getattr(sample, "answer_index", None)
    if answer is None and isinstance(getattr(sample, "answer", None), int):
        answer = sample.answer
    return VideoSample(video=sample.video, question=sample.question,
                       options=tuple(getattr(sample, "options", ())), answer=answer,
                       start=getattr(sample, "start", None), end=getattr(sample, "end", None),
                       id=str(getattr(sample, "id", "")), task=str(getattr(sample, "task", "")))


@dataclass
class Prepared:
    """A prepared prompt: the backbone's input embeddings and the map of what each position is.

    ``answer_ids[i]`` is the token id of option i's letter as the model would emit it after
    "Best option:(" — compare ``logits[0, -1, answer_ids]`` to read the model's choice.
    """

    embeds: Float[torch.Tensor, "1 pos d_model"]
    segments: SegmentMap
    input_ids: Int[torch.Tensor, "1 pos"]
    answer_ids: Int[torch.Tensor, " n_options"]
    answer: int | None = None
    prompt: str = ""
    frames: UInt8[np.ndarray, "T H W 3"] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_positions(self) -> int:
        return self.embeds.shape[1]

    @property
    def answer_token(self) -> int | None:
        """Token id of the true option's letter (the ground-truth token)."""
        return None if self.answer is None else int(self.answer_ids[self.answer])


class FamilyAdapter(ABC):
    """Everything one VideoLLM family does differently. Subclass, set ``model_types`` and
    ``name``, implement the abstract methods, and decorate with :func:`register_adapter`."""

    #: ``config.json`` model_type values this adapter loads.
    model_types: ClassVar[tuple[str, ...]] = ()
    #: Human-readable family name for errors and the support table.
    name: ClassVar[str] = ""

    def __init__(self, path: Path, config: dict[str, Any], *, dtype: torch.dtype,
                 device: str | torch.device, n_devices: int = 1, **options: Any) -> None:
        self.path, self.config, self.dtype, self.device = path, config, dtype, device
        self.n_devices, self.options = n_devices, options

    @classmethod
    def accepts(cls, config: dict[str, Any]) -> bool:
        """Whether this adapter loads a checkpoint with this ``config.json`` (default: by
        model_type; override for formats told apart by extra fields)."""
        return config.get("model_type") in cls.model_types

    @abstractmethod
    def load(self) -> None:
        """Load the HF model parts from ``self.path`` (vision tower, projector, processor, text
        model) and set ``self.backbone`` (a HookedTransformer), ``self.vision``,
        ``self.processor`` and ``self.tokenizer``."""

    @abstractmethod
    def prepare(self, sample: VideoSample) -> Prepared:
        """Build the prompt, tokenize it, compute the video features, splice them into the
        embeddings and return them with the exact SegmentMap."""


_ADAPTERS: list[type[FamilyAdapter]] = []


def register_adapter(adapter: type[FamilyAdapter]) -> type[FamilyAdapter]:
    """Class decorator: make an adapter available to :func:`load_videollm`."""
    if not adapter.model_types or not adapter.name:
        raise ValueError(f"adapter {adapter.__name__} must set model_types and name")
    _ADAPTERS.append(adapter)
    return adapter


def supported_architectures() -> dict[str, str]:
    """``{model_type: family name}`` of every registered adapter."""
    return {model_type: adapter.name for adapter in _ADAPTERS for model_type in adapter.model_types}


def read_config(path: Path) -> dict[str, Any]:
    """Read ``config.json`` of a local checkpoint directory, with errors naming the file."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path} has no config.json: is this a model directory?")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file} is not valid JSON: {error}") from None


def adapter_for(config: dict[str, Any], where: str) -> type[FamilyAdapter]:
    """The adapter class that accepts this config, or a ``ValueError`` listing the supported
    model types."""
    matches = [adapter for adapter in _ADAPTERS if adapter.accepts(config)]
    if not matches:
        raise ValueError(
            f"{where}: model_type {config.get('model_type')!r} "
            f"(architectures {config.get('architectures')}) is not supported; supported model "
            f"types: {sorted(supported_architectures())}"
        )
    # The most specific adapter wins: one that overrides accepts() over a plain model_type match.
    matches.sort(key=lambda adapter: adapter.accepts is FamilyAdapter.accepts)
    return matches[0]


class VideoLLM:
    """A loaded VideoLLM: HF vision side + ``HookedTransformer`` language backbone.

    ``backbone`` is the HookedTransformer (unprocessed weights, hooks see what HF computes);
    ``vision`` the HF vision tower and projector; ``processor`` / ``tokenizer`` the HF ones.
    """

    def __init__(self, adapter: FamilyAdapter, name: str) -> None:
        self.adapter, self.name = adapter, name

    @property
    def backbone(self) -> HookedTransformer:
        return self.adapter.backbone

    @property
    def vision(self) -> Any:
        return self.adapter.vision

    @property
    def processor(self) -> Any:
        return self.adapter.processor

    @property
    def tokenizer(self) -> Any:
        return self.adapter.tokenizer

    @property
    def n_layers(self) -> int:
        return self.backbone.cfg.n_layers

    @property
    def family(self) -> str:
        return self.adapter.name

    def prepare(self, sample: VideoSample | Any) -> Prepared:
        """Prompt + video → embeddings with the video tokens injected, and the SegmentMap.

        Takes a :class:`VideoSample` or a benchmark sample; the result's ``meta`` records the
        sample's ``id`` and ``task``."""
        sample = as_video_sample(sample)
        prepared = self.adapter.prepare(sample)
        prepared.meta.setdefault("id", sample.id)
        prepared.meta.setdefault("task", sample.task)
        return prepared

    def run_with_hooks(
        self,
        x: Prepared,
        fwd_hooks: HookList = (),
        *,
        return_type: str | None = "logits",
    ) -> Float[torch.Tensor, "1 pos d_vocab"]:
        """Backbone forward from the injected embeddings with TransformerLens hooks."""
        return run_from_embeds(self.backbone, x.embeds, fwd_hooks=fwd_hooks,
                               return_type=return_type)

    def __call__(self, x: Prepared) -> Float[torch.Tensor, "1 pos d_vocab"]:
        return self.run_with_hooks(x)

    def option_probabilities(
        self, x: Prepared, fwd_hooks: HookList = ()
    ) -> Float[torch.Tensor, " n_options"]:
        """Probability of each option's letter at the last position (softmax over the vocab)."""
        logits = self.run_with_hooks(x, fwd_hooks)[0, -1]
        return logits.float().softmax(-1)[x.answer_ids.to(logits.device)]

    def __repr__(self) -> str:
        cfg = self.backbone.cfg
        return (f"VideoLLM({self.name!r}, family={self.family}, {cfg.n_layers} layers, "
                f"d_model={cfg.d_model})")
