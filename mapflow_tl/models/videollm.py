"""What experiment code sees of a model: :class:`VideoLLM`, the question it is asked
(:class:`VideoSample`) and the prepared input (:class:`Prepared`).

Flow of one analysis (docs/concepts.md): ``load_videollm`` → ``prepare(sample)`` gives embeddings
and a :class:`~mapflow_tl.segments.SegmentMap` → hooks → ``run_with_hooks`` / ``run_with_cache``.
Everything that differs between model families is behind the
:class:`~mapflow_tl.models.adapter.FamilyAdapter` a :class:`VideoLLM` holds; experiment code never
names a family.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8
from transformer_lens import ActivationCache  # in TransformerLens 3.9 and 4.x alike

from ..errors import InputError
from ..hooks import HookList, check_hooks
from ..segments import SegmentMap
from .backbone import cache_from_embeds, generate_from_embeds, run_from_embeds

if TYPE_CHECKING:  # the adapter module imports this one; the name is needed for annotations only
    from transformer_lens import HookedTransformer  # TransformerLens 3.9; 4.x: TransformerBridge

    from .adapter import FamilyAdapter

__all__ = ["VideoSample", "Prepared", "VideoLLM", "as_video_sample", "placeholder_token_ids"]


@dataclass
class VideoSample:
    """One question about one video: what :meth:`VideoLLM.prepare` takes.

    ``video`` is a path (file, frame folder, GIF) or frames as a uint8 array ``[T, H, W, 3]``.
    ``options`` are the option texts without labels; ``answer`` the index of the true one (None
    when unknown). ``start``/``end`` bound the clip in seconds. ``answer_prompt``: an open-ended
    question's start of the answer, appended after the assistant turn opens (TVBench
    open-ended's per-task prompts; None: the model answers from the bare turn).
    ``frame_sampler``: the benchmark's frame sampler (None: the family's; a ``frame_sampler`` load
    option overrides both), ``duration`` the annotation's length in seconds (LongVideoBench's
    sampler), ``subtitles`` a :class:`~mapflow_tl.data.subtitles.Subtitles` whose lines for the
    sampled frames go before the question (None: no subtitles).
    """

    video: str | Path | np.ndarray
    question: str
    options: Sequence[str] = ()
    answer: int | None = None
    start: float | None = None
    end: float | None = None
    id: str = ""
    task: str = ""
    answer_prompt: str | None = None
    frame_sampler: str | None = None
    duration: float | None = None
    subtitles: Any = None

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
                       id=str(getattr(sample, "id", "")), task=str(getattr(sample, "task", "")),
                       answer_prompt=getattr(sample, "answer_prompt", None),
                       frame_sampler=getattr(sample, "frame_sampler", None),
                       duration=getattr(sample, "duration", None),
                       subtitles=getattr(sample, "subtitles", None))


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
    #: The tokenizer that made ``input_ids`` (set by ``vlm.prepare``), for :attr:`str_tokens`.
    tokenizer: Any = field(default=None, repr=False, compare=False)

    @property
    def n_positions(self) -> int:
        return self.embeds.shape[1]

    @property
    def str_tokens(self) -> list[str]:
        """One string per position: :meth:`VideoLLM.to_str_tokens` of this input."""
        if self.tokenizer is None:
            raise InputError("this input carries no tokenizer: use vlm.to_str_tokens(x)")
        return str_tokens(self.tokenizer, self)

    @property
    def answer_token(self) -> int | None:
        """Token id of the true option's letter (the ground-truth token)."""
        return None if self.answer is None else int(self.answer_ids[self.answer])


