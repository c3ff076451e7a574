"""The family-adapter interface and the registry that picks an adapter for a checkpoint.

Everything that differs between model families lives in one :class:`FamilyAdapter` subclass per
family (one file each under ``mapflow_tl/models/``), registered by the ``model_type`` of its
``config.json``. An adapter provides three things:

1. the prompt: the family's chat template around the paper's multiple-choice block, with the exact
   character spans of question, options and last position;
2. the video features: frames through the HF vision tower and projector exactly as the HF model
   runs them, and where in the token sequence they go (frames, their H×W grids, separators);
3. the backbone: the HF text decoder and LM head, converted to a ``HookedTransformer``.

Most families do not subclass :class:`FamilyAdapter` directly but one of the bases that already
do the shared work: :class:`~mapflow_tl.models.spliced_adapter.SplicedVideoAdapter` (the video
replaces one placeholder token), :class:`~mapflow_tl.models.pooled_adapter.PooledFramesAdapter`
(an image model on T-H-W pooled frames) or
:class:`~mapflow_tl.models.native_adapter.NativeVideoAdapter` (a transformers-native video
model). The helpers below are what those bases share.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterable

import numpy as np
import torch

from .videollm import Prepared, VideoSample

__all__ = [
    "FamilyAdapter",
    "register_adapter",
    "supported_architectures",
    "adapter_for",
    "check_num_frames_options",
    "answer_index",
    "check_context_length",
]


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
    """Class decorator: make an adapter available to :func:`~mapflow_tl.models.load_videollm`."""
    if not adapter.model_types or not adapter.name:
        raise ValueError(f"adapter {adapter.__name__} must set model_types and name")
    _ADAPTERS.append(adapter)
    return adapter


def supported_architectures() -> dict[str, str]:
    """``{model_type: family name}`` of every registered adapter."""
    return {model_type: adapter.name for adapter in _ADAPTERS for model_type in adapter.model_types}


def _overrides_accepts(adapter: type[FamilyAdapter]) -> bool:
    # Compare the functions: ``adapter.accepts`` is a new bound method on every access.
    return adapter.accepts.__func__ is not FamilyAdapter.accepts.__func__


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
    matches.sort(key=lambda adapter: not _overrides_accepts(adapter))
    return matches[0]


# ---------------------------------------------------------------------- shared by the bases
def check_num_frames_options(adapter: FamilyAdapter, known: Iterable[str],
                             default_num_frames: int) -> int:
    """Refuse load options the family does not know and return the ``num_frames`` option
    (frames sampled from a video file; ``default_num_frames`` when not given)."""
    known = set(known)
    unknown = sorted(set(adapter.options) - known)
    if unknown:
        raise ValueError(f"unknown load option(s) {unknown} for the {adapter.name} family; "
                         f"options: {sorted(known)}")
    num_frames = int(adapter.options.get("num_frames", default_num_frames))
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    return num_frames


def answer_index(sample: VideoSample) -> int | None:
    """The sample's true option as an int index (None when unknown)."""
    answer = sample.answer
    if answer is not None and not isinstance(answer, (int, np.integer)):
        raise ValueError(f"sample answer must be the index of the true option, got {answer!r}")
    return None if answer is None else int(answer)


def check_context_length(n_positions: int, text_config: Any) -> None:
    """Refuse a prompt longer than the backbone reproduces: past ``max_position_embeddings``, or
    past an active sliding window (the HookedTransformer backbone attends to all positions)."""
    limit = getattr(text_config, "max_position_embeddings", None)
    if limit is not None and n_positions > limit:
        raise ValueError(f"the prompt has {n_positions} positions, more than the backbone's "
                         f"max_position_embeddings {limit}; use fewer frames (num_frames)")
    window = getattr(text_config, "sliding_window", None)
    if window is not None and getattr(text_config, "use_sliding_window", True) \
            and n_positions > window:
        raise ValueError(
            f"the prompt has {n_positions} positions, more than the backbone's sliding "
            f"window {window}; the HookedTransformer backbone attends to all positions, so "
            f"it would not reproduce the model. Use fewer frames (num_frames)")
