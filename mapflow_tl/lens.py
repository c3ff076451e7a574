"""Logit Lens: read the residual stream of every layer in vocabulary space.

Public functions take ``(vlm, x)`` — a :class:`~mapflow_tl.models.videollm.VideoLLM` and a
:class:`~mapflow_tl.models.videollm.Prepared` sample — like every analysis. The same functions on
a bare ``HookedTransformer`` and input embeddings are the low-level layer, named
``*_from_embeds`` (as :func:`~mapflow_tl.models.backbone.run_from_embeds`).

Map the Flow uses two lenses, with different conventions (official code byminji/map-the-flow;
docs/paper_parity.md has the file:line of each):

- Finding 3, the answer-probability trace (:func:`answer_probability_trace`): entry i = the
  **output** of block i (``read="output"``), projected with the unembedding ``W_U`` **without**
  the final norm at intermediate layers; the last entry is the model's own (normed) output, so it
  equals the model's logits; full-vocabulary softmax at the last position.
- Finding 2, the video-token lens (:func:`~mapflow_tl.analyses.video_lens`): entry i = the
  **input** of block i for i = 0 … L−2 (entry 0 = the embeddings, ``read="input"``), and the
  last entry the normed final output; projected with the **input** embedding matrix ``W_Eᵀ``,
  no norm on the intermediate entries.

Both are :func:`logit_lens` with the options below; ``final_output=True`` (default) makes the
last entry the normed final output whatever ``read`` and ``norm`` are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, Sequence

import torch
from jaxtyping import Float, Int

from .errors import InputError
from .hooks import HookList, capture
from .models.backbone import run_from_embeds
from .segments import Span

if TYPE_CHECKING:  # TransformerLens 3.9's class; on TransformerLens 4 a TransformerBridge
    from transformer_lens import HookedTransformer

__all__ = ["LENS_MATRICES", "LENS_READS", "residual_stream", "logit_lens", "iter_logit_lens",
           "project", "top_tokens", "answer_probability_trace", "AnswerTrace",
           "residual_stream_from_embeds", "logit_lens_from_embeds",
           "iter_logit_lens_from_embeds", "answer_probability_trace_from_embeds"]

LENS_MATRICES = ("unembed", "embed")
#: Which residual state "layer i" is: the output of block i, or its input (layer 0 = the
#: embeddings).
LENS_READS = ("output", "input")


def _backbone(model: Any) -> HookedTransformer:
    """The HookedTransformer of a VideoLLM, or the model itself."""
    return getattr(model, "backbone", model)


def _positions(positions: int | Sequence[int] | torch.Tensor | range | Span,
               n_positions: int) -> torch.Tensor:
    if isinstance(positions, Span):  # a segment: every position of it
        positions = positions.positions
    if isinstance(positions, int):
        positions = [positions]
    elif not isinstance(positions, (torch.Tensor, range, Sequence)):
        raise InputError(f"lens positions must be an int, a list of ints, a range, a tensor or "
                         f"a segment (e.g. x.segments.last), got {type(positions).__name__}")
    index = torch.as_tensor(list(positions) if isinstance(positions, range) else positions,
                            dtype=torch.long).flatten()
    index = torch.where(index < 0, index + n_positions, index)
    if index.numel() == 0:
        raise InputError("logit lens needs at least one position")
    if int(index.min()) < 0 or int(index.max()) >= n_positions:
        raise InputError(f"lens positions must lie in [0, {n_positions}), got "
                         f"{int(index.min())}…{int(index.max())}")
    return index


def _check_embeds(embeds: torch.Tensor) -> None:
    if embeds.dim() != 3 or embeds.shape[0] != 1:
        raise InputError(f"the lens reads one sample: embeds must be [1, pos, d_model], "
                         f"got {tuple(embeds.shape)}")


def _states(model: HookedTransformer, embeds: torch.Tensor, index: torch.Tensor, read: str,
            fwd_hooks: HookList, final: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(states [layer, n, d_model] as ``read`` says, the last block's output [n, d] or None)."""
    if read not in LENS_READS:
        raise InputError(f"lens read must be one of {LENS_READS}, got {read!r}")
    _check_embeds(embeds)
    n_layers = model.cfg.n_layers
    point = "hook_resid_post" if read == "output" else "hook_resid_pre"
    names = [f"blocks.{layer}.{point}" for layer in range(n_layers)]
    last = f"blocks.{n_layers - 1}.hook_resid_post"
    wanted = names + ([last] if final and last not in names else [])
    store: dict[str, torch.Tensor] = {}
    # the lens reads states to project them (without gradients, see project): no graph
    run_from_embeds(model, embeds, fwd_hooks=list(fwd_hooks) + capture(wanted, store,
                                                                         positions=index),
                    return_type=None, grad=False)
    return (torch.stack([store[name][0] for name in names]),
            store[last][0] if final else None)