#: What ``vlm(x, return_type=...)`` returns, as TransformerLens' forward.
RETURN_TYPES = ("logits", "loss", "both", None)

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
    """A loaded VideoLLM: HF vision side + TransformerLens language backbone.

    ``backbone`` is a ``HookedTransformer`` (TransformerLens 3.9) or a ``TransformerBridge``
    (TransformerLens 4), as :attr:`backend` says (unprocessed weights, hooks see what HF
    computes, HookedTransformer's hook names on both);
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
        _give_the_backbone_its_tokenizer(self.backbone, self.tokenizer)

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
    def backend(self) -> str:
        """The backbone's TransformerLens backend: ``"hooked"`` (a ``HookedTransformer``,
        TransformerLens 3.9) or ``"bridge"`` (a ``TransformerBridge``, TransformerLens 4)."""
        return self.adapter.backend

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
    def cfg(self) -> Any:
        """The backbone's ``HookedTransformerConfig`` (``vlm.cfg.n_layers``, ``d_model``, …)."""
        return self.backbone.cfg

    @property
    def hook_dict(self) -> dict[str, Any]:
        """Hook point name → ``HookPoint`` of the backbone, where every hook of the VideoLLM
        attaches (the video enters as embeddings at ``hook_embed``)."""
        return self.backbone.hook_dict

    def to_str_tokens(self, x: Prepared) -> list[str]:
        """One string per position of ``x``, as TransformerLens' ``to_str_tokens``: text
        positions decoded one token at a time; a frame's tokens labelled by frame and grid cell,
        ``"<f3 r1c0>"`` (frame 3, row 1, column 0; ``"<f3 #5>"`` for the sixth token of a frame
        without a grid). Text between frames (separators, timestamps) stays text."""
        return str_tokens(self.tokenizer, x)

    @property
    def family(self) -> str:
        return self.adapter.name

    def prepare(self, sample: VideoSample | Any) -> Prepared:
        """Prompt + video → embeddings with the video tokens injected, and the SegmentMap.

        Takes a :class:`VideoSample` or a benchmark sample; the result's ``meta`` records the
        sample's ``id`` and ``task``."""
        if isinstance(sample, (list, tuple)):
            raise InputError(f"prepare takes one sample, got a {type(sample).__name__} of "
                             f"{len(sample)}: prompts of different lengths are not batched; use "
                             f"[vlm.prepare(s) for s in samples] (analyses.flow_sweeps sweeps "
                             f"several prepared samples together)")
        sample = as_video_sample(sample)
        # preprocessing, not part of the model's computation: the embeddings are a leaf (no graph
        # back into the vision tower kept alive with every prepared sample); gradients with
        # respect to them are one ``x.embeds.requires_grad_()`` away
        with self._building_embeddings(), torch.no_grad():
            prepared = self.adapter.prepare(sample)
        prepared.meta.setdefault("id", sample.id)
        prepared.meta.setdefault("task", sample.task)
        prepared.tokenizer = self.tokenizer
        return prepared

    def run_with_hooks(
        self,
        x: Prepared,
        fwd_hooks: HookList = (),
        bwd_hooks: HookList = (),
        *,
        reset_hooks_end: bool = True,
        return_type: str | None = "logits",
    ) -> Float[torch.Tensor, "1 pos d_vocab"]:
        """Backbone forward from the injected embeddings with TransformerLens hooks
        (``(name or name filter, fn)`` pairs), as ``HookedTransformer.run_with_hooks``.

        Gradients flow unless the caller turned them off (``torch.no_grad()``). The hooks are
        removed when the call ends (``reset_hooks_end=True``), exceptions included; the
        ``bwd_hooks`` still fire on a later ``.backward()`` of this call's output, because
        PyTorch binds a module's backward hooks to the graph when the forward runs — later
        forwards do not see them. ``reset_hooks_end=False`` leaves every hook on for later calls
        until :meth:`reset_hooks`."""
        fwd, bwd = _edges_checked(x, fwd_hooks), list(bwd_hooks)
        check_hooks(self.backbone, fwd + bwd)
        with self.backbone.hooks(fwd_hooks=fwd, bwd_hooks=bwd, reset_hooks_end=reset_hooks_end):
            return run_from_embeds(self.backbone, _embeds(x), return_type=return_type)

    def reset_hooks(self, *, including_permanent: bool = False) -> None:
        """Remove the hooks left on the backbone (``run_with_hooks(..., reset_hooks_end=False)``,
        ``hooks(..., reset_hooks_end=False)``), as ``HookedTransformer.reset_hooks``."""
        self.backbone.reset_hooks(including_permanent=including_permanent)

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

    def __call__(self, x: Prepared, return_type: str | None = "logits") -> Any:
        """The prepared sample through the model, video injected, as ``HookedTransformer``'s
        forward: ``return_type="logits"`` ``[1, pos, d_vocab]``; ``"loss"`` the cross-entropy of
        the true option's letter at the last position, ``-log softmax(logits[0, -1])[answer]``
        (the one token a multiple-choice prompt predicts); ``"both"`` ``(logits, loss)``;
        ``None`` nothing (hooks only). Gradients as in :meth:`run_with_hooks`."""
        if return_type not in RETURN_TYPES:
            raise InputError(f"return_type must be one of {RETURN_TYPES}, got {return_type!r}")
        if return_type in ("loss", "both") and getattr(x, "answer", None) is None:
            raise InputError("return_type='loss' needs the true option: prepare the sample with "
                             "answer=<option index>, or use return_type='logits'")
        logits = self.run_with_hooks(x, return_type=None if return_type is None else "logits")
        if return_type is None or return_type == "logits":
            return logits
        # at least float32 (a bf16 log-softmax loses the loss' digits), float64 kept
        last = logits[0, -1].to(torch.promote_types(logits.dtype, torch.float32))
        loss = -last.log_softmax(-1)[x.answer_token]
        return loss if return_type == "loss" else (logits, loss)

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

    def stop_token_ids(self) -> list[int]:
        """Token ids that end an answer: the tokenizer's end-of-sequence token."""
        eos = getattr(self.tokenizer, "eos_token_id", None)
        return [] if eos is None else [int(eos)]

    def generate(
        self,
        x: Prepared,
        max_new_tokens: int = 256,
        *,
        fwd_hooks: HookList = (),
        use_cache: bool = True,
        stop_ids: Sequence[int] | None = None,
    ) -> tuple[Int[torch.Tensor, " new"], Float[torch.Tensor, "new d_vocab"]]:
        """Greedy answer to the prepared prompt, video injected as embeddings: ``(token ids,
        logits of each step)``, at most ``max_new_tokens`` tokens, ending at an end-of-sequence
        token (:meth:`stop_token_ids`, kept in the result) — HF ``generate(do_sample=False,
        num_beams=1)`` as the official open-ended script calls it. ``fwd_hooks`` apply in every
        step (a knockout during generation). ``use_cache=False`` recomputes the whole sequence
        each step (same tokens; the reference the key/value cache is checked against).

        Each longer sequence is bound by the adapter as the HF model binds it while generating
        (:meth:`~mapflow_tl.models.adapter.FamilyAdapter.bind_appended`: under per-sample 3D
        positions, M-RoPE, the appended tokens continue from the prompt's largest position);
        only the current step's binding is kept, none after the answer is complete."""
        stop = self.stop_token_ids() if stop_ids is None else list(stop_ids)
        hooks = _edges_checked(x, fwd_hooks)
        embeds = _embeds(x)
        bound: list[torch.Tensor] = []

        def bind(sequence: torch.Tensor) -> None:
            self.adapter.bind_appended(x, sequence)
            if bound:
                self.adapter.unbind(bound.pop())
            bound.append(sequence)

        try:
            tokens, logits = generate_from_embeds(self.backbone, embeds,
                                                  max_new_tokens=max_new_tokens, stop_ids=stop,
                                                  fwd_hooks=hooks, use_cache=use_cache,
                                                  on_append=bind)
        finally:
            for sequence in bound:
                self.adapter.unbind(sequence)
        return torch.tensor(tokens, dtype=torch.long), logits

    def extend(self, x: Prepared, token_ids: Sequence[int] | torch.Tensor, *,
               anchors: Sequence[tuple[str, int, int]] = ()) -> Prepared:
        """The prompt followed by text tokens (an answer teacher-forced): embeddings of the
        tokens appended (the backbone's token embedding, as the prompt's text), ``input_ids``
        extended and a :class:`~mapflow_tl.segments.SegmentMap` over the longer sequence
        (:meth:`~mapflow_tl.segments.SegmentMap.with_response`: the appended tokens before the
        new last position are ``response``, ``anchors`` named spans in it, ``(name, start,
        stop)`` as sequence positions). The longer sequence is bound as the HF model binds
        it while generating (:meth:`~mapflow_tl.models.adapter.FamilyAdapter.bind_appended`;
        M-RoPE: ``meta["position_ids"]`` continues from the prompt's largest position)."""
        ids = torch.as_tensor(token_ids, dtype=torch.long).reshape(-1)
        if not len(ids):
            return x
        device = self.backbone.cfg.device
        with torch.no_grad():
            new = self.backbone.embed(ids[None].to(device)).to(x.embeds.dtype)
        embeds = torch.cat([x.embeds, new.to(x.embeds.device)], dim=1)
        input_ids = torch.cat([x.input_ids, ids[None].to(x.input_ids.device)], dim=1)
        segments = x.segments.with_response(len(ids), anchors=anchors)
        meta = {**x.meta, **self.adapter.bind_appended(x, embeds, input_ids)}
        return Prepared(embeds=embeds, segments=segments, input_ids=input_ids,
                        answer_ids=x.answer_ids, answer=x.answer, prompt=x.prompt,
                        frames=x.frames, meta=meta, tokenizer=x.tokenizer)

    def __repr__(self) -> str:
        cfg = self.backbone.cfg
        return (f"VideoLLM({self.name!r}, family={self.family}, {cfg.n_layers} layers, "
                f"d_model={cfg.d_model})")


