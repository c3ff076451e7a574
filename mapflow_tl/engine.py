"""Knockout sweeps: many knockout configurations on the same input.

A sweep point is a :class:`KnockoutConfig` — a named curve (one blocked pathway), its edge set and
the layers it is blocked in (one window of a layer sweep, Map the Flow §2). :func:`sweep` returns
the last-position logits of every configuration.

``method="naive"`` runs one full forward per configuration, exactly as the paper's reference code
does; it is the reference the faster methods are checked against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from jaxtyping import Float
from transformer_lens import HookedTransformer

from .edges import Edges
from .hooks import knockout, window
from .models.backbone import run_from_embeds

__all__ = ["KnockoutConfig", "layer_sweep", "sweep", "SWEEP_METHODS"]

SWEEP_METHODS = ("naive",)


@dataclass(frozen=True)
class KnockoutConfig:
    """One point of a sweep: block ``edges`` in ``layers``; ``curve`` and ``center`` label it."""

    curve: str
    edges: Edges
    layers: tuple[int, ...]
    center: int | None = None

    def __post_init__(self) -> None:
        if not self.layers:
            raise ValueError(f"knockout config {self.curve!r} (center {self.center}) has no layer")


def layer_sweep(
    curves: Mapping[str, Edges],
    n_layers: int,
    *,
    k: int = 9,
    style: str = "center",
    centers: Iterable[int] | None = None,
) -> list[KnockoutConfig]:
    """One configuration per (curve, window centre): the paper's layer-wise knockout sweep."""
    centers = range(n_layers) if centers is None else list(centers)
    return [
        KnockoutConfig(curve, edges, tuple(window(center, n_layers=n_layers, k=k, style=style)),
                       center)
        for curve, edges in curves.items()
        for center in centers
    ]


def sweep(
    model: HookedTransformer,
    embeds: Float[torch.Tensor, "1 pos d_model"],
    configs: Sequence[KnockoutConfig],
    *,
    method: str = "naive",
) -> Float[torch.Tensor, "config d_vocab"]:
    """Last-position logits of the model under each knockout configuration."""
    if method not in SWEEP_METHODS:
        raise ValueError(f"unknown sweep method {method!r}; choose one of {SWEEP_METHODS}")
    if embeds.dim() != 3 or embeds.shape[0] != 1:
        raise ValueError(f"sweep runs one sample: embeds must be [1, pos, d_model], "
                         f"got {tuple(embeds.shape)}")
    rows = []
    for config in configs:
        hooks = knockout(config.edges, config.layers, n_layers=model.cfg.n_layers)
        rows.append(run_from_embeds(model, embeds, fwd_hooks=hooks)[0, -1])
    if not rows:
        return torch.empty(0, model.cfg.d_vocab)
    return torch.stack(rows)
