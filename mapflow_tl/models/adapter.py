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
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import torch

from ..errors import InputError
from .videollm import Prepared, VideoSample

__all__ = [
    "FamilyAdapter",
    "register_adapter",
    "supported_architectures",
    "adapter_for",
    "check_num_frames_options",
    "frame_sampler_option",
    "sample_frame_sampler",
    "refuse_format",
    "answer_index",
    "check_context_length",
    "frame_budget",
]


class FamilyAdapter(ABC):
    """Everything one VideoLLM family does differently. Subclass, set ``model_types`` and
    ``name``, implement the abstract methods, and decorate with :func:`register_adapter`."""

    #: ``config.json`` model_type values this adapter loads.
    model_types: ClassVar[tuple[str, ...]] = ()
    #: Human-readable family name for errors and the support table.
    name: ClassVar[str] = ""

    def __init__(self, path: Path, config: dict[str, Any], *, dtype: torch.dtype,
                 device: str | torch.device, n_devices: int = 1, backend: str | None = None,
                 **options: Any) -> None:
        from .backends import resolve_backend

        self.path, self.config, self.dtype, self.device = path, config, dtype, device
        self.n_devices, self.options = n_devices, options
        #: the TransformerLens backend of the backbone ("hooked" or "bridge"; models/backends.py)
        self.backend = resolve_backend(backend)

    @classmethod
    def accepts(cls, config: dict[str, Any]) -> bool:
        """Whether this adapter loads a checkpoint with this ``config.json`` (default: by
        model_type; override for formats told apart by extra fields)."""
        return config.get("model_type") in cls.model_types

    @abstractmethod
    def load(self) -> None:
        """Load the HF model parts from ``self.path`` (vision tower, projector, processor, text
        model) and set ``self.backbone`` (``backbone_from_hf(..., backend=self.backend)``: a
        HookedTransformer or a TransformerBridge), ``self.vision``,
        ``self.processor`` and ``self.tokenizer``."""

    @abstractmethod
    def prepare(self, sample: VideoSample) -> Prepared:
        """Build the prompt, tokenize it, compute the video features, splice them into the
        embeddings and return them with the exact SegmentMap."""

    def bind_appended(self, prompt: Prepared, embeds: torch.Tensor,
                      input_ids: torch.Tensor | None = None) -> dict[str, Any]:
        """Bind ``embeds`` ``[1, prompt + k, d_model]`` — the prompt's embeddings followed by
        ``k`` appended text tokens (a generated or teacher-forced answer) — to whatever
        per-sample state the backbone reads besides the embeddings, as the HF model would for
        those tokens during generation; ``input_ids`` ``[1, prompt + k]`` where known. Returns
        the ``meta`` entries that differ for the longer sequence. Default: nothing to bind (1D
        positions continue 0 … n−1 by themselves)."""
        return {}

    def unbind(self, embeds: torch.Tensor) -> None:
        """Drop what :meth:`bind_appended` bound for ``embeds`` (generation binds each step's
        sequence and drops the one before). Default: nothing."""


_ADAPTERS: list[type[FamilyAdapter]] = []
#: model_type → why a known checkpoint format is refused (see :func:`refuse_format`).
_REFUSED: dict[str, str] = {}


def refuse_format(model_type: str, reason: str) -> None:
    """Name a checkpoint format that mapflow-tl knows and refuses, with the reason and the fix
    (for instance a remote-code release whose weights are not mapped onto native classes)."""
    _REFUSED[model_type] = reason


def register_adapter(adapter: type[FamilyAdapter]) -> type[FamilyAdapter]:
    """Class decorator: make an adapter available to :func:`~mapflow_tl.models.load_videollm`."""
    if not adapter.model_types or not adapter.name:
        raise TypeError(f"adapter {adapter.__name__} must set model_types and name")
    _ADAPTERS.append(adapter)
    return adapter


