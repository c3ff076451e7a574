"""The language backbone as a TransformerLens ``HookedTransformer``.

A VideoLLM's text model (Llama / Vicuna / Mistral / Qwen2 decoder) is converted weight by weight to
a ``HookedTransformer`` *without* any weight processing that changes intermediate activations: no
LayerNorm folding, no centring, no value-bias folding. Hooks therefore see exactly what the Hugging
Face model computes, and the video tokens are injected as embeddings
(:func:`run_from_embeds`) rather than token ids.
"""

from __future__ import annotations

from typing import Any, Sequence

import einops
import torch
from jaxtyping import Float
from torch import nn
from transformer_lens import HookedTransformer, HookedTransformerConfig

from ..hooks import HookList, check_hooks

__all__ = ["LLAMA_LIKE", "hooked_config_from_hf", "hooked_from_hf", "run_from_embeds"]

# HF text model_types that share the Llama decoder layout (q/k/v/o projections, optional q/k/v
# biases, gated SiLU MLP, RMSNorm, rotary positions). Each maps to the TL architecture name.
LLAMA_LIKE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}


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


def hooked_config_from_hf(
    text_config: Any,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    n_devices: int = 1,
    n_ctx: int | None = None,
) -> HookedTransformerConfig:
    """A ``HookedTransformerConfig`` that reproduces a Hugging Face text-decoder config.

    Handles grouped-query attention, q/k/v biases (Qwen2), ``rope_theta``, Llama-3 rope scaling,
    the RMSNorm epsilon and the head dimension. Rope scalings TransformerLens cannot reproduce
    raise ``ValueError`` rather than load with wrong positions.
    """
    model_type = getattr(text_config, "model_type", None)
    if model_type not in LLAMA_LIKE:
        raise ValueError(
            f"text backbone model_type {model_type!r} is not supported; supported: "
            f"{sorted(LLAMA_LIKE)}"
        )
    n_heads = text_config.num_attention_heads
    d_head = getattr(text_config, "head_dim", None) or text_config.hidden_size // n_heads
    n_kv = getattr(text_config, "num_key_value_heads", None) or n_heads
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
        rotary_dim=d_head,
        rotary_base=_rope_theta(text_config),
        rotary_adjacent_pairs=False,
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
    rope_type = (scaling.get("rope_type") or scaling.get("type") or "default").lower()
    if rope_type == "llama3":
        cfg.update(
            use_NTK_by_parts_rope=True,
            NTK_original_ctx_len=scaling.get("original_max_position_embeddings",
                                             text_config.max_position_embeddings),
            NTK_by_parts_low_freq_factor=scaling.get("low_freq_factor", 1.0),
            NTK_by_parts_high_freq_factor=scaling.get("high_freq_factor", 4.0),
            NTK_by_parts_factor=scaling.get("factor", 1.0),
        )
    elif rope_type != "default":
        raise ValueError(
            f"rope scaling {rope_type!r} of this {model_type} backbone cannot be reproduced by "
            f"TransformerLens' rotary embedding; refusing to load with wrong positions"
        )
    if getattr(text_config, "mlp_bias", False):
        raise ValueError(f"{model_type} backbone with mlp_bias=True is not supported")
    return HookedTransformerConfig(**cfg)


