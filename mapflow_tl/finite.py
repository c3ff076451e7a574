"""Results are finite numbers, or the run stops and says where they stopped being.

A checkpoint with a NaN weight, a float16 overflow or a hook that writes NaN makes every logit NaN;
a softmax of NaN is NaN, its argmax is token 0, and an analysis would report "accuracy 0 %" with
rows JSON cannot hold. The analyses check the logits they turn into probabilities (one
``isfinite`` over what they read, so the fast path stays fast) and only when a value is not
finite run the forward once more with a cheap check on the residual stream of every block, to
name where the values first stop being finite — and, when the weights of that place hold NaN or
inf, which weights.

    require_finite(logits, vlm.backbone, x.embeds, hooks, what="the logits of the clean forward",
                   sample="s1")
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .errors import NonFiniteError

__all__ = ["NonFiniteError", "first_non_finite", "require_finite"]

#: The hook points watched in each block, in the order a forward reaches them.
_WATCHED = (
    ("hook_resid_pre", "the residual stream entering layer {layer}"),
    ("hook_attn_out", "the attention output of layer {layer}"),
    ("hook_mlp_out", "the MLP output of layer {layer}"),
    ("hook_resid_post", "the residual stream after layer {layer}"),
)


def _non_finite_weights(model: Any, prefixes: Sequence[str]) -> list[str]:
    """Names of the model's parameters under ``prefixes`` that hold NaN or inf, under
    HookedTransformer's names on either backend (the lean forward's one weight reader)."""
    from .suffix_forward import _parameters

    return [name for name, weight in _parameters(model).items()
            if name.startswith(tuple(prefixes)) and not bool(torch.isfinite(weight).all())]


def first_non_finite(
    model: Any, embeds: torch.Tensor, fwd_hooks: Sequence = ()
) -> tuple[str, list[str]] | None:
    """Where a forward of ``model`` (a ``HookedTransformer``) from ``embeds`` with ``fwd_hooks``
    first produces NaN or inf: ``(place, weights)`` with ``place`` in words and its hook point
    ("the MLP output of layer 2 (blocks.2.hook_mlp_out)") and ``weights`` the parameters of that
    place holding NaN/inf (empty when the weights are finite: a hook, an overflow); ``None``
    when the forward's logits are finite. Costs one forward and an ``isfinite`` per block."""
    from .models.backbone import run_from_embeds

    if not bool(torch.isfinite(embeds).all()):
        return ("the input embeddings (the video features and text embeddings prepare built)",
                [])
    seen: list[str] = []

    def watcher(name: str):
        # the name watched, not hook.name: a bridge names its hook points canonically
        def watch(activation: torch.Tensor, hook: Any) -> None:
            if not seen and not bool(torch.isfinite(activation).all()):
                seen.append(name)
        return watch

    names = ["hook_embed"] + [f"blocks.{layer}.{point}" for layer in range(model.cfg.n_layers)
                              for point, _ in _WATCHED]
    watched = [(name, watcher(name)) for name in names if name in model.hook_dict]
    with torch.no_grad():
        # the watchers go last, so that they see what the caller's hooks wrote
        logits = run_from_embeds(model, embeds, fwd_hooks=list(fwd_hooks) + watched)
    if seen:
        name = seen[0]
        if name == "hook_embed":
            return f"the input embeddings as hooked ({name})", []
        layer, point = int(name.split(".")[1]), name.split(".")[2]
        words = dict(_WATCHED)[point].format(layer=layer)
        return f"{words} ({name})", _non_finite_weights(model, [f"blocks.{layer}."])
    if not bool(torch.isfinite(logits).all()):
        return ("the final norm and unembedding (ln_final, unembed)",
                _non_finite_weights(model, ["ln_final.", "unembed."]))
    return None


def require_finite(
    values: torch.Tensor,
    model: Any,
    embeds: torch.Tensor,
    fwd_hooks: Sequence = (),
    *,
    what: str,
    sample: str = "",
) -> None:
    """Raise :class:`NonFiniteError` when ``values`` (logits or probabilities a result is made
    of, computed by a forward from ``embeds`` with ``fwd_hooks``) hold NaN or inf, naming the
    sample, ``what`` they are ("the logits of the clean forward"), where the values first stop
    being finite and the fix. Free when they are finite."""
    if bool(torch.isfinite(values).all()):
        return
    where = f"sample {sample!r}" if sample else "this sample"
    found = first_non_finite(model, embeds, fwd_hooks)
    dtype = getattr(getattr(model, "cfg", None), "dtype", None)
    overflow = (" or load in bfloat16/float32 (float16 overflows)"
                if dtype == torch.float16 else "")
    if found is None:  # the rerun is finite: the first forward was not reproducible
        raise NonFiniteError(
            f"{where}: {what} are not finite (NaN or inf), but a rerun of the same "
            f"forward is; check hooks that keep state between calls{overflow}")
    place, weights = found
    if weights:
        listed = ", ".join(weights[:4]) + (f" and {len(weights) - 4} more" if len(weights) > 4
                                           else "")
        fix = (f"the checkpoint's weights {listed} hold NaN/inf: download or convert the "
               f"checkpoint again")
    else:
        fix = f"its weights are finite: check the hooks that write activations{overflow}"
    raise NonFiniteError(f"{where}: {what} are not finite (NaN or inf); the values "
                         f"first become non-finite in {place}; {fix}")