def _give_the_backbone_its_tokenizer(backbone: HookedTransformer, tokenizer: Any) -> None:
    """``vlm.backbone.to_tokens`` / ``to_string`` / ``to_str_tokens`` on text, as on any
    HookedTransformer. TransformerLens' ``set_tokenizer`` fills missing special tokens and the
    padding side in place, so it gets a copy: the prompts keep the checkpoint's own tokenizer.
    The text surface is a convenience; a tokenizer TransformerLens cannot take (not a Hugging
    Face tokenizer, or one it cannot re-open with a BOS token) leaves it off, with a warning."""
    from transformers import PreTrainedTokenizerBase

    if backbone.tokenizer is not None or not isinstance(tokenizer, PreTrainedTokenizerBase):
        return
    try:
        if hasattr(backbone, "set_tokenizer"):
            backbone.set_tokenizer(copy.deepcopy(tokenizer))
        else:  # TransformerLens 4's bridge wires its tokenizer on assignment
            backbone.tokenizer = copy.deepcopy(tokenizer)
    except Exception as error:  # noqa: BLE001 — any failure only costs the text helpers
        warnings.warn(f"vlm.backbone.to_tokens / to_string are unavailable: TransformerLens "
                      f"could not take the tokenizer ({type(error).__name__}: {error}); "
                      f"tokenize with vlm.tokenizer instead", stacklevel=3)


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


