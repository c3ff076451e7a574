"""What experiment code sees of a model: :class:`VideoLLM`, the question it is asked
(:class:`VideoSample`) and the prepared input (:class:`Prepared`).

Flow of one analysis (docs/concepts.md): ``load_videollm`` → ``prepare(sample)`` gives embeddings
and a :class:`~mapflow_tl.segments.SegmentMap` → hooks → ``run_with_hooks``. Everything that
differs between model families is behind the :class:`~mapflow_tl.models.adapter.FamilyAdapter`
a :class:`VideoLLM` holds; experiment code never names a family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8
from transformer_lens import HookedTransformer

from ..hooks import HookList
from ..segments import SegmentMap
from .backbone import run_from_embeds

if TYPE_CHECKING:  # the adapter module imports this one; the name is needed for annotations only
    from .adapter import FamilyAdapter

__all__ = ["VideoSample", "Prepared", "VideoLLM", "as_video_sample"]


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
