"""What experiment code sees of a model: :class:`VideoLLM`, the question it is asked
(:class:`VideoSample`) and the prepared input (:class:`Prepared`).

Flow of one analysis (docs/concepts.md): ``load_videollm`` → ``prepare(sample)`` gives embeddings
and a :class:`~mapflow_tl.segments.SegmentMap` → hooks → ``run_with_hooks`` / ``run_with_cache``.
Everything that differs between model families is behind the
:class:`~mapflow_tl.models.adapter.FamilyAdapter` a :class:`VideoLLM` holds; experiment code never
names a family.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8
from transformer_lens import ActivationCache, HookedTransformer

from ..errors import InputError
from ..hooks import HookList, check_hooks
from ..segments import SegmentMap
from .backbone import cache_from_embeds, run_from_embeds

if TYPE_CHECKING:  # the adapter module imports this one; the name is needed for annotations only
    from .adapter import FamilyAdapter

__all__ = ["VideoSample", "Prepared", "VideoLLM", "as_video_sample", "placeholder_token_ids"]


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

    def __post_init__(self) -> None:
        _check_options_container(self.options, self.id)


def _check_options_container(options: Any, sample_id: str = "") -> None:
    """Refuse options that are not a sequence of option texts: a string would be read letter by
    letter ("up" as the options "u" and "p")."""
    where = f"sample {sample_id!r}" if sample_id else "this sample"
    if isinstance(options, (str, bytes)):
        raise InputError(f"{where}: options must be a list of option texts, got the string "
                         f"{options!r} (read as one option per character); pass "
                         f"options=[{options!r}, ...]")
    if not (isinstance(options, Sequence) or (isinstance(options, np.ndarray)
                                              and options.ndim == 1)):
        raise InputError(f"{where}: options must be a list of option texts, got "
                         f"{type(options).__name__}")


def as_video_sample(sample: Any) -> VideoSample:
    """A :class:`VideoSample` from itself or from a benchmark sample
    (:class:`mapflow_tl.data.loaders.Sample`: ``answer_index`` and bounds in seconds)."""
    if isinstance(sample, VideoSample):
        return sample
    missing = [name for name in ("video", "question") if not hasattr(sample, name)]
    if missing:
        raise InputError(f"a sample needs 'video' and 'question'; {type(sample).__name__} "
                         f"lacks {missing}")
    options = getattr(sample, "options", ())
    _check_options_container(options, str(getattr(sample, "id", "")))
    answer = getattr(sample, "answer_index", None)
    if answer is None and isinstance(getattr(sample, "answer", None), int):
        answer = sample.answer
    return VideoSample(video=sample.video, question=sample.question,
                       options=tuple(options), answer=answer,
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


#: Where families keep the token id(s) whose embeddings ``prepare`` replaces with video features:
#: adapter attributes (spliced and pooled families, InternVL chat) and HF config fields (native
#: families). Image placeholders count too: embedded as text they are as wrong as video ones.
_PLACEHOLDER_ATTRIBUTES = ("media_token_id", "context_id")
_PLACEHOLDER_CONFIG_FIELDS = ("video_token_id", "video_token_index", "image_token_id",
                              "image_token_index")


def placeholder_token_ids(adapter: Any) -> frozenset[int]:
    """Token ids of the adapter's video/image placeholders: the ids whose input embeddings
    ``prepare`` replaces with vision features (empty when the adapter declares none)."""
    found = [getattr(adapter, name, None) for name in _PLACEHOLDER_ATTRIBUTES]
    config = getattr(adapter, "hf_config", None)
    found += [getattr(config, name, None) for name in _PLACEHOLDER_CONFIG_FIELDS]
    return frozenset(int(i) for i in found
                     if isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 0)


class _PlaceholderGuard:
    """Forward pre-hook on the backbone's token embedding (``backbone.embed``): token ids holding
    placeholder ids are refused.

    ``vlm.backbone(x.input_ids)`` would embed each placeholder as text instead of the video and
    return wrong logits without complaint. Every token-id path of TransformerLens goes through
    ``backbone.embed`` (``forward``, ``run_with_hooks``, ``run_with_cache``, ``generate``); a
    forward from embeddings (``start_at_layer=0``: what ``VideoLLM`` runs) never does. The
    adapters embed the prompt's text with ``backbone.embed`` inside ``prepare`` and overwrite the
    placeholder rows, so ``VideoLLM.prepare`` suspends the check while they do."""

    def __init__(self, backbone: HookedTransformer, ids: frozenset[int]) -> None:
        self.ids = torch.tensor(sorted(ids), dtype=torch.long)
        self.suspended = 0
        self.handle = backbone.embed.register_forward_pre_hook(self)

    def __call__(self, module: Any, args: tuple) -> None:
        tokens = args[0] if args else None
        if self.suspended or not isinstance(tokens, torch.Tensor) or tokens.is_floating_point():
            return
        hits = torch.isin(tokens, self.ids.to(tokens.device))
        if hits.any():
            found = sorted(set(tokens[hits].tolist()))
            raise InputError(
                f"these token ids hold video placeholder id(s) {found} at {int(hits.sum())} "
                f"positions, which vlm.backbone would embed as text instead of the video (wrong "
                f"logits); run the prepared input through the VideoLLM: vlm(x), "
                f"vlm.run_with_hooks(x, hooks) or vlm.run_with_cache(x)")

    @contextmanager
    def suspend(self) -> Iterator[None]:
        self.suspended += 1
        try:
            yield
        finally:
            self.suspended -= 1


def _install_placeholder_guard(backbone: HookedTransformer,
                               ids: frozenset[int]) -> _PlaceholderGuard | None:
    """One guard per backbone (a second VideoLLM on the same backbone widens its id set)."""
    guard = getattr(backbone, "_mapflow_placeholder_guard", None)
    if guard is not None:
        ids = ids | frozenset(guard.ids.tolist())
        guard.handle.remove()
    guard = _PlaceholderGuard(backbone, ids) if ids else None
    backbone._mapflow_placeholder_guard = guard
    return guard


NamesFilter = str | Sequence[str] | Callable[[str], bool] | None


class VideoLLM:
    """A loaded VideoLLM: HF vision side + ``HookedTransformer`` language backbone.

    ``backbone`` is the HookedTransformer (unprocessed weights, hooks see what HF computes);
    ``vision`` the HF vision tower and projector; ``processor`` / ``tokenizer`` the HF ones.

    TransformerLens conventions hold on the whole model, video included: ``vlm.run_with_hooks(x,
    fwd_hooks)``, ``vlm.run_with_cache(x, names_filter=...)`` → ``(logits, ActivationCache)``,
    ``with vlm.hooks(fwd_hooks): ...``; hook names may be filter functions. The backbone alone
    runs text: token ids holding the video placeholders are refused there (they would be
    embedded as text), since the video enters only as embeddings.
    """

    def __init__(self, adapter: FamilyAdapter, name: str) -> None:
        self.adapter, self.name = adapter, name
        _install_placeholder_guard(self.backbone, placeholder_token_ids(adapter))

    @contextmanager
    def _building_embeddings(self) -> Iterator[None]:
        """Let the adapter embed placeholder ids (rows it overwrites with the video)."""
        guard = getattr(self.backbone, "_mapflow_placeholder_guard", None)
        if guard is None:
            yield
        else:
            with guard.suspend():
                yield

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
        with self._building_embeddings():
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
        """Backbone forward from the injected embeddings with TransformerLens hooks
        (``(name or name filter, fn)`` pairs, removed when the forward ends)."""
        fwd_hooks = _edges_checked(x, fwd_hooks)
        return run_from_embeds(self.backbone, _embeds(x), fwd_hooks=fwd_hooks,
                               return_type=return_type)

    def run_with_cache(
        self,
        x: Prepared,
        fwd_hooks: HookList = (),
        *,
        names_filter: NamesFilter = None,
        return_type: str | None = "logits",
        stop_at_layer: int | None = None,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
    ) -> tuple[Float[torch.Tensor, "1 pos d_vocab"], ActivationCache]:
        """``(logits, cache)`` of the real sequence, video injected, as TransformerLens'
        ``HookedTransformer.run_with_cache`` gives for text.

        ``names_filter``: a hook name, a list of names or a function ``name -> bool`` (None: all
        activations). The cache is a TransformerLens ``ActivationCache`` over all ``pos``
        positions: ``cache["pattern", l]`` is ``[1, n_heads, pos, pos]``,
        ``cache.accumulated_resid()`` ``[n_layers + 1, 1, pos, d_model]``, and
        ``cache.decompose_resid()`` (embed, then each layer's attention and MLP output) sums to
        the final residual stream, ``cache["resid_post", n_layers - 1]``. ``fwd_hooks`` apply
        before caching, so the cache shows their effect (e.g. a knockout's patterns).
        """
        fwd_hooks = _edges_checked(x, fwd_hooks)
        return cache_from_embeds(self.backbone, _embeds(x), names_filter=names_filter,
                                 fwd_hooks=fwd_hooks, return_type=return_type,
                                 stop_at_layer=stop_at_layer, device=device,
                                 remove_batch_dim=remove_batch_dim)

    @contextmanager
    def hooks(
        self,
        fwd_hooks: HookList = (),
        bwd_hooks: HookList = (),
        *,
        reset_hooks_end: bool = True,
    ) -> Iterator["VideoLLM"]:
        """Context manager: ``fwd_hooks`` / ``bwd_hooks`` stay on the backbone for every forward
        inside the block (``vlm(x)``, ``run_with_hooks``, ``run_with_cache``, analyses) and are
        removed on exit, exceptions included (TransformerLens' ``hooks()``). Hooks are validated
        before any is added. Yields the VideoLLM."""
        fwd, bwd = list(fwd_hooks), list(bwd_hooks)
        check_hooks(self.backbone, fwd + bwd)
        with self.backbone.hooks(fwd_hooks=fwd, bwd_hooks=bwd, reset_hooks_end=reset_hooks_end):
            yield self

    def __call__(self, x: Prepared) -> Float[torch.Tensor, "1 pos d_vocab"]:
        return self.run_with_hooks(x)

    def option_probabilities(
        self, x: Prepared, fwd_hooks: HookList = ()
    ) -> Float[torch.Tensor, " n_options"]:
        """Probability of each option's letter at the last position (softmax over the vocab)."""
        from ..finite import require_finite

        fwd_hooks = list(fwd_hooks)
        logits = self.run_with_hooks(x, fwd_hooks)[0, -1]
        require_finite(logits, self.backbone, x.embeds, fwd_hooks, what="the logits of the forward",
                       sample=str(x.meta.get("id", "") or ""))
        return logits.float().softmax(-1)[x.answer_ids.to(logits.device)]

    def __repr__(self) -> str:
        cfg = self.backbone.cfg
        return (f"VideoLLM({self.name!r}, family={self.family}, {cfg.n_layers} layers, "
                f"d_model={cfg.d_model})")


def _edges_checked(x: Any, fwd_hooks: HookList) -> list:
    """The hooks as a list, after checking that every knockout's edges were built for ``x``
    (:meth:`~mapflow_tl.edges.Edges.check_fits`: another sample's edges cut wrong positions)."""
    hooks = list(fwd_hooks)
    if isinstance(x, Prepared):
        from ..edges import Edges

        checked: set[int] = set()
        for _, fn in hooks:
            edges = getattr(fn, "edges", None)
            if isinstance(edges, Edges) and id(edges) not in checked:
                edges.check_fits(x.segments)
                checked.add(id(edges))
    return hooks


def _embeds(x: Any) -> Float[torch.Tensor, "1 pos d_model"]:
    """A Prepared's embeddings; anything else is refused with the call that makes one."""
    if isinstance(x, Prepared):
        return x.embeds
    raise InputError(f"VideoLLM methods take a Prepared (x = vlm.prepare(sample)), got "
                     f"{type(x).__name__}; for raw embeddings use "
                     f"mapflow_tl.models.backbone.run_from_embeds(vlm.backbone, embeds)")