def str_tokens(tokenizer: Any, x: Prepared) -> list[str]:
    """:meth:`VideoLLM.to_str_tokens` with the tokenizer given: text decoded one token at a time
    (without clean-up, as TransformerLens), frame tokens labelled ``"<f{t} r{h}c{w}>"``."""
    _embeds(x)
    ids = x.input_ids.reshape(-1).tolist()
    if len(ids) != x.n_positions:
        raise InputError(f"the prepared input has {len(ids)} token ids for {x.n_positions} "
                         f"positions: prepare it with vlm.prepare(sample)")
    if hasattr(tokenizer, "batch_decode"):
        strings = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    else:
        strings = [tokenizer.decode([i]) for i in ids]
    for frame in x.segments.frames:
        for offset, position in enumerate(frame.positions):
            if frame.grid is None:
                strings[position] = f"<f{frame.index} #{offset}>"
            else:
                row, column = divmod(offset, frame.grid[1])
                strings[position] = f"<f{frame.index} r{row}c{column}>"
    return strings


def _embeds(x: Any) -> Float[torch.Tensor, "1 pos d_model"]:
    """A Prepared's embeddings; anything else is refused with the call that makes one."""
    if isinstance(x, Prepared):
        return x.embeds
    if isinstance(x, (list, tuple)):
        raise InputError(f"VideoLLM methods take one Prepared, got a {type(x).__name__} of "
                         f"{len(x)}: several samples are not batched (their lengths differ); "
                         f"loop, [vlm(x) for x in xs], or sweep them together with "
                         f"analyses.flow_sweeps(vlm, xs, circuits)")
    raise InputError(f"VideoLLM methods take a Prepared (x = vlm.prepare(sample)), got "
                     f"{type(x).__name__}; for raw embeddings use "
                     f"mapflow_tl.models.backbone.run_from_embeds(vlm.backbone, embeds)")
