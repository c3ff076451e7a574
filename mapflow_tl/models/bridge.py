"""The language backbone as a TransformerLens 4 ``TransformerBridge`` (backend ``"bridge"``).

TransformerLens 4 removed ``HookedTransformer``. Its ``TransformerBridge`` wraps the Hugging Face
decoder *itself* — the weights stay HF's, HF runs the computation — and re-exposes it under
HookedTransformer's hook names once ``enable_compatibility_mode`` is on. mapflow-tl turns it on
with ``no_processing=True``: no LayerNorm folding, no centring, so hooks see exactly what HF
computes, as on the hooked backend (:mod:`mapflow_tl.models.backbone`).

What the bridge gives that experiment code relies on (checked by ``tests/test_backends.py`` for
every backend): ``blocks.{l}.attn.hook_attn_scores`` fires on the pre-softmax scores of its
reconstructed rotary attention (so a knockout's −∞ edits reach the softmax),
``hook_resid_pre/post``, ``hook_pattern``, ``hook_embed``; ``hooks()``, ``get_caching_hooks``,
``hook_dict``, ``reset_hooks``; ``cfg`` with HookedTransformer's field names.

Where the decoder rotates adjacent pairs (GLM-4.1V), TransformerLens' reconstruction is told the
layout the HF rotary module returns its tables in, read off that module (never off the family
name): with the wrong layout GLM-4.1V's logits were 0.60 from HF's, with the right one they equal
HF's exactly.

The bridge needs a ``*ForCausalLM`` module; a VideoLLM's text decoder sits inside the multimodal
model without one, so :func:`bridge_from_hf` builds the causal-LM shell on the meta device and
gives it the decoder and the LM head (the same modules: nothing is copied).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import InputError

__all__ = ["bridge_from_hf", "is_bridge", "BRIDGE_CONFIG_FIELDS"]

#: HookedTransformer config fields mapflow-tl reads that the bridge's own translation of the HF
#: config leaves unset or sets otherwise (``attn_scale``, ``rotary_dim``, …); they are set from
#: the same field values the hooked backend is built from, so both backends read one config.
BRIDGE_CONFIG_FIELDS = ("n_layers", "d_model", "n_heads", "d_vocab", "normalization_type",
                        "final_rms", "gated_mlp", "positional_embedding_type", "n_ctx", "rotary_dim", "rotary_base", "rotary_adjacent_pairs",
                        "use_normalization_before_and_after", "use_qk_norm", "eps",
                        "original_architecture", "default_prepend_bos", "num_experts",
                        "experts_per_token", "norm_topk_prob", "n_key_value_heads", "d_head",
                        "d_mlp", "act_fn", "dtype")


def is_bridge(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens 4 ``TransformerBridge`` (without importing it)."""
    return any(cls.__name__ == "TransformerBridge" for cls in type(model).__mro__)


def _causal_lm_shell(architecture: str, text_model: nn.Module, lm_head: nn.Module | None,
                     text_config: Any) -> nn.Module:
    """An HF ``architecture`` (``LlamaForCausalLM``, …) whose decoder and LM head are the given
    modules: the shell's own weights are made on the meta device and replaced, never filled."""
    import transformers

    model_class = getattr(transformers, architecture, None)
    if model_class is None:
        raise InputError(f"transformers has no {architecture}; the bridge backend cannot host "
                         f"this backbone (use backend='hooked' with transformer-lens 3.9)")
    try:
        with torch.device("meta"):
            try:
                shell = model_class(text_config)
            except (AttributeError, TypeError, ValueError):
                # a multimodal model's text config (Qwen3VLTextConfig) lacks fields the causal
                # LM's own config class has: build the shell from that class with its values
                values = {key: value for key, value in text_config.to_dict().items()
                          if key not in ("model_type", "architectures")}
                shell = model_class(model_class.config_class(**values))
    except Exception as error:  # noqa: BLE001 — the config class belongs to another model
        raise InputError(
            f"the bridge backend cannot build {architecture} from this "
            f"{type(text_config).__name__} ({type(error).__name__}: {error}); use "
            f"backend='hooked' with transformer-lens 3.9") from None
    shell.model = text_model
    if lm_head is None:  # tied: the unembedding is the input embedding's weight
        embed = text_model.embed_tokens.weight
        lm_head = nn.Linear(embed.shape[1], embed.shape[0], bias=False, device="meta")
        lm_head.weight = embed
    shell.lm_head = lm_head
    shell.config = text_config
    meta = [name for name, p in shell.named_parameters() if p.is_meta]
    if meta:
        raise InputError(f"the bridge's {architecture} shell kept weights the decoder does not "
                         f"provide: {meta[:3]}; use backend='hooked'")
    return shell


