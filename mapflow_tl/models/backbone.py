"""The language backbone as a TransformerLens ``HookedTransformer`` or ``TransformerBridge``.

A VideoLLM's text model (Llama / Vicuna / Mistral / Qwen2 / Qwen3 / Phi-3 decoder) is converted
weight by weight to a ``HookedTransformer`` (TransformerLens 3.9, backend ``"hooked"``) *without*
any weight processing that changes intermediate activations: no LayerNorm folding, no centring,
no value-bias folding. On TransformerLens 4 (backend ``"bridge"``) the HF decoder itself runs
inside a ``TransformerBridge`` (:mod:`mapflow_tl.models.bridge`), with the same hook names and
config fields. Either way hooks see exactly what the Hugging Face model computes, and the video
tokens are injected as embeddings (:func:`run_from_embeds`) rather than token ids.
:func:`backbone_from_hf` builds the backbone on the chosen backend (:mod:`.backends`).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import einops
import torch
from jaxtyping import Float
from torch import nn
from transformer_lens import ActivationCache  # in TransformerLens 3.9 and 4.x alike

from ..errors import InputError
from ..hooks import HookList, check_hooks
from .backends import resolve_backend
from .bridge import bridge_from_hf, is_bridge

if TYPE_CHECKING:  # TransformerLens 4 removed these; they are imported where the hooked path runs
    from transformer_lens import HookedTransformer, HookedTransformerConfig

__all__ = ["LLAMA_LIKE", "QK_NORM", "backbone_config_fields", "hooked_config_from_hf",
           "hooked_from_hf", "backbone_from_hf", "run_from_embeds", "cache_from_embeds",
           "generate_from_embeds", "RotaryPositions", "BridgePositions", "rotary_positions"]

# HF text model_types that share the Llama decoder layout (q/k/v/o projections, optional q/k/v
# biases, gated SiLU MLP, RMSNorm, rotary positions; Qwen3 adds an RMSNorm over each head of q and
# k before the rotary embedding). Each maps to the TL architecture name.
LLAMA_LIKE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    # Text decoders of Qwen2-VL / Qwen2.5-VL: Qwen2 layers under 3D rotary positions (M-RoPE),
    # loadable only with per-sample rotary tables (positions="per_sample", RotaryPositions).
    "qwen2_vl_text": "Qwen2ForCausalLM",
    "qwen2_5_vl_text": "Qwen2ForCausalLM",
    # Qwen3-VL's text decoder: Qwen3 layers (q/k norm) under interleaved M-RoPE; its DeepStack
    # visual features are per-sample residual additions (RotaryPositions' ``additions``).
    "qwen3_vl_text": "Qwen3ForCausalLM",
    # Qwen3-VL-MoE's: the same attention, every layer a sparse mixture of experts (TL's MoE
    # block: softmax router, top-k, renormalised, gated SiLU experts).
    "qwen3_vl_moe_text": "Qwen3MoeForCausalLM",
    # Phi-3: the same layer with fused ``qkv_proj`` and ``gate_up_proj`` weights (split on
    # conversion), optional partial rotary, a sliding window that every layer applies.
    "phi3": "Phi3ForCausalLM",
    # GLM-4.1V's text decoder: the Llama layout plus an RMSNorm on the attention and MLP outputs
    # before each residual add (TL's use_normalization_before_and_after: ln1_post / ln2_post),
    # a fused gate_up_proj, and partial M-RoPE rotating adjacent pairs (per-sample tables).
    "glm4v_text": "Glm4ForCausalLM",
}
# Decoders whose attention normalises q and k per head (``self_attn.q_norm`` / ``k_norm``).
QK_NORM = {"qwen3", "qwen3_vl_text", "qwen3_vl_moe_text"}
# Decoders whose every MLP is a top-k mixture of experts whose router always renormalises the
# top-k softmax weights (``Qwen3VLMoeTextTopKRouter``).
MOE_RENORMALISED = {"qwen3_vl_moe_text"}
# Decoders that normalise the attention and MLP outputs before adding them to the residual stream
# (GLM-4's post_self_attn_layernorm / post_mlp_layernorm) and rotate adjacent pairs of the first
# partial_rotary_factor·d_head dimensions (GLM-4's rotate_half_llm, interleaved tables).
SANDWICH_NORM = {"glm4v_text"}


def _rope_theta(text_config: Any) -> float:
    theta = getattr(text_config, "rope_theta", None)
    parameters = getattr(text_config, "rope_parameters", None) or {}
    if theta is None:
        theta = parameters.get("rope_theta", 10000.0)
    return float(theta)


def _rope_scaling(text_config: Any) -> dict:
    scaling = getattr(text_config, "rope_scaling", None) or {}
    parameters = getattr(text_config, "rope_parameters", None) or {}
    return dict(scaling or parameters)


def _rope_type(text_config: Any) -> str:
    scaling = _rope_scaling(text_config)
    return (scaling.get("rope_type") or scaling.get("type") or "default").lower()


def _longrope_context(text_config: Any) -> int:
    """Positions up to which Phi-3's LongRoPE uses its short factors (HF switches the whole
    sequence to the long factors beyond them)."""
    parameters = _rope_scaling(text_config)
    return int(parameters.get("original_max_position_embeddings")
               or getattr(text_config, "original_max_position_embeddings", None)
               or text_config.max_position_embeddings)


def _rope_scaling_config(scaling: dict, text_config: Any, model_type: str) -> dict[str, Any]:
    """TransformerLens config fields for a HF rope scaling, or ``ValueError`` if it has none."""
    rope_type = (scaling.get("rope_type") or scaling.get("type") or "default").lower()
    if rope_type == "default":
        return {}
    if rope_type in ("longrope", "su") and model_type == "phi3":
        # Per-frequency factors and a cos/sin scale TL's config cannot express: hooked_from_hf
        # installs the HF rotary module's own tables (short factors, n_ctx capped to match).
        return {}
    if rope_type == "llama3":
        return dict(
            use_NTK_by_parts_rope=True,
            NTK_original_ctx_len=scaling.get("original_max_position_embeddings",
                                             text_config.max_position_embeddings),
            NTK_by_parts_low_freq_factor=scaling.get("low_freq_factor", 1.0),
            NTK_by_parts_high_freq_factor=scaling.get("high_freq_factor", 4.0),
            NTK_by_parts_factor=scaling.get("factor", 1.0),
        )
    if rope_type == "linear":
        # HF divides the inverse frequencies by the factor; TL multiplies its wavelengths by it.
        return dict(rotary_scaling_factor=float(scaling.get("factor", 1.0)))
    raise InputError(
        f"rope scaling {rope_type!r} of this {model_type} backbone cannot be reproduced by "
        f"TransformerLens' rotary embedding; refusing to load with wrong positions"
    )


def hooked_config_from_hf(
    text_config: Any,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    n_devices: int = 1,
    n_ctx: int | None = None,
    positions: str = "sequential",
) -> HookedTransformerConfig:
    """A ``HookedTransformerConfig`` of :func:`backbone_config_fields` (TransformerLens 3.9)."""
    from transformer_lens import HookedTransformerConfig

    return HookedTransformerConfig(**backbone_config_fields(
        text_config, dtype=dtype, device=device, n_devices=n_devices, n_ctx=n_ctx,
        positions=positions))


def backbone_config_fields(
    text_config: Any,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    n_devices: int = 1,
    n_ctx: int | None = None,
    positions: str = "sequential",
) -> dict[str, Any]:
    """HookedTransformer config fields that reproduce a Hugging Face text-decoder config — the
    one description both backends are built from (the hooked backend's
    ``HookedTransformerConfig``, the bridge's ``cfg``).

    Handles grouped-query attention, q/k/v biases (Qwen2), per-head q/k RMSNorm (Qwen3),
    ``rope_theta``, Llama-3 and linear rope scaling, the RMSNorm epsilon and the head dimension
    (``head_dim`` may differ from ``hidden_size / num_attention_heads``). ``dtype`` (fp32, bf16,
    fp16), ``device`` and ``n_devices`` pass through to TransformerLens. What TransformerLens
    cannot reproduce exactly raises ``ValueError`` rather than load with wrong activations:
    other rope scalings, 3D multimodal rotary positions (M-RoPE), sliding-window attention and
    MLP biases. Phi-3: fused qkv / gate_up weights are split, ``partial_rotary_factor`` gives a
    partial ``rotary_dim``, and ``n_ctx`` is capped at its ``sliding_window`` and, under LongRoPE
    ("longrope" / "su"), at ``original_max_position_embeddings`` — within both HF neither masks
    by window nor switches to the long factors. LongRoPE's per-frequency factors and cos/sin
    scale are not TransformerLens config fields: :func:`hooked_from_hf` installs the HF rotary
    module's own tables, so this config alone does not carry them.

    GLM-4.1V (``glm4v_text``): the post-attention / post-MLP RMSNorms become TransformerLens'
    ``ln1_post`` / ``ln2_post`` (``use_normalization_before_and_after``) and its partial rotary
    rotates adjacent pairs (``rotary_adjacent_pairs``, ``rotary_dim`` from
    ``rope_parameters["partial_rotary_factor"]``).

    ``positions="per_sample"`` accepts a multimodal rotary scheme (M-RoPE) on the promise that the
    caller supplies every sample's rotary angles through :class:`RotaryPositions`.
    """
    if positions not in ("sequential", "per_sample"):
        raise InputError(f"positions must be 'sequential' or 'per_sample', got {positions!r}")
    model_type = getattr(text_config, "model_type", None)
    if model_type not in LLAMA_LIKE:
        raise InputError(
            f"text backbone model_type {model_type!r} is not supported; supported: "
            f"{sorted(LLAMA_LIKE)}"
        )
    n_heads = text_config.num_attention_heads
    d_head = getattr(text_config, "head_dim", None) or text_config.hidden_size // n_heads
    n_kv = getattr(text_config, "num_key_value_heads", None) or n_heads
    rotary_dim = d_head
    if model_type in SANDWICH_NORM:
        # HF's attention splits heads by hidden_size / heads whatever head_dim says, its rotary
        # sizes the tables by head_dim: two different numbers cannot both be reproduced
        if d_head != text_config.hidden_size // n_heads:
            raise InputError(f"{model_type} backbone with head_dim {d_head} != hidden_size / "
                             f"num_attention_heads: its attention and rotary disagree")
        parameters = getattr(text_config, "rope_parameters", None) or {}
        rotary_dim = int(d_head * float(parameters.get("partial_rotary_factor", 1.0)))
    if model_type == "phi3":
        factor = float(_rope_scaling(text_config).get(
            "partial_rotary_factor", getattr(text_config, "partial_rotary_factor", 1.0)) or 1.0)
        rotary_dim = int(d_head * factor)
        # HF masks keys more than sliding_window back in every layer and switches LongRoPE to its
        # long factors past original_max_position_embeddings; within both limits neither
        # happens, so the backbone's context stops there (longer prompts are refused).
        limits = [n_ctx or text_config.max_position_embeddings]
        if getattr(text_config, "sliding_window", None):
            limits.append(int(text_config.sliding_window))
        if _rope_type(text_config) in ("longrope", "su"):
            limits.append(_longrope_context(text_config))
        n_ctx = min(limits)
    cfg: dict[str, Any] = dict(
        d_model=text_config.hidden_size,
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=None if n_kv == n_heads else n_kv,
        d_mlp=text_config.intermediate_size,
        n_layers=text_config.num_hidden_layers,
        n_ctx=n_ctx or text_config.max_position_embeddings,
        eps=text_config.rms_norm_eps,
        d_vocab=text_config.vocab_size,
        act_fn=text_config.hidden_act,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_dim=rotary_dim,
        rotary_base=_rope_theta(text_config),
        rotary_adjacent_pairs=model_type in SANDWICH_NORM,
        use_normalization_before_and_after=model_type in SANDWICH_NORM,
        final_rms=True,
        gated_mlp=True,
        original_architecture=LLAMA_LIKE[model_type],
        init_weights=False,
        dtype=dtype,
        device=str(device),
        n_devices=n_devices,
        default_prepend_bos=False,
        tokenizer_prepends_bos=False,
    )
    scaling = _rope_scaling(text_config)
    if model_type in ("qwen2_vl_text", "qwen2_5_vl_text", "qwen3_vl_text", "qwen3_vl_moe_text",
                      "glm4v_text") \
            or scaling.get("mrope_section") \
            or scaling.get("mrope_interleaved"):
        if positions != "per_sample":
            raise InputError(
                f"this {model_type} backbone uses 3D multimodal rotary positions (M-RoPE, "
                f"mrope_section {scaling.get('mrope_section', [16, 24, 24])}): TransformerLens' "
                f"rotary embedding "
                f"takes 1D positions 0..n-1 only, so it cannot reproduce them by itself; load it "
                f"with positions='per_sample' and supply each sample's angles (RotaryPositions)"
            )
    elif positions == "sequential":
        cfg.update(_rope_scaling_config(scaling, text_config, model_type))
    if getattr(text_config, "use_sliding_window", False) and getattr(text_config, "sliding_window",
                                                                      None):
        raise InputError(
            f"{model_type} backbone with use_sliding_window=True (window "
            f"{text_config.sliding_window}) is not supported: its per-layer sliding-window masks "
            f"are not reproduced; set use_sliding_window=False in config.json if the prompts are "
            f"shorter than the window"
        )
    if getattr(text_config, "mlp_bias", False):
        raise InputError(f"{model_type} backbone with mlp_bias=True is not supported")
    if model_type in QK_NORM:
        cfg.update(use_qk_norm=True)
    if model_type in MOE_RENORMALISED:
        sparse_step = getattr(text_config, "decoder_sparse_step", 1)
        dense_layers = list(getattr(text_config, "mlp_only_layers", None) or [])
        if sparse_step != 1 or dense_layers:
            # TransformerLens' config has one MLP kind for every block
            raise InputError(
                f"this {model_type} backbone mixes dense and mixture-of-experts layers "
                f"(decoder_sparse_step={sparse_step}, mlp_only_layers={dense_layers}); "
                f"TransformerLens holds one MLP kind for all layers, so it is not supported")
        cfg.update(num_experts=text_config.num_experts,
                   experts_per_token=text_config.num_experts_per_tok,
                   d_mlp=text_config.moe_intermediate_size, norm_topk_prob=True)
    return cfg


def _qkv(attention: nn.Module, q_size: int, kv_size: int):
    """(weight, bias) of q, k and v: separate projections, or Phi-3's fused ``qkv_proj`` whose
    output rows are q, then k, then v."""
    if hasattr(attention, "qkv_proj"):
        fused = attention.qkv_proj
        sizes = [q_size, kv_size, kv_size]
        weights = fused.weight.split(sizes, dim=0)
        biases = fused.bias.split(sizes) if fused.bias is not None else (None,) * 3
        return list(zip(weights, biases))
    return [(p.weight, p.bias) for p in (attention.q_proj, attention.k_proj, attention.v_proj)]


def _install_hf_rotary(model: HookedTransformer, text_model: nn.Module) -> None:
    """Give every attention layer the HF rotary module's own (cos, sin) tables for positions
    0 … n_ctx−1, and forbid TransformerLens from recomputing them for longer inputs."""
    n_ctx, dtype = model.cfg.n_ctx, model.cfg.dtype
    with torch.no_grad():
        probe = torch.zeros(1, dtype=torch.float32)
        cos, sin = text_model.rotary_emb(probe, torch.arange(n_ctx)[None])
    cos, sin = cos[0].to(dtype), sin[0].to(dtype)

    def refuse(new_size: int) -> None:
        raise InputError(
            f"this backbone's rotary tables (LongRoPE short factors) cover {n_ctx} positions; "
            f"longer inputs switch HF to the long factors, which are not reproduced")

    for block in model.blocks:
        device = block.attn.W_Q.device
        block.attn.rotary_cos = cos.to(device)
        block.attn.rotary_sin = sin.to(device)
        block.attn._extend_rotary_embeddings = refuse


def _experts(mlp: nn.Module, prefix: str, cfg: HookedTransformerConfig) -> dict[str, torch.Tensor]:
    """A sparse MoE block's router and experts (fused ``gate_up_proj [E, 2·d_mlp, d_model]``,
    ``down_proj [E, d_model, d_mlp]``) as TransformerLens' ``MoE`` parameters (``nn.Linear``
    weights, ``[out, in]``)."""
    state = {f"{prefix}.W_gate.weight": mlp.gate.weight}
    for expert in range(cfg.num_experts):
        gate, up = mlp.experts.gate_up_proj[expert].chunk(2, dim=0)
        state[f"{prefix}.experts.{expert}.W_gate.weight"] = gate
        state[f"{prefix}.experts.{expert}.W_in.weight"] = up
        state[f"{prefix}.experts.{expert}.W_out.weight"] = mlp.experts.down_proj[expert]
    return state


def _state_dict_llama_like(
    text_model: nn.Module, lm_head: nn.Module | None, cfg: Any, *, zero_biases: bool = True
) -> dict[str, torch.Tensor]:
    """Map a Llama-layout decoder's weights onto HookedTransformer parameter names (views of the
    HF weights where the layout allows). ``cfg``: a HookedTransformer-like config (the hooked
    backend's, or the bridge's ``cfg``). ``zero_biases=False`` leaves out the biases HF does not
    have instead of filling them with zeros (HookedTransformer needs them, a reader does not)."""
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    gqa = "_" if cfg.n_key_value_heads is not None else ""
    state: dict[str, torch.Tensor] = {"embed.W_E": text_model.embed_tokens.weight}
    for layer_index, layer in enumerate(text_model.layers):
        prefix = f"blocks.{layer_index}"
        attention = layer.self_attn
        state[f"{prefix}.ln1.w"] = layer.input_layernorm.weight
        state[f"{prefix}.ln2.w"] = layer.post_attention_layernorm.weight
        if getattr(cfg, "use_normalization_before_and_after", False):  # GLM-4's sandwich norms
            state[f"{prefix}.ln1_post.w"] = layer.post_self_attn_layernorm.weight
            state[f"{prefix}.ln2_post.w"] = layer.post_mlp_layernorm.weight
        for name, (weight, bias), heads, underscore in zip(
            "QKV", _qkv(attention, cfg.n_heads * cfg.d_head, n_kv * cfg.d_head),
            (cfg.n_heads, n_kv, n_kv), ("", gqa, gqa)):
            state[f"{prefix}.attn.{underscore}W_{name}"] = einops.rearrange(
                weight, "(n h) m -> n m h", n=heads)
            if bias is not None or zero_biases:
                state[f"{prefix}.attn.{underscore}b_{name}"] = (
                    torch.zeros(heads, cfg.d_head, dtype=weight.dtype)
                    if bias is None else einops.rearrange(bias, "(n h) -> n h", n=heads))
        if getattr(cfg, "use_qk_norm", False):
            state[f"{prefix}.attn.q_norm.w"] = attention.q_norm.weight
            state[f"{prefix}.attn.k_norm.w"] = attention.k_norm.weight
        state[f"{prefix}.attn.W_O"] = einops.rearrange(
            attention.o_proj.weight, "m (n h) -> n h m", n=cfg.n_heads)
        o_bias = attention.o_proj.bias
        if o_bias is not None or zero_biases:
            state[f"{prefix}.attn.b_O"] = (
                torch.zeros(cfg.d_model, dtype=attention.o_proj.weight.dtype)
                if o_bias is None else o_bias)
        mlp = layer.mlp
        if getattr(cfg, "num_experts", None):
            state.update(_experts(mlp, f"{prefix}.mlp", cfg))
            continue
        if hasattr(mlp, "gate_up_proj"):  # Phi-3: gate, up = gate_up_proj(x).chunk(2)
            gate, up = mlp.gate_up_proj.weight.chunk(2, dim=0)
        else:
            gate, up = mlp.gate_proj.weight, mlp.up_proj.weight
        state[f"{prefix}.mlp.W_in"] = up.T
        state[f"{prefix}.mlp.W_gate"] = gate.T
        if zero_biases:
            state[f"{prefix}.mlp.b_in"] = torch.zeros(cfg.d_mlp, dtype=up.dtype)
        state[f"{prefix}.mlp.W_out"] = mlp.down_proj.weight.T
        if zero_biases:
            state[f"{prefix}.mlp.b_out"] = torch.zeros(cfg.d_model,
                                                       dtype=mlp.down_proj.weight.dtype)
    state["ln_final.w"] = text_model.norm.weight
    unembed = lm_head.weight if lm_head is not None else text_model.embed_tokens.weight
    state["unembed.W_U"] = unembed.T
    if zero_biases:
        state["unembed.b_U"] = torch.zeros(cfg.d_vocab, dtype=unembed.dtype)
    return state


def hooked_from_hf(
    text_model: nn.Module,
    lm_head: nn.Module | None,
    text_config: Any,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    n_devices: int = 1,
    n_ctx: int | None = None,
    positions: str = "sequential",
) -> HookedTransformer:
    """Convert a Hugging Face text decoder (``LlamaModel`` & co.) plus its LM head to a
    ``HookedTransformer`` with unprocessed weights.

    ``lm_head=None`` ties the unembedding to the input embedding (``tie_word_embeddings``).
    ``n_devices > 1`` splits the blocks across that many GPUs (TransformerLens' own scheme).
    ``positions="per_sample"``: see :func:`hooked_config_from_hf` and :class:`RotaryPositions`.
    """
    from transformer_lens import HookedTransformer

    cfg = hooked_config_from_hf(text_config, dtype=dtype, device=device, n_devices=n_devices,
                                n_ctx=n_ctx, positions=positions)
    state = {name: tensor.detach().to(dtype) for name, tensor in
             _state_dict_llama_like(text_model, lm_head, cfg).items()}
    model = HookedTransformer(cfg, move_to_device=False)
    model.load_and_process_state_dict(
        state, fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False, refactor_factored_attn_matrices=False,
    )
    if cfg.num_experts:  # TL builds the MoE router and experts as fp32 nn.Linear whatever dtype
        for block in model.blocks:
            block.mlp.to(dtype)
    if n_devices > 1:
        model.move_model_modules_to_device()
    else:
        model.to(device, print_details=False)
    if getattr(text_config, "model_type", None) == "phi3" \
            and _rope_type(text_config) in ("longrope", "su"):
        _install_hf_rotary(model, text_model)
    return model.eval()


def backbone_from_hf(
    text_model: nn.Module,
    lm_head: nn.Module | None,
    text_config: Any,
    *,
    backend: str | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    n_devices: int = 1,
    n_ctx: int | None = None,
    positions: str = "sequential",
) -> Any:
    """The language backbone of a VideoLLM on the chosen TransformerLens backend (module
    :mod:`~mapflow_tl.models.backends`): ``"hooked"`` — :func:`hooked_from_hf`, a
    ``HookedTransformer`` with the HF weights converted (TransformerLens 3.9); ``"bridge"`` —
    :func:`~mapflow_tl.models.bridge.bridge_from_hf`, a ``TransformerBridge`` around the HF
    decoder itself (TransformerLens 4). Both are built from the same
    :func:`backbone_config_fields`, so both refuse what neither reproduces exactly, and both
    expose HookedTransformer's hook names and ``cfg`` fields. ``backend=None``: the installed
    TransformerLens decides.

    On the bridge the HF decoder modules become the backbone's: the caller must keep them (the
    hooked backend copies the weights, so its caller may drop the HF decoder)."""
    backend = resolve_backend(backend)
    if backend == "hooked":
        return hooked_from_hf(text_model, lm_head, text_config, dtype=dtype, device=device,
                              n_devices=n_devices, n_ctx=n_ctx, positions=positions)
    fields = backbone_config_fields(text_config, dtype=dtype, device=device,
                                    n_devices=n_devices, n_ctx=n_ctx, positions=positions)
    return bridge_from_hf(text_model, lm_head, text_config, fields, dtype=dtype, device=device,
                          n_devices=n_devices)


def keeps_hf_decoder(backbone: Any) -> bool:
    """Whether the backbone runs the HF decoder modules themselves (the bridge): then a caller
    must not drop them after building it, as it may after a hooked conversion."""
    return is_bridge(backbone)


def _check_embeds(model: HookedTransformer, embeds: torch.Tensor) -> None:
    if embeds.dim() != 3 or embeds.shape[-1] != model.cfg.d_model:
        raise InputError(
            f"embeds must be [batch, pos, {model.cfg.d_model}], got {tuple(embeds.shape)}"
        )


def _forward_from_embeds(
    model: HookedTransformer,
    embeds: Float[torch.Tensor, "batch pos d_model"],
    *,
    return_type: str | None,
    stop_at_layer: int | None,
) -> Any:
    """The one forward every embeddings path shares. The embeddings pass ``hook_embed`` first, so
    hooks and caches see them where TransformerLens puts token embeddings (``cache["embed"]``, the
    "embed" term of ``cache.decompose_resid``) and a hook there can patch them; they then enter
    block 0 as the residual stream (``start_at_layer=0``): rotary models add no positional
    embedding. The residual stream starts as a copy: a hook that writes in place (at
    ``hook_embed`` or ``blocks.0.hook_resid_pre``) must not change the caller's prepared
    embeddings, which TransformerLens users expect since token embeddings are always fresh."""
    residual = model.hook_embed(embeds.to(model.cfg.device, model.cfg.dtype, copy=True))
    if is_bridge(model):
        # a float input is HF's inputs_embeds: the embedding layer is skipped, the residual
        # stream enters block 0 (the bridge's start_at_layer=0 would run the same forward)
        return model(residual, stop_at_layer=stop_at_layer, return_type=return_type)
    return model(residual, start_at_layer=0, stop_at_layer=stop_at_layer,
                 return_type=return_type)


def run_from_embeds(
    model: HookedTransformer,
    embeds: Float[torch.Tensor, "batch pos d_model"],
    *,
    fwd_hooks: HookList | Sequence = (),
    return_type: str | None = "logits",
    stop_at_layer: int | None = None,
    grad: bool | None = None,
) -> Float[torch.Tensor, "batch pos d_vocab"]:
    """Run the backbone on input embeddings (text and injected video tokens) with hooks.

    The embeddings pass ``hook_embed`` and enter block 0 as the residual stream
    (``start_at_layer=0``). ``fwd_hooks`` are ``(name or name filter, fn)`` pairs as in
    TransformerLens; they are validated first (a layer beyond the model's depth, or a filter that
    matches no hook point, is a ``ValueError``) and removed when the forward ends, exceptions
    included. Gradients follow the caller, as in TransformerLens: they flow unless the caller
    turned them off (``torch.no_grad()``, ``torch.inference_mode()``); ``grad=True`` / ``False``
    overrides that for this forward.
    """
    _check_embeds(model, embeds)
    hooks = list(fwd_hooks)
    check_hooks(model, hooks)
    with _grad_mode(grad), model.hooks(fwd_hooks=hooks):
        return _forward_from_embeds(model, embeds, return_type=return_type,
                                    stop_at_layer=stop_at_layer)


@torch.no_grad()
def generate_from_embeds(
    model: HookedTransformer,
    embeds: Float[torch.Tensor, "1 pos d_model"],
    *,
    max_new_tokens: int,
    stop_ids: Iterable[int] = (),
    fwd_hooks: HookList | Sequence = (),
    use_cache: bool = True,
    on_append: Callable[[torch.Tensor], None] | None = None,
) -> tuple[list[int], Float[torch.Tensor, "new d_vocab"]]:
    """Greedy decoding from input embeddings: ``(token ids, logits of each step)``.

    Step i appends the argmax of the last position's logits (the official open-ended script's
    ``generate(do_sample=False, num_beams=1)``), embedded with the backbone's own token
    embedding; decoding stops after ``max_new_tokens`` tokens or after a token in ``stop_ids``
    (kept, as HF keeps the end-of-sequence token), or where the sequence fills the backbone's
    context (``cfg.n_ctx``). ``fwd_hooks`` stay on for every step; under
    the key/value cache a step's attention scores are ``[batch, head, new, all keys]``, so a
    hook that reads positions from their shape acts the same with and without the cache.

    ``use_cache=True`` (default) feeds only the new token after the first forward, reading the
    earlier keys and values from a key/value cache; ``False`` reruns the whole sequence every
    step (the reference the cache is checked against). This is the one function that touches
    TransformerLens' key/value cache for generation: a backend without it changes this body
    only.

    ``on_append(sequence)`` is called with the whole sequence ``[1, pos + i, d_model]`` after
    each appended token, before the forward that reads it: where positions are bound to the
    embeddings (per-sample M-RoPE, :class:`RotaryPositions`) the caller registers the longer
    sequence's positions there; with the cache only the new token is fed, and the positions'
    binding finds the registered continuation of the sample that filled the cache.
    """
    _check_embeds(model, embeds)
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    hooks = list(fwd_hooks)
    check_hooks(model, hooks)
    # the backbone reproduces HF up to its context (n_ctx: max_position_embeddings, capped at
    # an active sliding window): the answer ends there
    room = model.cfg.n_ctx - embeds.shape[1]
    if room < 1:
        raise InputError(f"the prompt has {embeds.shape[1]} positions, the backbone's whole "
                         f"context ({model.cfg.n_ctx}): no room for an answer")
    max_new_tokens = min(max_new_tokens, room)
    stop = {int(i) for i in stop_ids}
    sequence = embeds.to(model.cfg.device, model.cfg.dtype)
    cache = None
    bridge = is_bridge(model)
    # TransformerLens 4's bridge has no TransformerLens key/value cache: there every step
    # recomputes the whole sequence (use_cache=False: the same tokens, the reference path)
    if use_cache and not bridge:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, 1)
    tokens: list[int] = []
    step_logits: list[torch.Tensor] = []
    step_input = sequence
    with model.hooks(fwd_hooks=hooks):
        for _ in range(max_new_tokens):
            residual = model.hook_embed(step_input.clone())
            if cache is None and bridge:
                logits = model(residual, return_type="logits")  # inputs_embeds
            elif cache is None:
                logits = model(residual, start_at_layer=0, return_type="logits")
            else:
                logits = model(residual, start_at_layer=0, return_type="logits",
                               past_kv_cache=cache)
            last = logits[0, -1]
            token = int(last.argmax())
            tokens.append(token)
            step_logits.append(last)
            if token in stop:
                break
            new = model.embed(torch.tensor([[token]], device=model.cfg.device)).to(
                model.cfg.dtype)
            if cache is None or on_append is not None:
                sequence = torch.cat([sequence, new], dim=1)
            if on_append is not None:
                on_append(sequence)
            step_input = sequence if cache is None else new
    return tokens, torch.stack(step_logits)


def _grad_mode(grad: bool | None) -> Any:
    """The caller's gradient mode (``None``) or the one asked for."""
    return contextlib.nullcontext() if grad is None else torch.set_grad_enabled(grad)


