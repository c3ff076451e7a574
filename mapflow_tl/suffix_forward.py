"""The lean suffix forward of knockout sweeps: the backbone's decoder block restated in plain torch.

A knockout sweep (:mod:`mapflow_tl.engine`) recomputes, per configuration, only the layers from
its first blocked layer s on and only the positions from its first blocked query p on. Through the
``HookedTransformer`` every such layer call pays for hook dispatch, weight re-layouts
(``W.T.contiguous()``), re-rotating *all* cached keys, a rebuilt causal mask and an ``isnan``
pass — a fixed cost per call that dominates once the recomputed cells are few. This module runs
the same arithmetic without any of that:

- :func:`backbone_weights` reads the backbone's weights once per model, device and dtype (the only
  place that knows where they live, so another backend — a TransformerLens-4 ``TransformerBridge``
  — can supply the same :class:`BackboneWeights`). Q, K and V are packed into one ``[d_model,
  (heads + 2·kv_heads)·d_head]`` matrix (one matmul instead of three); every other weight is a view
  of the model's own storage, so no per-call copies and only the Q/K/V weights are held twice;
- :func:`clean_forward` runs the clean (unablated) sample once and keeps its *rotated* keys and
  values of every layer (``[kv_heads, pos, d_head]``) and the residual stream entering the layers a
  sweep starts from;
- :func:`suffix_logits` runs a batch of configurations from layer s, positions p … pos−1, with
  each configuration's knockout as a mask on its attention scores (Map the Flow §2: blocked
  (query, key) scores are −∞ in all heads) and returns the last-position logits.

Attention has two exact forms, picked by the number of recomputed queries Q:

- many queries (``Q ≥ SDPA_MIN_QUERIES``): the clean prefix keys/values are concatenated with the
  batch's own and ``torch.nn.functional.scaled_dot_product_attention`` runs with the knockout and
  causal mask as an additive ``[batch, 1, Q, pos]`` mask (faster than a boolean one on CPU);
- few queries (a "→ last" knockout recomputes one): the batch is folded into the query axis, so
  the clean prefix keys/values are read once for all configurations — no per-configuration copy of
  ``pos`` keys — and one softmax runs over the prefix scores and the batch's own scores side by
  side (``[batch, heads, Q, pos]``, the size the attention pattern has anyway).

The block restated (TransformerLens' ``HookedTransformer`` with the configs that
:func:`~mapflow_tl.models.backbone.hooked_config_from_hf` produces — Llama / Mistral / Qwen2 /
Qwen3 / Phi-3 and the Qwen2-VL M-RoPE text decoders): RMSNorm (``x / sqrt(mean(x²) + eps) · w``,
in fp32 for half types), Q/K/V projections with optional biases, optional per-head q/k RMSNorm
(Qwen3), rotary embedding of the first ``rotary_dim`` dimensions with the model's own (cos, sin)
tables (``x·cos + rotate_half(x)·sin``; per-sample M-RoPE tables and Phi-3 LongRoPE tables are
installed on the model by its adapter, so they are read, not recomputed), grouped-query attention
scaled by ``1/attn_scale``, output projection, gated MLP ``(act(x W_gate) ⊙ x W_in + b_in) W_out +
b_out``, final RMSNorm, unembedding, optional logit soft cap. :func:`lean_unsupported` names what
it does not restate (any other normalisation, MLP or attention variant, a model split over
several devices): the engine then stays on the hooked path.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float

from .errors import InputError

__all__ = [
    "SDPA_MIN_QUERIES",
    "BackboneWeights",
    "LayerWeights",
    "CleanRun",
    "backbone_weights",
    "lean_unsupported",
    "clean_forward",
    "suffix_logits",
]

#: From this many recomputed queries on, attention runs through SDPA on concatenated keys/values;
#: below it, through the batch-folded form that reads the clean prefix once for the whole batch.
#: (CPU, d_model 128, 1257 keys: SDPA wins from ≈ 16 queries per configuration.)
SDPA_MIN_QUERIES = 16

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_new": partial(F.gelu, approximate="tanh"),
    "gelu_pytorch_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
}


@dataclass(frozen=True)
class LayerWeights:
    """One decoder block's weights, laid out ``[in, out]`` for ``x @ W``."""

    ln_attn: Float[torch.Tensor, " d_model"]
    W_qkv: Float[torch.Tensor, "d_model qkv"]  # columns: q heads, then k heads, then v heads
    b_qkv: Float[torch.Tensor, " qkv"] | None
    q_norm: Float[torch.Tensor, " d_head"] | None
    k_norm: Float[torch.Tensor, " d_head"] | None
    W_O: Float[torch.Tensor, "heads_x_d_head d_model"]
    b_O: Float[torch.Tensor, " d_model"] | None
    ln_mlp: Float[torch.Tensor, " d_model"]
    W_gate: Float[torch.Tensor, "d_model d_mlp"]
    W_in: Float[torch.Tensor, "d_model d_mlp"]
    b_in: Float[torch.Tensor, " d_mlp"] | None
    W_out: Float[torch.Tensor, "d_mlp d_model"]
    b_out: Float[torch.Tensor, " d_model"] | None