def residual_stream_from_embeds(
    model: HookedTransformer,
    embeds: Float[torch.Tensor, "1 pos d_model"],
    positions: int | Sequence[int] | torch.Tensor,
    *,
    read: str = "output",
    fwd_hooks: HookList = (),
) -> Float[torch.Tensor, "layer n_positions d_model"]:
    """Low-level :func:`residual_stream` on a HookedTransformer and embeddings."""
    index = _positions(positions, embeds.shape[1])
    return _states(model, embeds, index, read, fwd_hooks, final=False)[0]


def residual_stream(
    vlm: Any,
    x: Any,
    positions: int | Sequence[int] | torch.Tensor,
    *,
    read: str = "output",
    fwd_hooks: HookList = (),
) -> Float[torch.Tensor, "layer n_positions d_model"]:
    """The residual stream of sample ``x`` at ``positions`` in every layer: the output of block
    i (``read="output"``, ``blocks.{i}.hook_resid_post``) or its input (``read="input"``, entry 0
    = the embeddings). ``fwd_hooks`` (e.g. a knockout) apply during the forward."""
    return residual_stream_from_embeds(_backbone(vlm), x.embeds, positions, read=read,
                                       fwd_hooks=fwd_hooks)


def project(
    model: Any,
    residual: Float[torch.Tensor, "... d_model"],
    *,
    norm: bool = False,
    matrix: str = "unembed",
) -> Float[torch.Tensor, "... d_vocab"]:
    """Project residual vectors to vocabulary logits (``model``: a VideoLLM or its backbone).

    ``norm=True`` applies the model's final RMSNorm/LayerNorm first; ``matrix="unembed"`` uses
    ``W_U`` (+ ``b_U``), ``matrix="embed"`` the input embedding ``W_Eᵀ`` (the paper's lens on
    video tokens).
    """
    model = _backbone(model)
    if matrix not in LENS_MATRICES:
        raise InputError(f"lens matrix must be one of {LENS_MATRICES}, got {matrix!r}")
    with torch.no_grad():
        residual = residual.to(model.cfg.device, model.cfg.dtype)
        if norm:
            residual = model.ln_final(residual)
        if matrix == "unembed":
            return residual @ model.W_U + model.b_U
        return residual @ model.W_E.T


def iter_logit_lens_from_embeds(
    model: HookedTransformer,
    embeds: Float[torch.Tensor, "1 pos d_model"],
    positions: int | Sequence[int] | torch.Tensor,
    *,
    read: str = "output",
    norm: bool = False,
    final_output: bool = True,
    matrix: str = "unembed",
    fwd_hooks: HookList = (),
) -> Iterator[tuple[int, Float[torch.Tensor, "n_positions d_vocab"]]]:
    """Low-level :func:`iter_logit_lens` on a HookedTransformer and embeddings."""
    if matrix not in LENS_MATRICES:
        raise InputError(f"lens matrix must be one of {LENS_MATRICES}, got {matrix!r}")
    index = _positions(positions, embeds.shape[1])
    states, final = _states(model, embeds, index, read, fwd_hooks, final=final_output)
    last = model.cfg.n_layers - 1
    for layer in range(model.cfg.n_layers):
        if final_output and layer == last:
            # The model's own output: the final norm, as HF's last hidden state has it.
            yield layer, project(model, final, norm=True, matrix=matrix)
        else:
            yield layer, project(model, states[layer], norm=norm, matrix=matrix)


def iter_logit_lens(vlm: Any, x: Any, positions: int | Sequence[int] | torch.Tensor,
                    **options: Any) -> Iterator[tuple[int, Float[torch.Tensor, "n d_vocab"]]]:
    """:func:`logit_lens` one layer at a time: ``(layer, logits [n_positions, d_vocab])`` — for
    many positions and a large vocabulary (1152 video tokens × 32k words × 32 layers would not
    fit in memory at once). Same options as :func:`logit_lens`."""
    return iter_logit_lens_from_embeds(_backbone(vlm), x.embeds, positions, **options)


def logit_lens_from_embeds(
    model: HookedTransformer,
    embeds: Float[torch.Tensor, "1 pos d_model"],
    positions: int | Sequence[int] | torch.Tensor,
    **options: Any,
) -> Float[torch.Tensor, "layer n_positions d_vocab"]:
    """Low-level :func:`logit_lens` on a HookedTransformer and embeddings."""
    return torch.stack([logits for _, logits in
                        iter_logit_lens_from_embeds(model, embeds, positions, **options)])