def _no_op(activation: torch.Tensor, hook: Any) -> None:
    return None


def cache_from_embeds(
    model: HookedTransformer,
    embeds: Float[torch.Tensor, "batch pos d_model"],
    *,
    names_filter: str | Sequence[str] | Callable[[str], bool] | None = None,
    fwd_hooks: HookList | Sequence = (),
    return_type: str | None = "logits",
    stop_at_layer: int | None = None,
    device: str | torch.device | None = None,
    remove_batch_dim: bool = False,
    grad: bool | None = None,
) -> tuple[Any, ActivationCache]:
    """:func:`run_from_embeds` that also caches activations: ``(output, ActivationCache)``, as
    ``HookedTransformer.run_with_cache`` returns for token ids.

    ``names_filter`` picks the hook points cached (a name, a list of names or a function
    ``name -> bool``; None caches all); a name the model lacks, or a filter that matches nothing,
    is a ``ValueError``. ``fwd_hooks`` run before the caching hooks, so the cache holds the
    activations as the hooks left them (TransformerLens' order for ``run_with_cache`` inside
    ``hooks()``). The cache has ``hook_embed`` (the input embeddings), so
    ``cache.decompose_resid()`` sums to the final residual stream. Gradients as in
    :func:`run_from_embeds`.
    """
    _check_embeds(model, embeds)
    hooks = list(fwd_hooks)
    check_hooks(model, hooks)
    if names_filter is not None:
        if not (isinstance(names_filter, (str, Iterable)) or callable(names_filter)):
            raise InputError(f"names_filter must be a hook name, a list of hook names or a "
                             f"function name -> bool, got {names_filter!r}")
        names = [names_filter] if isinstance(names_filter, str) or callable(names_filter) \
            else list(names_filter)
        if not names:
            # TransformerLens caches nothing for an empty list, without a word
            raise InputError("names_filter is an empty list, which caches nothing; pass the hook "
                             "names to cache (e.g. ['blocks.0.hook_resid_post']), or "
                             "names_filter=None for every activation")
        check_hooks(model, [(name, _no_op) for name in names])
        if not (isinstance(names_filter, str) or callable(names_filter)):
            names_filter = names  # a generator would reach TransformerLens already consumed
    cache, caching_hooks, _ = model.get_caching_hooks(
        names_filter=names_filter, incl_bwd=False, device=device,
        remove_batch_dim=remove_batch_dim)
    with _grad_mode(grad), model.hooks(fwd_hooks=hooks + caching_hooks):
        output = _forward_from_embeds(model, embeds, return_type=return_type,
                                      stop_at_layer=stop_at_layer)
    if is_bridge(model):
        cache = _under_hooked_names(model, cache, names_filter)
    return output, BackboneCache(cache, model, has_batch_dim=not remove_batch_dim)