@dataclass(frozen=True)
class BackboneWeights:
    """Everything the lean forward reads from a backbone: per-layer weights and the shape."""

    layers: tuple[LayerWeights, ...]
    ln_final: Float[torch.Tensor, " d_model"]
    W_U: Float[torch.Tensor, "d_model d_vocab"]
    b_U: Float[torch.Tensor, " d_vocab"] | None
    n_heads: int
    n_kv_heads: int
    d_head: int
    eps: float
    attn_scale: float
    activation: Callable[[torch.Tensor], torch.Tensor]
    logits_soft_cap: float
    dtype: torch.dtype
    device: torch.device
    #: per layer (cos, sin) ``[n_ctx, rotary_dim]``; read afresh by every sweep (per-sample M-RoPE)
    rotary: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()

    @property
    def n_layers(self) -> int:
        return len(self.layers)


def lean_unsupported(model) -> str | None:
    """Why the lean forward cannot restate this ``HookedTransformer`` exactly, or ``None``."""
    cfg = model.cfg
    checks = [
        (cfg.normalization_type == "RMS", f"normalization {cfg.normalization_type!r}"),
        (getattr(cfg, "final_rms", True), "a final LayerNorm"),
        (cfg.positional_embedding_type == "rotary",
         f"positional embedding {cfg.positional_embedding_type!r}"),
        (not getattr(cfg, "rotary_adjacent_pairs", False), "rotary on adjacent pairs"),
        (cfg.gated_mlp, "a non-gated MLP"),
        (cfg.act_fn in _ACTIVATIONS, f"activation {cfg.act_fn!r}"),
        (not cfg.parallel_attn_mlp, "parallel attention and MLP"),
        (cfg.n_devices == 1, f"a model split over {cfg.n_devices} devices"),
        ((cfg.attn_scores_soft_cap or -1) <= 0, "an attention-score soft cap"),
        (not cfg.use_local_attn, "local attention"),
        (not getattr(cfg, "use_attn_result", False), "use_attn_result"),
        (not getattr(cfg, "use_split_qkv_input", False), "use_split_qkv_input"),
        (not getattr(cfg, "use_hook_mlp_in", False), "use_hook_mlp_in"),
        (not getattr(cfg, "use_logn_attn", False), "log-n attention scaling"),
        (not getattr(cfg, "use_dynamic_ntk_rope", False), "dynamic NTK rotary"),
        (getattr(cfg, "clip_qkv", None) is None, "clipped q/k/v"),
        (not getattr(cfg, "use_attention_sinks", False), "attention sinks"),
        (not getattr(cfg, "load_in_4bit", False), "4-bit weights"),
        (cfg.original_architecture not in ("OlmoeForCausalLM", "Olmo2ForCausalLM",
                                           "Olmo3ForCausalLM"), "OLMo q/k norms"),
    ]
    for ok, what in checks:
        if not ok:
            return what
    return None


_WEIGHTS: "weakref.WeakKeyDictionary[object, tuple[tuple, BackboneWeights]]" = \
    weakref.WeakKeyDictionary()


def _stamp(model) -> tuple:
    """Changes whenever a weight is replaced, moved, cast or edited in place."""
    return tuple((p.data_ptr(), p.dtype, p.device, p._version) for p in model.parameters())