def bridge_from_hf(
    text_model: nn.Module,
    lm_head: nn.Module | None,
    text_config: Any,
    fields: dict[str, Any],
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    n_devices: int = 1,
) -> Any:
    """A ``TransformerBridge`` over the Hugging Face text decoder and LM head, in compatibility
    mode without weight processing.

    ``fields`` are the HookedTransformer config fields the hooked backend would be built from
    (:func:`~mapflow_tl.models.backbone.backbone_config_fields`: the same refusals of what
    cannot be reproduced); the bridge's ``cfg`` takes the ones mapflow-tl reads
    (:data:`BRIDGE_CONFIG_FIELDS`). The decoder is moved to ``device`` and cast to ``dtype``.
    """
    if n_devices != 1:
        raise InputError(f"the bridge backend runs on one device, got n_devices={n_devices}; "
                         f"use backend='hooked' (transformer-lens 3.9) to split the backbone")
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module

    architecture = fields["original_architecture"]
    shell = _causal_lm_shell(architecture, text_model, lm_head, text_config)
    shell.to(device=device, dtype=dtype).eval()
    bridge = build_bridge_from_module(shell, architecture, hf_config=text_config, dtype=dtype,
                                      device=torch.device(device), model_name="mapflow-backbone")
    # HookedTransformer hook names and unprocessed weights: hooks see what HF computes
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    cfg = bridge.cfg
    for name in BRIDGE_CONFIG_FIELDS:
        if name in fields:
            setattr(cfg, name, fields[name])
    if cfg.n_key_value_heads == cfg.n_heads:
        cfg.n_key_value_heads = None
    cfg.attn_scale = math.sqrt(cfg.d_head)
    cfg.use_attn_scale = True
    cfg.device = str(device)
    _match_rotary_layout(bridge, text_model)
    # what the lean suffix forward of the sweep engine reads (suffix_forward.backbone_weights):
    # the HF weights under HookedTransformer's names, and the HF rotary module's tables
    # (plain attributes, not submodules: deep copies and .to() of the bridge carry them along
    # with the modules they read)
    object.__setattr__(bridge, "mapflow_parameters", HFParameters(text_model, lm_head, cfg))
    object.__setattr__(bridge, "mapflow_rotary_tables", HFRotaryTables(text_model, cfg))
    check_scores_are_editable(bridge)
    return bridge.eval()


@torch.no_grad()
def _match_rotary_layout(bridge: Any, text_model: nn.Module) -> None:
    """Tell the bridge's reconstructed attention the layout of the HF rotary tables it rotates
    adjacent pairs with, read off the HF rotary module itself (never off the family name).

    TransformerLens 4.3 rotates adjacent pairs (``rotary_adjacent_pairs``) with tables either in
    the half-duplicated layout ``[c₀ … c_{h−1}, c₀ … c_{h−1}]`` (GLM-4's text rotary; TL
    re-lays them out) or already interleaved ``[c₀, c₀, c₁, c₁, …]``
    (``rotary_interleaved_cos_sin``; used as given). GLM-4.1V's M-RoPE module returns
    interleaved tables: read as half-duplicated, its logits differed from HF's by 0.60. The
    flag is set on the config every attention component reads (a copy of ``bridge.cfg``)."""
    if not getattr(bridge.cfg, "rotary_adjacent_pairs", False):
        return
    rotary = text_model.rotary_emb
    probe = torch.zeros(1, dtype=torch.float32, device=next(text_model.parameters()).device)
    # positions 0 … 3 on every axis: position 1 separates the frequencies, so the two layouts
    # differ wherever two frequencies do
    cos, _ = rotary(probe, torch.arange(4, device=probe.device)[None])
    cos = cos.reshape(-1, cos.shape[-1])
    half = cos.shape[-1] // 2
    interleaved = torch.equal(cos[:, 0::2], cos[:, 1::2])
    duplicated = torch.equal(cos[:, :half], cos[:, half:])
    if interleaved == duplicated:
        raise InputError(
            f"the HF rotary tables of this backbone ({type(rotary).__name__}) are neither "
            f"interleaved nor half-duplicated, so the bridge cannot rotate them as HF does; use "
            f"backend='hooked' (pip install 'transformer-lens>=3.9,<4')")
    configs = {id(bridge.cfg): bridge.cfg}
    configs.update({id(block.attn.config): block.attn.config for block in bridge.blocks})
    for config in configs.values():
        config.rotary_interleaved_cos_sin = interleaved