def _under_hooked_names(model: Any, cache: dict[str, torch.Tensor],
                        names_filter: Any) -> dict[str, torch.Tensor]:
    """A bridge's cache keyed as a HookedTransformer's: the bridge stores each activation under
    its hook point's canonical name (``blocks.0.hook_in``); here every hook-point name the filter
    accepts — the HookedTransformer aliases (``blocks.0.hook_resid_pre``) included — holds it,
    so ``cache["resid_pre", 0]``, ``accumulated_resid`` and ``decompose_resid`` work as on the
    hooked backend."""
    if names_filter is None:
        accepts = None
    elif callable(names_filter):
        accepts = names_filter
    else:
        wanted = {names_filter} if isinstance(names_filter, str) else set(names_filter)
        accepts = wanted.__contains__
    keyed = {}
    for name, point in model.hook_dict.items():
        if (accepts is None or accepts(name)) and point.name in cache:
            keyed[name] = cache[point.name]
    return keyed


class BackboneCache(ActivationCache):
    """TransformerLens' ``ActivationCache``, exact on unprocessed weights.

    mapflow-tl keeps the Hugging Face weights as they are (hooks see what HF computes), so the
    final norm's weight is not folded into ``W_U`` as ``HookedTransformer.from_pretrained(...,
    fold_ln=True)`` would fold it. TransformerLens' ``apply_ln_to_stack`` only divides by the
    cached scale, assuming the weight was folded: ``logit_attrs`` then fell short of the logit
    (10.39 for 12.47 on SynthTV) and ``accumulated_resid(apply_ln=True) @ W_U`` was not the
    logit lens. Here the final norm's weight is applied after the scale, which is what folding
    it would compute: attributions sum to the logit (less ``b_U``, which TransformerLens leaves
    out too), and ``accumulated_resid(apply_ln=True)[-1] @ W_U`` is the model's own logits.
    Intermediate layers' norms are left as TransformerLens applies them (their weights go into
    ``W_Q/W_K/W_V`` or ``W_in`` only when folded; the cache's inputs to those are exact)."""

    def apply_ln_to_stack(self, residual_stack, layer=None, mlp_input=False, pos_slice=None,
                          batch_slice=None, has_batch_dim=True, recompute_ln=False):
        scaled = super().apply_ln_to_stack(residual_stack, layer, mlp_input, pos_slice,
                                           batch_slice, has_batch_dim, recompute_ln)
        final = layer is None or layer == -1 or layer == self.model.cfg.n_layers
        final_norm = getattr(self.model, "ln_final", None)
        weight = getattr(final_norm, "w", None)
        if weight is None and is_bridge(self.model):  # the bridge's norm wraps HF's RMSNorm
            weight = getattr(final_norm, "weight", None)
        if recompute_ln or not final or weight is None:
            return scaled  # recompute_ln runs ln_final itself, weight included
        return scaled * weight