def backbone_weights(model) -> BackboneWeights:
    """The backbone's weights as the lean forward reads them, prepared once and cached.

    Reads only a ``HookedTransformer``'s public parameters (``W_Q [heads, d_model, d_head]``, …),
    its config, and the rotary (cos, sin) tables its attention layers hold (the adapters install
    per-sample M-RoPE or LongRoPE tables there; they are read on every call, never cached). Q/K/V
    are packed into one matrix (a copy, made once); every other weight is a view. The cached
    weights are rebuilt when any parameter changes (moved, cast, replaced or edited in place).
    """
    rotary = tuple((block.attn.rotary_cos, block.attn.rotary_sin) for block in model.blocks)
    stamp = _stamp(model)
    cached = _WEIGHTS.get(model)
    if cached is not None and cached[0] == stamp:
        return replace(cached[1], rotary=rotary)
    cfg = model.cfg
    n_heads, d_head = cfg.n_heads, cfg.d_head
    n_kv = cfg.n_key_value_heads or n_heads
    gqa = cfg.n_key_value_heads is not None

    def qkv(attn, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight = getattr(attn, f"_W_{name}" if gqa and name != "Q" else f"W_{name}")
        bias = getattr(attn, f"_b_{name}" if gqa and name != "Q" else f"b_{name}", None)
        # [heads, d_model, d_head] -> [d_model, heads·d_head], head-major like HF's q_proj rows
        return weight.permute(1, 0, 2).reshape(cfg.d_model, -1), \
            None if bias is None else bias.reshape(-1)

    def nonzero(bias: torch.Tensor | None) -> torch.Tensor | None:
        return None if bias is None or not bool(bias.any()) else bias

    layers = []
    with torch.no_grad():
        for block in model.blocks:
            attn, mlp = block.attn, block.mlp
            parts = [qkv(attn, name) for name in "QKV"]
            biases = [bias if bias is not None else torch.zeros(weight.shape[1],
                                                                 dtype=weight.dtype,
                                                                 device=weight.device)
                      for weight, bias in parts]
            b_qkv = nonzero(torch.cat(biases))
            layers.append(LayerWeights(
                ln_attn=block.ln1.w,
                W_qkv=torch.cat([weight for weight, _ in parts], dim=1).contiguous(),
                b_qkv=b_qkv,
                q_norm=attn.q_norm.w if cfg.use_qk_norm else None,
                k_norm=attn.k_norm.w if cfg.use_qk_norm else None,
                W_O=attn.W_O.reshape(n_heads * d_head, cfg.d_model),  # a view
                b_O=nonzero(attn.b_O),
                ln_mlp=block.ln2.w,
                W_gate=mlp.W_gate, W_in=mlp.W_in, b_in=nonzero(mlp.b_in),
                W_out=mlp.W_out, b_out=nonzero(mlp.b_out),
            ))
    weights = BackboneWeights(
        layers=tuple(layers), ln_final=model.ln_final.w, W_U=model.unembed.W_U,
        b_U=nonzero(model.unembed.b_U), n_heads=n_heads, n_kv_heads=n_kv, d_head=d_head,
        eps=float(cfg.eps), attn_scale=float(cfg.attn_scale if cfg.use_attn_scale else 1.0),
        activation=_ACTIVATIONS[cfg.act_fn],
        logits_soft_cap=float(cfg.output_logits_soft_cap or -1.0),
        dtype=cfg.dtype, device=model.W_E.device,
    )
    _WEIGHTS[model] = (stamp, weights)
    return replace(weights, rotary=rotary)


# ---------------------------------------------------------------------- the block
def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """TransformerLens' RMSNorm ``x / sqrt(mean(x²) + eps) · w`` (one fused kernel), normalised
    in fp32 for half types."""
    if x.dtype in (torch.float32, torch.float64):
        return F.rms_norm(x, weight.shape, weight, eps)
    return F.rms_norm(x.float(), weight.shape, None, eps).to(x.dtype) * weight


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding ``x·cos + rotate_half(x)·sin`` of the first ``rotary_dim`` dimensions.

    x ``[..., pos, heads, d_head]``, cos/sin ``[pos, rotary_dim]``."""
    rotary_dim = cos.shape[-1]
    cos, sin = cos[:, None, :], sin[:, None, :]
    rotated, passed = x[..., :rotary_dim], x[..., rotary_dim:]
    half = rotary_dim // 2
    flipped = torch.cat([-rotated[..., half:], rotated[..., :half]], dim=-1)
    rotated = rotated * cos + flipped * sin
    return rotated if passed.shape[-1] == 0 else torch.cat([rotated, passed], dim=-1)


def _qkv(weights: BackboneWeights, index: int, x: torch.Tensor, first: int, stop: int):
    """Rotated q ``[batch, Q, heads, d_head]`` and k, v ``[batch, Q, kv_heads, d_head]`` of the
    positions ``first … stop−1`` whose residual stream is x ``[batch, Q, d_model]``."""
    layer = weights.layers[index]
    h = _rms(x, layer.ln_attn, weights.eps)
    qkv = h @ layer.W_qkv
    if layer.b_qkv is not None:
        qkv = qkv + layer.b_qkv
    d_head, n_q = weights.d_head, weights.n_heads * weights.d_head
    n_kv = weights.n_kv_heads * d_head
    # q and k heads rotate in one pass: they are adjacent columns of the packed projection
    qk = qkv[..., :n_q + n_kv].unflatten(-1, (weights.n_heads + weights.n_kv_heads, d_head))
    v = qkv[..., n_q + n_kv:].unflatten(-1, (weights.n_kv_heads, d_head))
    if layer.q_norm is not None:
        qk = torch.cat([_rms(qk[..., :weights.n_heads, :], layer.q_norm, weights.eps),
                        _rms(qk[..., weights.n_heads:, :], layer.k_norm, weights.eps)], dim=-2)
    cos, sin = weights.rotary[index]
    if cos.shape[0] < stop:
        raise InputError(f"layer {index}'s rotary tables cover {cos.shape[0]} positions, the "
                         f"sequence has {stop}; run the model on it once to extend them")
    qk = _rotate(qk, cos[first:stop], sin[first:stop])
    return qk[..., :weights.n_heads, :], qk[..., weights.n_heads:, :], v


def _finish_block(weights: BackboneWeights, layer: LayerWeights, x: torch.Tensor,
                  z: torch.Tensor) -> torch.Tensor:
    """Output projection of the attention result z ``[batch, Q, heads·d_head]`` and the MLP."""
    attn_out = z @ layer.W_O
    if layer.b_O is not None:
        attn_out = attn_out + layer.b_O
    x = x + attn_out
    h = _rms(x, layer.ln_mlp, weights.eps)
    hidden = weights.activation(h @ layer.W_gate) * (h @ layer.W_in)
    if layer.b_in is not None:
        hidden = hidden + layer.b_in
    mlp_out = hidden @ layer.W_out
    if layer.b_out is not None:
        mlp_out = mlp_out + layer.b_out
    return x + mlp_out


def _head(weights: BackboneWeights, x: torch.Tensor) -> Float[torch.Tensor, "batch d_vocab"]:
    """Final RMSNorm, unembedding and soft cap of x ``[batch, d_model]``."""
    logits = _rms(x, weights.ln_final, weights.eps) @ weights.W_U
    if weights.b_U is not None:
        logits = logits + weights.b_U
    cap = weights.logits_soft_cap
    return logits if cap <= 0 else cap * torch.tanh(logits / cap)


@dataclass
class CleanRun:
    """What a sweep keeps of the clean forward: rotated keys and values of every layer
    ``[kv_heads, pos, d_head]``, the residual stream entering the layers it starts from
    ``{layer: [1, pos, d_model]}``, and the clean last-position logits ``[d_vocab]``."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    residual: dict[int, torch.Tensor]
    logits: torch.Tensor


@torch.inference_mode()
def clean_forward(weights: BackboneWeights, embeds: Float[torch.Tensor, "1 pos d_model"],
                  keep_residual: set[int] | frozenset[int] = frozenset()) -> CleanRun:
    """One unablated forward of a sample, keeping what its knockout configurations reuse."""
    x = embeds
    n = x.shape[1]
    keys, values, residual = [], [], {}
    for index, layer in enumerate(weights.layers):
        if index in keep_residual:
            residual[index] = x
        q, k, v = _qkv(weights, index, x, 0, n)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        keys.append(k[0].contiguous())
        values.append(v[0].contiguous())
        z = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=1.0 / weights.attn_scale,
            enable_gqa=weights.n_kv_heads != weights.n_heads)
        x = _finish_block(weights, layer, x, z.transpose(1, 2).flatten(2))
    return CleanRun(keys, values, residual, _head(weights, x[:, -1])[0])


