"""Independent references for the tests: the Hugging Face model itself, run with eager attention
and an explicit 4D additive mask per layer, and dense masks built by hand from positions."""

from __future__ import annotations

from typing import Iterable, Mapping

import torch


def block_mask(n: int, pairs: Iterable[tuple[Iterable[int], Iterable[int]]]) -> torch.Tensor:
    """Boolean [query, key] matrix of the causal edges from each (keys, queries) pair, built with
    plain loops — no mapflow_tl code involved."""
    mask = torch.zeros(n, n, dtype=torch.bool)
    for keys, queries in pairs:
        keys = list(keys)
        for q in queries:
            for k in keys:
                if k <= q:
                    mask[q, k] = True
    return mask


def additive_mask(n: int, blocked: torch.Tensor | None, n_heads: int,
                  heads: Iterable[int] | None = None, dtype=torch.float32) -> torch.Tensor:
    """[1, heads, n, n] additive mask: causal, plus `blocked` (query, key) entries in `heads`."""
    minimum = torch.finfo(dtype).min
    mask = torch.zeros(1, n_heads, n, n, dtype=dtype)
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    mask[..., future] = minimum
    if blocked is not None:
        for head in (range(n_heads) if heads is None else heads):
            mask[0, head][blocked] = minimum
    return mask


def decoder_layers(hf_model):
    """The decoder layers of an HF causal LM or multimodal model."""
    for path in ("model.layers", "model.language_model.layers", "language_model.model.layers"):
        module = hf_model
        try:
            for part in path.split("."):
                module = getattr(module, part)
            return module
        except AttributeError:
            continue
    raise AttributeError(f"cannot find decoder layers of {type(hf_model).__name__}")


@torch.no_grad()
def hf_logits_with_layer_masks(hf_model, layer_masks: Mapping[int, torch.Tensor],
                               default_mask: torch.Tensor, **inputs) -> torch.Tensor:
    """Run the HF model with `layer_masks[l]` ([1, heads, n, n] additive) as the attention mask of
    decoder layer l and `default_mask` in the other layers. Masks are swapped in by forward
    pre-hooks replacing the `attention_mask` keyword of each decoder layer."""
    handles = []
    for index, layer in enumerate(decoder_layers(hf_model)):
        mask = layer_masks.get(index, default_mask)

        def swap(module, args, kwargs, mask=mask):
            if "attention_mask" not in kwargs:
                raise RuntimeError("decoder layer was called without an attention_mask keyword")
            kwargs["attention_mask"] = mask
            return args, kwargs

        handles.append(layer.register_forward_pre_hook(swap, with_kwargs=True))
    try:
        return hf_model(**inputs).logits
    finally:
        for handle in handles:
            handle.remove()


def tiny_llama(n_layers: int = 8, seed: int = 0, vocab: int = 64):
    """A small random-initialised Hugging Face ``LlamaForCausalLM`` (eager attention)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, attn_implementation="eager")
    return LlamaForCausalLM(config).eval()