def logit_lens(
    vlm: Any,
    x: Any,
    positions: int | Sequence[int] | torch.Tensor,
    *,
    read: str = "output",
    norm: bool = False,
    final_output: bool = True,
    matrix: str = "unembed",
    fwd_hooks: HookList = (),
) -> Float[torch.Tensor, "layer n_positions d_vocab"]:
    """Logit Lens of sample ``x``: vocabulary logits of the residual stream at ``positions``,
    one entry per layer.

    - ``read``: entry i is the output of block i (``"output"``) or its input (``"input"``,
      entry 0 = the embeddings);
    - ``norm``: apply the final norm to the intermediate entries (the official trace and lens
      do not: default False);
    - ``final_output``: the last entry is the model's own normed final output (default; with
      ``matrix="unembed"`` it equals the model's logits), else the last ``read`` state treated
      like the others;
    - ``matrix``: ``"unembed"`` (``W_U``) or ``"embed"`` (``W_Eᵀ``).

    Defaults are the official answer-probability trace; the official video-token lens is
    ``read="input", matrix="embed"``.
    """
    return logit_lens_from_embeds(_backbone(vlm), x.embeds, positions, read=read, norm=norm,
                                  final_output=final_output, matrix=matrix,
                                  fwd_hooks=fwd_hooks)


def top_tokens(
    logits: Float[torch.Tensor, "... d_vocab"], k: int = 5
) -> tuple[Float[torch.Tensor, "... k"], Int[torch.Tensor, "... k"]]:
    """The k most probable tokens: (probabilities under the softmax over the full vocabulary,
    ids), most probable first."""
    if k <= 0 or k > logits.shape[-1]:
        raise InputError(f"k must lie in [1, {logits.shape[-1]}], got {k}")
    probabilities = logits.float().softmax(dim=-1)
    return probabilities.topk(k, dim=-1)


class AnswerTrace(NamedTuple):
    """The answer-probability trace of one sample.

    ``probabilities[layer, i]``: the probability of ``token_ids[i]`` at the position;
    ``top_probabilities`` / ``top_ids`` ``[layer, top_k]``: the most probable tokens of each
    layer (official: top 10 recorded)."""

    probabilities: Float[torch.Tensor, "layer n_tokens"]
    top_probabilities: Float[torch.Tensor, "layer top_k"]
    top_ids: Int[torch.Tensor, "layer top_k"]


def answer_probability_trace_from_embeds(
    model: HookedTransformer,
    embeds: Float[torch.Tensor, "1 pos d_model"],
    token_ids: Sequence[int] | torch.Tensor,
    *,
    position: int = -1,
    norm: bool = False,
    matrix: str = "unembed",
    top_k: int = 10,
    fwd_hooks: HookList = (),
) -> AnswerTrace:
    """Low-level :func:`answer_probability_trace` on a HookedTransformer and embeddings."""
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise InputError("answer_probability_trace needs at least one token id")
    if int(ids.min()) < 0 or int(ids.max()) >= model.cfg.d_vocab:
        raise InputError(f"token ids must lie in [0, {model.cfg.d_vocab}), got {ids.tolist()}")
    logits = logit_lens_from_embeds(model, embeds, [position], read="output", norm=norm,
                                    final_output=True, matrix=matrix, fwd_hooks=fwd_hooks)[:, 0]
    top_probabilities, top_ids = top_tokens(logits, k=top_k)
    probabilities = logits.float().softmax(dim=-1)[:, ids.to(logits.device)]
    return AnswerTrace(probabilities, top_probabilities, top_ids)


def answer_probability_trace(
    vlm: Any,
    x: Any,
    token_ids: Sequence[int] | torch.Tensor | None = None,
    *,
    position: int = -1,
    norm: bool = False,
    matrix: str = "unembed",
    top_k: int = 10,
    fwd_hooks: HookList = (),
) -> AnswerTrace:
    """Answer-probability tracing (Map the Flow, Finding 3): the probability of each of
    ``token_ids`` (default: the option letters ``x.answer_ids``) at ``position`` (the last by
    default) in every layer, under the full-vocabulary softmax of the logit lens.

    Official definition (default): entry i = the output of block i through ``W_U``, without the
    final norm (``norm=False``) at intermediate layers; the last entry is the model's normed
    output, so it equals the model's own distribution. ``norm=True`` norms every layer (the
    official VideoLLaMA3 script and TransformerLens' usual lens). ``fwd_hooks`` let the trace
    read a knocked-out model.
    """
    ids = x.answer_ids if token_ids is None else token_ids
    return answer_probability_trace_from_embeds(_backbone(vlm), x.embeds, ids, position=position,
                                                norm=norm, matrix=matrix, top_k=top_k,
                                                fwd_hooks=fwd_hooks)