def _folded_attention(weights: BackboneWeights, q, k, v, prefix_k, prefix_v,
                      mask: torch.Tensor) -> torch.Tensor:
    """Attention of few queries per configuration, exact, without copying the clean prefix.

    q ``[B, Q, heads, d]``, k/v ``[B, Q, kv, d]`` (the batch's own positions p … pos−1),
    prefix_k/v ``[kv, p, d]`` (the clean run's positions 0 … p−1, shared), mask ``[B, 1, Q, 1,
    pos]`` additive (0 or −∞: causal and knockout). The batch and the query heads of each
    key/value head are folded into the query axis for the prefix, so its keys and values are read
    once for all configurations. Returns ``[B, Q, heads·d]``.
    """
    B, Q, _, d = q.shape
    kv, g = weights.n_kv_heads, weights.n_heads // weights.n_kv_heads
    p = prefix_k.shape[1]
    q = q.unflatten(2, (kv, g)) * (1.0 / weights.attn_scale)  # [B, Q, kv, g, d]
    # the clean prefix: [kv, B·Q·g, p] in one matmul, read as [B, kv, Q, g, p]
    folded = q.permute(2, 0, 1, 3, 4).reshape(kv, B * Q * g, d)
    shared = (folded @ prefix_k.transpose(1, 2)).unflatten(1, (B, Q, g)).permute(1, 0, 2, 3, 4)
    # the batch's own keys: [B, kv, Q·g, Q'] read as [B, kv, Q, g, Q']
    own = (q.permute(0, 2, 1, 3, 4).reshape(B, kv, Q * g, d)
           @ k.permute(0, 2, 3, 1)).unflatten(2, (Q, g))
    compute = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    scores = torch.cat([shared, own], dim=-1).to(compute) + mask
    probabilities = scores.softmax(-1).to(v.dtype)  # [B, kv, Q, g, pos]
    prefix_part = probabilities[..., :p].permute(1, 0, 2, 3, 4).reshape(kv, B * Q * g, p)
    out = (prefix_part @ prefix_v).unflatten(1, (B, Q, g)).permute(1, 0, 2, 3, 4)
    out = out + (probabilities[..., p:].flatten(2, 3) @ v.permute(0, 2, 1, 3)).unflatten(2, (Q, g))
    return out.permute(0, 2, 1, 3, 4).reshape(B, Q, weights.n_heads * d)