def _state_dict_llama_like(
    text_model: nn.Module, lm_head: nn.Module | None, cfg: HookedTransformerConfig
) -> dict[str, torch.Tensor]:
    """Map a Llama-layout decoder's weights onto HookedTransformer parameter names."""
    n_kv = cfg.n_key_value_heads or cfg.n_heads
    gqa = "_" if cfg.n_key_value_heads is not None else ""
    state: dict[str, torch.Tensor] = {"embed.W_E": text_model.embed_tokens.weight}
    for layer_index, layer in enumerate(text_model.layers):
        prefix = f"blocks.{layer_index}"
        attention = layer.self_attn
        state[f"{prefix}.ln1.w"] = layer.input_layernorm.weight
        state[f"{prefix}.ln2.w"] = layer.post_attention_layernorm.weight
        for name, projection, heads, underscore in (
            ("Q", attention.q_proj, cfg.n_heads, ""),
            ("K", attention.k_proj, n_kv, gqa),
            ("V", attention.v_proj, n_kv, gqa),
        ):
            state[f"{prefix}.attn.{underscore}W_{name}"] = einops.rearrange(
                projection.weight, "(n h) m -> n m h", n=heads)
            bias = projection.bias
            state[f"{prefix}.attn.{underscore}b_{name}"] = (
                torch.zeros(heads, cfg.d_head, dtype=projection.weight.dtype)
                if bias is None else einops.rearrange(bias, "(n h) -> n h", n=heads))
        state[f"{prefix}.attn.W_O"] = einops.rearrange(
            attention.o_proj.weight, "m (n h) -> n h m", n=cfg.n_heads)
        o_bias = attention.o_proj.bias
        state[f"{prefix}.attn.b_O"] = (torch.zeros(cfg.d_model, dtype=attention.o_proj.weight.dtype)
                                       if o_bias is None else o_bias)
        mlp = layer.mlp
        state[f"{prefix}.mlp.W_in"] = mlp.up_proj.weight.T
        state[f"{prefix}.mlp.W_gate"] = mlp.gate_proj.weight.T
        state[f"{prefix}.mlp.b_in"] = torch.zeros(cfg.d_mlp, dtype=mlp.up_proj.weight.dtype)
        state[f"{prefix}.mlp.W_out"] = mlp.down_proj.weight.T
        state[f"{prefix}.mlp.b_out"] = torch.zeros(cfg.d_model, dtype=mlp.down_proj.weight.dtype)
    state["ln_final.w"] = text_model.norm.weight
    unembed = lm_head.weight if lm_head is not None else text_model.embed_tokens.weight
    state["unembed.W_U"] = unembed.T
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
) -> HookedTransformer:
    """Convert a Hugging Face text decoder (``LlamaModel`` & co.) plus its LM head to a
    ``HookedTransformer`` with unprocessed weights.

    ``lm_head=None`` ties the unembedding to the input embedding (``tie_word_embeddings``).
    ``n_devices > 1`` splits the blocks across that many GPUs (TransformerLens' own scheme).
    """
    cfg = hooked_config_from_hf(text_config, dtype=dtype, device=device, n_devices=n_devices,
                                n_ctx=n_ctx)
    state = {name: tensor.detach().to(dtype) for name, tensor in
             _state_dict_llama_like(text_model, lm_head, cfg).items()}
    model = HookedTransformer(cfg, move_to_device=False)
    model.load_and_process_state_dict(
        state, fold_ln=False, center_writing_weights=False, center_unembed=False,
        fold_value_biases=False, refactor_factored_attn_matrices=False,
    )
    if n_devices > 1:
        model.move_model_modules_to_device()
    else:
        model.to(device, print_details=False)
    return model.eval()


def run_from_embeds(
    model: HookedTransformer,
    embeds: Float[torch.Tensor, "batch pos d_model"],
    *,
    fwd_hooks: HookList | Sequence = (),
    return_type: str | None = "logits",
    stop_at_layer: int | None = None,
    grad: bool = False,
) -> Float[torch.Tensor, "batch pos d_vocab"]:
    """Run the backbone on input embeddings (text and injected video tokens) with hooks.

    The embeddings enter as the residual stream before block 0 (``start_at_layer=0``): for rotary
    models there is no positional embedding to add. Hooks are validated first (a layer beyond the
    model's depth is a ``ValueError``) and removed when the forward ends, exceptions included.
    Gradients are off unless ``grad=True``.
    """
    if embeds.dim() != 3 or embeds.shape[-1] != model.cfg.d_model:
        raise ValueError(
            f"embeds must be [batch, pos, {model.cfg.d_model}], got {tuple(embeds.shape)}"
        )
    hooks = list(fwd_hooks)
    check_hooks(model, hooks)
    with torch.set_grad_enabled(grad):
        return model.run_with_hooks(
            embeds.to(model.cfg.device, model.cfg.dtype), start_at_layer=0,
            stop_at_layer=stop_at_layer, return_type=return_type, fwd_hooks=hooks,
        )