@torch.no_grad()
def check_scores_are_editable(bridge: Any) -> None:
    """Refuse a bridge on which a knockout would silently change nothing.

    A knockout edits ``blocks.{l}.attn.hook_attn_scores`` before the softmax. The bridge fires
    that hook only where it reconstructs the attention itself; where it delegates to an HF
    kernel, the hook would not fire (or its edits would not reach the softmax) and every
    knockout would be a no-op. A three-position forward checks every layer: the hook fires once
    per layer, and −∞ on the score of the last query to key 0 makes that pattern entry 0."""
    n_layers, width = bridge.cfg.n_layers, bridge.cfg.d_model
    fired, patterns = [0] * n_layers, {}

    def cut(scores: torch.Tensor, hook: Any) -> torch.Tensor:
        layer = int(hook.name.split(".")[1])
        fired[layer] += 1
        scores = scores.clone()
        scores[..., -1, 0] = float("-inf")
        return scores

    def keep(pattern: torch.Tensor, hook: Any) -> None:
        patterns[int(hook.name.split(".")[1])] = pattern

    hooks = [(f"blocks.{layer}.attn.hook_attn_scores", cut) for layer in range(n_layers)]
    hooks += [(f"blocks.{layer}.attn.hook_pattern", keep) for layer in range(n_layers)]
    probe = torch.zeros(1, 3, width, dtype=bridge.cfg.dtype,
                        device=next(bridge.original_model.parameters()).device)
    probe[..., 0] = 1.0
    with bridge.hooks(fwd_hooks=hooks):
        bridge(probe, return_type=None)
    broken = [layer for layer in range(n_layers)
              if fired[layer] != 1 or layer not in patterns
              or float(patterns[layer][..., -1, 0].abs().max()) != 0.0]
    if broken:
        raise InputError(
            f"on this backbone TransformerLens' bridge does not let a knockout edit the "
            f"pre-softmax attention scores of layers {broken} (attention run by an HF kernel), "
            f"so knockouts would silently change nothing; use backend='hooked' (pip install "
            f"'transformer-lens>=3.9,<4')")


class HFParameters:
    """The HF decoder's weights under HookedTransformer's parameter names (views, no zero
    biases): what the lean suffix forward reads of a bridge."""

    def __init__(self, text_model: nn.Module, lm_head: nn.Module | None, cfg: Any) -> None:
        self.text_model, self.lm_head, self.cfg = text_model, lm_head, cfg

    def __call__(self) -> dict[str, torch.Tensor]:
        from .backbone import _state_dict_llama_like

        return _state_dict_llama_like(self.text_model, self.lm_head, self.cfg,
                                      zero_biases=False)


class HFRotaryTables:
    """The HF decoder's own rotary (cos, sin) tables for positions 0 … n−1, per layer, as the
    hooked backend holds them on its attention layers (``[n, rotary_dim]``, HF's layout): what
    the lean suffix forward rotates with. ``reserve(n)`` makes them cover n positions (the sweep
    engine reserves each sample's length); computed once per length, device and dtype."""

    def __init__(self, text_model: nn.Module, cfg: Any) -> None:
        self.text_model, self.cfg = text_model, cfg
        self.n = 0
        self._tables: tuple | None = None

    def reserve(self, n: int) -> None:
        if n > self.n:
            self.n, self._tables = n, None

    def prepare(self, embeds: torch.Tensor) -> None:
        """Cover the positions of these embeddings ``[batch, pos, d_model]``."""
        self.reserve(int(embeds.shape[1]))

    @torch.no_grad()
    def __call__(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        rotary = self.text_model.rotary_emb
        device = next(self.text_model.parameters()).device
        if self._tables is None or self._tables[0][0].device != device:
            probe = torch.zeros(1, dtype=torch.float32, device=device)
            # nothing reserved yet (weights read outside a sweep): a context's worth of tables
            n = self.n or min(int(self.cfg.n_ctx), 8192)
            cos, sin = rotary(probe, torch.arange(n, device=device)[None])
            pair = (cos[0].to(self.cfg.dtype), sin[0].to(self.cfg.dtype))
            self._tables = (pair,) * self.cfg.n_layers
        return self._tables
