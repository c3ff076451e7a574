"""Logit Lens: read the residual stream of every layer in vocabulary space.

Map the Flow uses two lenses:

- Finding 2 (video tokens): hidden states of video positions projected with the *input* embedding
  matrix, ``h @ W_Eᵀ``, without the final norm — ``lens(..., norm=False, matrix="embed")``;
- Finding 3 (answer generation): the probability of each option's letter at the last position,
  layer by layer — :func:`answer_probability_trace` (default: final norm, then ``W_U``).

The residual stream "at layer l" is the output of block l (``blocks.{l}.hook_resid_post``);
``include_embeddings=True`` prepends the block-0 input as layer −1.
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float, Int
from transformer_lens import HookedTransformer

from .hooks import HookList, capture
from .models.backbone import run_from_embeds

__all__ = ["LENS_MATRICES", "residual_stream", "project", "logit_lens", "top_tokens",
           "answer_probability_trace"]

LENS_MATRICES = ("unembed", "embed")


def _positions(positions: int | Sequence[int] | torch.Tensor | range, n_positions: int) -> torch.Tensor:
    index = torch.as_tensor(list(positions) if isinstance(positions, range) else positions,
                            dtype=torch.long).flatten()
    index = torch.where(index < 0, index + n_positions, index)
    if index.numel() == 0:
        raise ValueError("logit lens needs at least one position")
    if int(index.min()) < 0 or int(index.max()) >= n_positions:
        raise ValueError(f"lens positions must lie in [0, {n_positions}), got "
                         f"{int(index.min())}…{int(index.max())}")
    return index


def residual_stream(
    model: HookedTransformer,
    embeds: Float[torch.Tensor, "1 pos d_model"],
    positions: int | Sequence[int] | torch.Tensor,
    *,
    fwd_hooks: HookList = (),
    include_embeddings: bool = False,
) -> Float[torch.Tensor, "layer n_positions d_model"]:
    """The residual stream after every block at ``positions`` (one sample, batch 1).

    ``fwd_hooks`` (for example a knockout) apply during the forward, so the lens can read a
    knocked-out model.
    """
    if embeds.dim() != 3 or embeds.shape[0] != 1:
        raise ValueError(f"residual_stream reads one sample: embeds must be [1, pos, d_model], "
                         f"got {tuple(embeds.shape)}")
    index = _positions(positions, embeds.shape[1])
    names = [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)]
    if include_embeddings:
        names.insert(0, "blocks.0.hook_resid_pre")
    store: dict[str, torch.Tensor] = {}
    run_from_embeds(model, embeds, fwd_hooks=list(fwd_hooks) + capture(names, store,
                                                                         positions=index),
                    return_type=None)
    return torch.stack([store[name][0] for name in names])


def project(
    model: HookedTransformer,
    residual: Float[torch.Tensor, "... d_model"],
    *,
    norm: bool = True,
    matrix: str = "unembed",
) -> Float[torch.Tensor, "... d_vocab"]:
    """Project residual vectors to vocabulary logits.

    ``norm=True`` applies the model's final RMSNorm/LayerNorm first; ``matrix="unembed"`` uses
    ``W_U`` (+ ``b_U``), ``matrix="embed"`` uses the input embedding ``W_Eᵀ`` (the paper's lens on
    video tokens).
    """
    if matrix not in LENS_MATRICES:
        raise ValueError(f"lens matrix must be one of {LENS_MATRICES}, got {matrix!r}")
    with torch.no_grad():
        residual = residual.to(model.cfg.device, model.cfg.dtype)
        if norm:
            residual = model.ln_final(residual)
        if matrix == "unembed":
            return residual @ model.W_U + model.b_U
        return residual @ model.W_E.T


def logit_lens(
    model: HookedTransformer,
    embeds: Float[torch.Tensor, "1 pos d_model"],
    positions: int | Sequence[int] | torch.Tensor,
    *,
    norm: bool = True,
    matrix: str = "unembed",
    fwd_hooks: HookList = (),
    include_embeddings: bool = False,
) -> Float[torch.Tensor, "layer n_positions d_vocab"]:
    """Logit Lens: vocabulary logits of the residual stream at ``positions`` after every layer.

    For many positions and a large vocabulary use :func:`top_tokens` per layer on
    :func:`residual_stream` instead of materialising ``layer × positions × vocab``.
    """
    residual = residual_stream(model, embeds, positions, fwd_hooks=fwd_hooks,
                               include_embeddings=include_embeddings)
    return project(model, residual, norm=norm, matrix=matrix)


def top_tokens(
    logits: Float[torch.Tensor, "... d_vocab"], k: int = 5
) -> tuple[Float[torch.Tensor, "... k"], Int[torch.Tensor, "... k"]]:
    """The k most probable tokens: (probabilities under the softmax over the vocabulary, ids)."""
    if k <= 0 or k > logits.shape[-1]:
        raise ValueError(f"k must lie in [1, {logits.shape[-1]}], got {k}")
    probabilities = logits.float().softmax(dim=-1)
    return probabilities.topk(k, dim=-1)


def answer_probability_trace(
    model: HookedTransformer,
    embeds: Float[torch.Tensor, "1 pos d_model"],
    token_ids: Sequence[int] | torch.Tensor,
    *,
    position: int = -1,
    norm: bool = True,
    matrix: str = "unembed",
    fwd_hooks: HookList = (),
) -> Float[torch.Tensor, "layer n_tokens"]:
    """Answer-probability tracing (Map the Flow, Finding 3): the probability of each of
    ``token_ids`` (e.g. the option letters; true option vs false options) at ``position`` (the
    last position by default) under the logit lens of every layer. The final layer's row equals
    the model's own output distribution when ``norm=True`` and ``matrix="unembed"``."""
    ids = torch.as_tensor(token_ids, dtype=torch.long).flatten()
    if ids.numel() == 0:
        raise ValueError("answer_probability_trace needs at least one token id")
    if int(ids.min()) < 0 or int(ids.max()) >= model.cfg.d_vocab:
        raise ValueError(f"token ids must lie in [0, {model.cfg.d_vocab}), got {ids.tolist()}")
    logits = logit_lens(model, embeds, [position], norm=norm, matrix=matrix,
                        fwd_hooks=fwd_hooks)[:, 0]
    return logits.float().softmax(dim=-1)[:, ids.to(logits.device)]