@torch.inference_mode()
def suffix_logits(
    weights: BackboneWeights,
    clean: CleanRun,
    start_layer: int,
    first_query: int,
    blocked: Bool[torch.Tensor, "batch query key"],
    active: Bool[torch.Tensor, "layer batch"],
) -> Float[torch.Tensor, "batch d_vocab"]:
    """Last-position logits of a batch of knockout configurations.

    Configuration b blocks the (query, key) pairs ``blocked[b]`` — the rows ``first_query …
    pos−1`` of its edge set, over all ``pos`` keys — in the layers l where ``active[l, b]``.
    Layers before ``start_layer`` and positions before ``first_query`` are the clean run's
    (``clean.residual[start_layer]`` must be kept, and no configuration may block a query before
    ``first_query`` or a layer before ``start_layer``): the suffix forward restates the backbone
    block on the recomputed cells only (module docstring).
    """
    B, Q, n = blocked.shape
    p = first_query
    if p + Q != n:
        raise ValueError(f"blocked rows {Q} from first query {p} do not end at the sequence "
                         f"length {n}")
    x = clean.residual[start_layer][:, p:].expand(B, -1, -1)
    masks: dict[tuple[bool, ...], torch.Tensor] = {}
    use_sdpa = Q >= SDPA_MIN_QUERIES
    gqa = weights.n_kv_heads != weights.n_heads

    def mask_for(layer: int) -> torch.Tensor:
        """The additive mask of a layer (0 or −∞: causal and each active configuration's
        knockout), one per pattern of active configurations."""
        pattern = tuple(active[layer].tolist())
        if pattern not in masks:
            allowed = torch.ones(Q, n, dtype=torch.bool, device=blocked.device).tril(p)
            if all(pattern):
                allowed = allowed & ~blocked
            elif any(pattern):
                allowed = allowed & ~(blocked & active[layer].to(blocked.device)[:, None, None])
            compute = weights.dtype if use_sdpa or weights.dtype not in (
                torch.float16, torch.bfloat16) else torch.float32
            additive = torch.zeros(allowed.shape, dtype=compute, device=blocked.device)
            additive.masked_fill_(~allowed, float("-inf"))
            if additive.dim() == 2:
                additive = additive[None]
            # SDPA: [B, 1, Q, pos]; folded: [B, 1, Q, 1, pos] (kv heads, query heads per kv head)
            masks[pattern] = additive[:, None] if use_sdpa else additive[:, None, :, None]
        return masks[pattern]

    for index in range(start_layer, weights.n_layers):
        layer = weights.layers[index]
        q, k, v = _qkv(weights, index, x, p, n)
        prefix_k, prefix_v = clean.keys[index][:, :p], clean.values[index][:, :p]
        if use_sdpa:
            keys = torch.cat([prefix_k.expand(B, -1, -1, -1), k.transpose(1, 2)], dim=2)
            values = torch.cat([prefix_v.expand(B, -1, -1, -1), v.transpose(1, 2)], dim=2)
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), keys, values, attn_mask=mask_for(index),
                scale=1.0 / weights.attn_scale, enable_gqa=gqa).transpose(1, 2).flatten(2)
        else:
            z = _folded_attention(weights, q, k, v, prefix_k, prefix_v, mask_for(index))
        x = _finish_block(weights, layer, x, z)
    return _head(weights, x[:, -1])