def supported_architectures() -> dict[str, str]:
    """``{model_type: family name}`` of every registered adapter."""
    return {model_type: adapter.name for adapter in _ADAPTERS for model_type in adapter.model_types}


def _overrides_accepts(adapter: type[FamilyAdapter]) -> bool:
    # Compare the functions: ``adapter.accepts`` is a new bound method on every access.
    return adapter.accepts.__func__ is not FamilyAdapter.accepts.__func__


def adapter_for(config: dict[str, Any], where: str) -> type[FamilyAdapter]:
    """The adapter class that accepts this config, or an :class:`InputError` listing the
    supported model types."""
    matches = [adapter for adapter in _ADAPTERS if adapter.accepts(config)]
    if not matches and config.get("model_type") in _REFUSED:
        raise InputError(f"{where}: {_REFUSED[config['model_type']]}")
    if not matches:
        raise InputError(
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
    (frames sampled from a video file; ``default_num_frames`` when not given). Every family also
    takes ``frame_sampler`` ("midpoints" or "linspace", see :func:`frame_sampler_option`)."""
    known = set(known) | {"frame_sampler"}
    unknown = sorted(set(adapter.options) - known)
    if unknown:
        raise InputError(f"unknown load option(s) {unknown} for the {adapter.name} family; "
                         f"options: {sorted(known)}")
    num_frames = adapter.options.get("num_frames", default_num_frames)
    if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) \
            or num_frames < 1:
        raise InputError(f"num_frames must be a positive int, got {num_frames!r}")
    return int(num_frames)


def frame_sampler_option(adapter: FamilyAdapter, default: str = "midpoints") -> str:
    """The ``frame_sampler`` load option: how frames are picked from a video file, "midpoints"
    (the paper's LLaVA / InternVL evaluation, TVBench and TOMATO alike) or "linspace" (TOMATO's
    own code and the official VideoLLaMA3 runs); ``default`` is the family's official one."""
    from ..data.video import FRAME_SAMPLERS

    sampler = adapter.options.get("frame_sampler", default)
    if sampler not in FRAME_SAMPLERS:
        raise InputError(f"frame_sampler {sampler!r} is not one of "
                         f"{', '.join(repr(name) for name in FRAME_SAMPLERS)}")
    return sampler


def sample_frame_sampler(adapter: FamilyAdapter, sample: Any) -> str:
    """The frame sampler for one sample: the ``frame_sampler`` load option when the user gave
    it, else the sample's benchmark rule (``sample.frame_sampler``, set by the dataset registry:
    Video-MME, LongVideoBench, VCGBench), else the family's official one
    (``adapter.frame_sampler``). The same for every family."""
    if "frame_sampler" in adapter.options:
        return adapter.frame_sampler
    return getattr(sample, "frame_sampler", None) or adapter.frame_sampler


def answer_index(sample: VideoSample) -> int | None:
    """Check the sample's options and answer and return the answer as an int index (None when
    unknown).

    Refused, each by an :class:`InputError` naming the sample: an option that is not a
    non-empty string, two options with the same text (the true one would be ambiguous and two
    letters would mean the same thing), an answer that is not an int index (``True`` is a bool,
    not option 1; ``"B"`` is a letter), an index outside the options, and an answer for a sample
    without options. A sample with no options and no answer is the open-ended variant.
    """
    where = f"sample {sample.id!r}" if getattr(sample, "id", "") else "this sample"
    options = list(sample.options)
    seen: dict[str, int] = {}
    for index, option in enumerate(options):
        if not isinstance(option, str) or not option.strip():
            raise InputError(f"{where}: option {index} must be non-empty text, got {option!r}")
        key = " ".join(option.split()).casefold()
        if key in seen:
            raise InputError(f"{where}: options {seen[key]} and {index} are the same text "
                             f"({option!r}); each option must differ, or the true one is "
                             f"ambiguous")
        seen[key] = index
    answer = sample.answer
    if answer is None:
        return None
    if isinstance(answer, (bool, np.bool_)) or not isinstance(answer, (int, np.integer)):
        raise InputError(f"{where}: answer must be the int index of the true option "
                         f"(0 for the first), got {answer!r} ({type(answer).__name__})")
    if not options:
        raise InputError(f"{where}: answer {int(answer)} given but the sample has no options; "
                         f"give the options, or answer=None for the open-ended question")
    if not 0 <= answer < len(options):
        raise InputError(f"{where}: answer {int(answer)} is not an index into its "
                         f"{len(options)} options (0 … {len(options) - 1})")
    return int(answer)


def frame_budget(n_positions: int, limit: int, n_frames: int | None,
                 video_positions: Callable[[int], int | None] | None,
                 from_file: bool = True) -> str:
    """How the prompt's positions split between its frames and the rest, and the largest frame
    count that fits ``limit`` positions — the second half of a too-long-prompt error.

    ``video_positions(k)``: positions k frames take (non-decreasing in k). Without it (or
    without ``n_frames``) only the flag is named. ``from_file``: the frames were sampled from a
    video file (``num_frames`` picks how many), not given as an array (used as given)."""
    flag = ("load_videollm(..., num_frames=N), CLI --num-frames N" if from_file
            else "the sample's frame array is used as given: pass fewer frames")
    video = None if n_frames is None or video_positions is None else video_positions(n_frames)
    if video is None or n_frames < 1:
        return f"use fewer frames ({flag})"
    other = n_positions - video
    per_frame = video / n_frames
    per_frame_text = f"{video // n_frames}" if video % n_frames == 0 else f"≈ {per_frame:.1f}"
    split = (f"{n_frames} frames × {per_frame_text} tokens per frame + {other} other positions")
    # frame counts are at most a few thousand: a linear scan over them is cheap
    counts = {k: video_positions(k) for k in range(1, n_frames)}
    if n_frames > 1 and all(count is None for count in counts.values()):
        return f"{split}; use fewer frames ({flag})"  # the family cannot tell before its tower
    fits = [k for k, count in counts.items() if count is not None and other + count <= limit]
    if not fits:
        fewest = counts.get(1) if counts.get(1) is not None else video
        return (f"{split}; no frame count fits (the fewest frames still take {other + fewest} "
                f"positions): shorten the prompt or use a model with a longer context")
    best = max(fits)
    if not from_file:
        return f"{split}; at most {best} frames fit ({flag})"
    return f"{split}; at most {best} frames fit — pass num_frames={best} ({flag})"


def check_context_length(n_positions: int, text_config: Any, *, n_frames: int | None = None,
                         video_positions: Callable[[int], int | None] | None = None,
                         from_file: bool = True) -> None:
    """Refuse a prompt longer than the backbone reproduces: past ``max_position_embeddings``, or
    past an active sliding window (the HookedTransformer backbone attends to all positions).

    With ``n_frames`` (the frames sampled) and ``video_positions`` (frame count → the positions
    the video takes), the one-line error names the frames, tokens per frame, the positions
    needed, the model's context and the largest frame count that fits (:func:`frame_budget`;
    ``from_file``: whether ``num_frames`` chose them)."""
    limit = getattr(text_config, "max_position_embeddings", None)
    if limit is not None and n_positions > limit:
        raise InputError(f"the prompt has {n_positions} positions, more than the backbone's "
                         f"max_position_embeddings {limit}: "
                         f"{frame_budget(n_positions, limit, n_frames, video_positions, from_file)}")
    window = getattr(text_config, "sliding_window", None)
    if window is not None and getattr(text_config, "use_sliding_window", True) \
            and n_positions > window:
        raise InputError(
            f"the prompt has {n_positions} positions, more than the backbone's sliding "
            f"window {window}; the HookedTransformer backbone attends to all positions, so "
            f"it would not reproduce the model: "
            f"{frame_budget(n_positions, window, n_frames, video_positions, from_file)}")