class RotaryPositions:
    """Per-sample rotary angles for a backbone whose positions are not 0 … n−1 (Qwen2-VL's 3D
    multimodal rotary positions, M-RoPE).

    TransformerLens rotates q and k as ``x·cos[p] + rotate_half(x)·sin[p]`` with tables indexed by
    the sequence position p; HF's M-RoPE rotates by the same formula with tables computed from
    each token's (t, h, w) position. Installing the HF tables of a sample as the tables of every
    attention layer makes the backbone compute exactly what HF computes, including suffix forwards
    from a key/value cache (they index the same tables from the cache offset).

    The tables belong to one sample, so they are bound by the input: :meth:`register` records a
    prepared sample's embeddings (a fingerprint: the per-position sums) with its tables, and
    forward pre-hooks on the blocks install the matching tables whenever a forward enters block 0.
    Embeddings this object has not seen raise ``ValueError`` (never a forward with wrong
    positions); token ids get the text-only positions 0 … n−1 on all three axes. The sweep
    engine's forwards work too: a suffix of the embeddings after a key/value cache must match the
    installed sample (whose forward filled the cache) over those positions, and a forward that
    starts mid-stack (``start_at_layer > 0``) reuses the installed tables and must fit in them.
    Generation from a key/value cache feeds one new token at a time: its suffix may continue the
    installed sample into a longer registered sequence (the adapter's ``bind_appended``
    registers each step's), whose tables are then installed.

    ``rotary`` maps position ids ``[3, 1, n]`` to the HF ``(cos, sin)`` tables ``[1, n, d_head]``
    (the HF text model's own ``rotary_emb``).

    **Residual additions** (Qwen3-VL's DeepStack: visual features from intermediate vision layers
    added to the hidden states at the visual positions after the first decoder layers) are
    per-sample state of the same kind: ``register(..., additions={layer: (positions, values)})``
    binds them to the sample with its tables, and a forward pre-hook on each
    ``blocks.{layer}.hook_resid_post`` adds them to the block's output *before* any user hook on
    that point runs — so ``run_with_hooks``, ``run_with_cache`` (``resid_post`` holds what HF's
    layer output holds), knockouts, mid-stack starts and key/value-cache suffixes (only the
    positions the suffix covers) all see them. :meth:`installed_additions` gives the lean suffix
    forward of the sweep engine what the last forward from block 0 installed.
    """

    def __init__(self, model: HookedTransformer, rotary: Any, *, capacity: int = 64) -> None:
        self.model, self.rotary, self.capacity = model, rotary, capacity
        self._samples: dict[tuple, tuple] = {}
        self._installed: tuple | None = None
        self._next_block: int | None = None
        self._tokens = False
        #: per block, the key/value-cache offset of the forward now running through it
        self._offsets: dict[int, int] = {}
        self.handles = [model.embed.register_forward_pre_hook(self._before_embed),
                        model.register_forward_pre_hook(self._before_forward)]
        self.handles += [block.register_forward_pre_hook(self._before_block(index),
                                                         with_kwargs=True)
                         for index, block in enumerate(model.blocks)]
        self.handles += [block.hook_resid_post.register_forward_pre_hook(self._add_residual(index))
                         for index, block in enumerate(model.blocks)]
        # the lean suffix forward (mapflow_tl.suffix_forward.residual_additions) reads them here
        model.mapflow_residual_additions = self.installed_additions

    @staticmethod
    def _fingerprint(embeds: torch.Tensor) -> torch.Tensor:
        return embeds.detach().to(torch.float64).sum(-1).cpu()

    @torch.no_grad()
    def tables(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HF rotary tables ``[n, d_head]`` (cos, sin) of position ids ``[3, 1, n]``."""
        device = self.model.cfg.device
        probe = torch.zeros(1, dtype=self.model.cfg.dtype, device=device)
        cos, sin = self.rotary(probe, position_ids.to(device))
        return cos[0].to(self.model.cfg.dtype), sin[0].to(self.model.cfg.dtype)

    def register(self, embeds: Float[torch.Tensor, "1 pos d_model"],
                 position_ids: torch.Tensor,
                 additions: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        """Bind a prepared sample's embeddings to its position ids ``[3, 1, pos]`` and, where
        the model adds features to the residual stream after some blocks, to those additions:
        ``{layer: (positions [k], values [k, d_model])}`` (class docstring)."""
        if position_ids.dim() != 3 or position_ids.shape[0] != 3 \
                or position_ids.shape[-1] != embeds.shape[1]:
            raise InputError(f"position ids must be [3, 1, {embeds.shape[1]}], got "
                             f"{tuple(position_ids.shape)}")
        checked = {}
        for layer, (positions, values) in (additions or {}).items():
            if not 0 <= layer < self.model.cfg.n_layers or positions.dim() != 1 \
                    or tuple(values.shape) != (positions.shape[0], self.model.cfg.d_model):
                raise InputError(f"residual addition of layer {layer}: positions [k] and values "
                                 f"[k, {self.model.cfg.d_model}] in layers 0…"
                                 f"{self.model.cfg.n_layers - 1}, got {tuple(positions.shape)} "
                                 f"and {tuple(values.shape)}")
            device = self.model.blocks[layer].attn.W_Q.device
            checked[layer] = (positions.to(device, torch.long),
                              values.detach().to(device, self.model.cfg.dtype))
        fingerprint = self._fingerprint(embeds[0])
        key = (int(embeds.shape[1]), float(fingerprint.sum()))
        self._samples.pop(key, None)
        self._samples[key] = (fingerprint, *self.tables(position_ids), checked)
        while len(self._samples) > self.capacity:
            self._samples.pop(next(iter(self._samples)))

    def _entry(self, embeds: torch.Tensor) -> tuple:
        """The registered entry of these embeddings ``[1, pos, d_model]`` (``ValueError`` if
        none)."""
        fingerprint = self._fingerprint(embeds[0])
        entry = self._samples.get((int(fingerprint.shape[0]), float(fingerprint.sum())))
        if entry is None or not torch.equal(entry[0], fingerprint):
            raise self._unknown()
        return entry

    def additions_of(self, embeds: Float[torch.Tensor, "1 pos d_model"]
                     ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """The residual additions registered with these embeddings: ``{layer: (positions,
        values)}`` (a sample that continues them — an appended answer — keeps them)."""
        return self._entry(embeds)[-1]

    def forget(self, embeds: Float[torch.Tensor, "1 pos d_model"]) -> None:
        """Drop the registration of these embeddings (nothing if they have none): generation
        registers every step's sequence and forgets the one before, so the prepared samples
        stay within :attr:`capacity`."""
        fingerprint = self._fingerprint(embeds[0])
        key = (int(fingerprint.shape[0]), float(fingerprint.sum()))
        entry = self._samples.get(key)
        if entry is not None and torch.equal(entry[0], fingerprint):
            del self._samples[key]

    def installed_additions(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """The residual additions of the sample whose forward last entered block 0 (none for
        token ids): ``{layer: (positions, values)}``."""
        return {} if self._installed is None else self._installed[3]

    def _install(self, cos: torch.Tensor, sin: torch.Tensor,
                 fingerprint: torch.Tensor | None = None,
                 additions: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        if self._installed is None or self._installed[0] is not cos:
            for block in self.model.blocks:
                device = block.attn.W_Q.device
                block.attn.rotary_cos = cos.to(device)
                block.attn.rotary_sin = sin.to(device)
        self._installed = (cos, sin, fingerprint, additions or {})

    def _add_residual(self, index: int):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            addition = self.installed_additions().get(index)
            if addition is None:
                return None
            residual = args[0]
            positions, values = addition
            offset = self._offsets.get(index, 0)
            inside = (positions >= offset) & (positions < offset + residual.shape[1])
            if not bool(inside.any()):
                return None
            at = positions[inside] - offset
            # out of place: the block's input may be a caller's tensor (a resumed forward)
            residual = residual.clone()
            residual[:, at] = residual[:, at] + values[inside].to(residual.dtype)
            return (residual,)
        return hook

    def _unknown(self) -> ValueError:
        return ValueError(
            "this backbone uses per-sample 3D rotary positions (M-RoPE), and these embeddings "
            "were not produced by vlm.prepare() of this model (or were changed since): their "
            "positions are unknown. Run the embeddings prepare() returned, or register modified "
            "ones with vlm.adapter.rotary.register(embeds, x.meta['position_ids'])")

    def _lookup(self, embeds: torch.Tensor, offset: int) -> None:
        """Install the tables of the sample these embeddings (rows of a batch) belong to. With a
        key/value cache offset the embeddings are a suffix: only the installed sample (the one
        whose forward filled the cache) can be checked, by its fingerprint over the suffix."""
        fingerprints = [self._fingerprint(row) for row in embeds]
        if offset:
            installed = self._installed
            stop = offset + embeds.shape[1]
            if installed is None or installed[2] is None:
                raise self._unknown()
            if installed[2].shape[0] >= stop and \
                    all(torch.equal(installed[2][offset:stop], f) for f in fingerprints):
                return
            # generation: the suffix continues the installed sample (whose forward filled the
            # cache) into a longer sequence registered with its own positions (on_append)
            for entry in reversed(self._samples.values()):
                if entry[0].shape[0] == stop \
                        and torch.equal(entry[0][:offset], installed[2][:offset]) \
                        and all(torch.equal(entry[0][offset:], f) for f in fingerprints):
                    self._install(entry[1], entry[2], entry[0], entry[3])
                    return
            raise self._unknown()
        entries = []
        for fingerprint in fingerprints:
            entry = self._samples.get((int(fingerprint.shape[0]), float(fingerprint.sum())))
            if entry is None or not torch.equal(entry[0], fingerprint):
                raise self._unknown()
            entries.append(entry)
        if any(entry[1] is not entries[0][1] for entry in entries):
            raise InputError("a batch mixes samples with different 3D rotary positions; run "
                             "them one at a time")
        fingerprint, cos, sin, additions = entries[0]
        self._install(cos, sin, fingerprint, additions)

    def _before_embed(self, module: nn.Module, args: tuple) -> None:
        self._tokens = True  # token ids: the next block-0 input is their text-only embedding

    def _before_forward(self, module: nn.Module, args: tuple) -> None:
        # A forward given embeddings (a residual stream) is not a token-id forward, even when
        # the token embedding ran just before it outside a forward (generation and extend embed
        # the appended tokens with it)
        if args and torch.is_tensor(args[0]) and args[0].is_floating_point():
            self._tokens = False

    def _before_block(self, index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            residual = args[0] if args else kwargs["resid_pre"]
            cache = kwargs.get("past_kv_cache_entry")
            offset = cache.past_keys.shape[1] if cache is not None else 0
            needed = offset + int(residual.shape[1])
            self._offsets[index] = offset
            continuing = index == self._next_block
            self._next_block = index + 1
            if index == 0 and self._tokens:
                self._tokens = False
                positions = torch.arange(needed).view(1, 1, -1).expand(3, 1, -1)
                self._install(*self.tables(positions))
            elif index == 0:
                self._lookup(residual, offset)
            elif not continuing and (self._installed is None
                                     or self._installed[0].shape[0] < needed):
                raise InputError(
                    f"a forward starting at layer {index} needs the 3D rotary positions of "
                    f"{needed} positions, but no forward from this sample's embeddings ran "
                    f"first; run the full forward from vlm.prepare()'s embeddings first")
        return hook


class BridgePositions:
    """:class:`RotaryPositions` for a TransformerLens 4 bridge (backend ``"bridge"``): the same
    binding of a prepared sample's embeddings to its 3D position ids and residual additions,
    delivered the way the bridge runs — HF's own decoder computes the rotary tables from
    ``position_ids``, so a forward pre-hook on the HF causal LM looks the embeddings up and passes
    their position ids (never a forward with positions it does not know: unknown embeddings are
    the same ``ValueError``); the additions (Qwen3-VL's DeepStack) enter as forward pre-hooks on
    ``blocks.{layer}.hook_resid_post``, before any user hook there, as on the hooked backend.

    The lean suffix forward of the sweep engine reads the tables and additions of the sample
    :meth:`prepare` (or the last forward) installed: ``rotary_tables`` / ``residual_additions``
    of :mod:`mapflow_tl.suffix_forward`."""

    def __init__(self, model: Any, rotary: Any, *, capacity: int = 64) -> None:
        self.model, self.rotary, self.capacity = model, rotary, capacity
        self._samples: dict[tuple, tuple] = {}
        self._installed: tuple | None = None
        shell = model.original_model
        self.handles = [shell.register_forward_pre_hook(self._before_forward, with_kwargs=True)]
        self.handles += [
            model.hook_dict[f"blocks.{index}.hook_resid_post"].register_forward_pre_hook(
                self._add_residual(index)) for index in range(model.cfg.n_layers)]
        object.__setattr__(model, "mapflow_rotary_tables", self)
        object.__setattr__(model, "mapflow_residual_additions", self.installed_additions)

    tables = RotaryPositions.tables
    _fingerprint = staticmethod(RotaryPositions._fingerprint)
    _unknown = RotaryPositions._unknown
    _entry = RotaryPositions._entry
    additions_of = RotaryPositions.additions_of
    forget = RotaryPositions.forget

    def _device(self) -> torch.device:
        return next(self.model.original_model.parameters()).device

    def register(self, embeds: Float[torch.Tensor, "1 pos d_model"],
                 position_ids: torch.Tensor,
                 additions: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        """As :meth:`RotaryPositions.register`."""
        if position_ids.dim() != 3 or position_ids.shape[0] != 3 \
                or position_ids.shape[-1] != embeds.shape[1]:
            raise InputError(f"position ids must be [3, 1, {embeds.shape[1]}], got "
                             f"{tuple(position_ids.shape)}")
        cfg, device = self.model.cfg, self._device()
        checked = {}
        for layer, (positions, values) in (additions or {}).items():
            if not 0 <= layer < cfg.n_layers or positions.dim() != 1 \
                    or tuple(values.shape) != (positions.shape[0], cfg.d_model):
                raise InputError(f"residual addition of layer {layer}: positions [k] and values "
                                 f"[k, {cfg.d_model}] in layers 0…{cfg.n_layers - 1}, got "
                                 f"{tuple(positions.shape)} and {tuple(values.shape)}")
            checked[layer] = (positions.to(device, torch.long),
                              values.detach().to(device, cfg.dtype))
        fingerprint = self._fingerprint(embeds[0])
        key = (int(embeds.shape[1]), float(fingerprint.sum()))
        self._samples.pop(key, None)
        self._samples[key] = (fingerprint, position_ids.to(device), checked)
        while len(self._samples) > self.capacity:
            self._samples.pop(next(iter(self._samples)))

    def installed_additions(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        return {} if self._installed is None else self._installed[3]

    def prepare(self, embeds: torch.Tensor) -> torch.Tensor:
        """Install the sample these embeddings ``[batch, pos, d_model]`` belong to (every row
        the same sample); returns its position ids ``[3, batch, pos]``."""
        entries = []
        for row in embeds:
            fingerprint = self._fingerprint(row)
            entry = self._samples.get((int(fingerprint.shape[0]), float(fingerprint.sum())))
            if entry is None or not torch.equal(entry[0], fingerprint):
                raise self._unknown()
            entries.append(entry)
        if any(entry[1] is not entries[0][1] for entry in entries):
            raise InputError("a batch mixes samples with different 3D rotary positions; run "
                             "them one at a time")
        entry = entries[0]
        fingerprint, position_ids, additions = entry
        if self._installed is None or self._installed[5] is not entry:
            cos, sin = self.tables(position_ids)
            self._installed = (cos, sin, fingerprint, additions, position_ids, entry)
        return position_ids.expand(3, embeds.shape[0], -1)

    def __call__(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """Each layer's (cos, sin) of the installed sample (the lean suffix forward's tables)."""
        if self._installed is None:
            raise self._unknown()
        return ((self._installed[0], self._installed[1]),) * self.model.cfg.n_layers

    def _before_forward(self, module: nn.Module, args: tuple, kwargs: dict):
        embeds = kwargs.get("inputs_embeds")
        if embeds is None or "position_ids" in kwargs and kwargs["position_ids"] is not None:
            self._installed = None  # token ids: HF's text-only positions, no additions
            return None
        if getattr(self.model.blocks[0], "_start_at_layer_idx", None):
            # a forward resumed mid-stack (start_at_layer > 0) carries a residual stream, not
            # embeddings: it continues the installed sample, whose forward must have run first
            installed = self._installed
            if installed is None or installed[4].shape[-1] != embeds.shape[1]:
                raise InputError(
                    f"a forward starting mid-stack needs the 3D rotary positions of "
                    f"{embeds.shape[1]} positions, but no forward from this sample's embeddings "
                    f"ran first; run the full forward from vlm.prepare()'s embeddings first")
            kwargs["position_ids"] = installed[4].expand(3, embeds.shape[0], -1)
            return args, kwargs
        kwargs["position_ids"] = self.prepare(embeds)
        return args, kwargs

    def _add_residual(self, index: int):
        def hook(module: nn.Module, args: tuple) -> tuple | None:
            addition = self.installed_additions().get(index)
            if addition is None:
                return None
            positions, values = addition
            residual = args[0].clone()  # out of place: the caller's tensor stays as it was
            residual[:, positions] = residual[:, positions] + values.to(residual.dtype)
            return (residual,)
        return hook


def rotary_positions(backbone: Any, rotary: Any) -> RotaryPositions | BridgePositions:
    """The per-sample 3D rotary positions (M-RoPE) of a backbone on either backend:
    :class:`RotaryPositions` (hooked) or :class:`BridgePositions` (bridge). ``rotary``: the HF
    text model's ``rotary_emb``."""
    return (BridgePositions if is_bridge(backbone) else RotaryPositions)(backbone, rotary)
