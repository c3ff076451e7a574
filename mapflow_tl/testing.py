"""Independent references and comparisons for checking a model, an analysis or a run.

What a model author needs to show that mapflow-tl computes what the Hugging Face model computes
(tutorial 6, docs/adding_a_model.md), and what the project's own tests use:

- :func:`hf_logits_with_layer_masks` runs the Hugging Face model itself, eager attention, with an
  explicit ``[1, heads, pos, pos]`` additive mask swapped into each decoder layer — the reference
  every knockout is checked against;
- :func:`block_mask` and :func:`additive_mask` build those masks by hand from positions, with no
  mapflow-tl code involved;
- :func:`assert_rows_close` compares result tables under the project's numerical contract
  (docs/scaling.md, "Numbers that do not depend on the machine"): the same rows, the same answers
  and flags exactly, probabilities within :data:`PROBABILITY_TOLERANCE`.

Imports torch (not transformers): load it when checking, not at ``import mapflow_tl``.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import torch
from jaxtyping import Bool, Float

__all__ = ["PROBABILITY_TOLERANCE", "RELATIVE_CHANGE_COLUMNS", "block_mask", "additive_mask",
           "decoder_layers", "hf_logits_with_layer_masks", "tiny_llama", "backbone_of",
           "assert_rows_close"]

#: The largest difference in a probability that batching, sharding or the thread count may make
#: (float rounding of differently shaped sums); answers, flags and counts must not change at all.
PROBABILITY_TOLERANCE = 1e-5

#: Columns that are a relative change in percent of two probabilities, ``(p - base) / base ×
#: 100``: their rounding is the probabilities' divided by ``base``, so they are compared through
#: it rather than with the probabilities' absolute tolerance.
RELATIVE_CHANGE_COLUMNS = {"change_pred": ("p_pred", "base_p_pred"),
                           "change_true": ("p_true", "base_p_true")}


def block_mask(n: int, pairs: Iterable[tuple[Iterable[int], Iterable[int]]]
               ) -> Bool[torch.Tensor, "query key"]:
    """Boolean ``[query, key]`` matrix of the causal edges from each ``(keys, queries)`` pair,
    built with plain loops — no mapflow-tl code involved."""
    mask = torch.zeros(n, n, dtype=torch.bool)
    for keys, queries in pairs:
        keys = list(keys)
        for q in queries:
            for k in keys:
                if k <= q:
                    mask[q, k] = True
    return mask


def additive_mask(n: int, blocked: Bool[torch.Tensor, "query key"] | None, n_heads: int,
                  heads: Iterable[int] | None = None, dtype: torch.dtype = torch.float32
                  ) -> Float[torch.Tensor, "1 head query key"]:
    """``[1, heads, n, n]`` additive mask: causal, plus the ``blocked`` (query, key) entries in
    ``heads`` (all heads by default), each set to the dtype's minimum as HF's own masks are."""
    minimum = torch.finfo(dtype).min
    mask = torch.zeros(1, n_heads, n, n, dtype=dtype)
    future = torch.ones(n, n, dtype=torch.bool).triu(1)
    mask[..., future] = minimum
    if blocked is not None:
        for head in (range(n_heads) if heads is None else heads):
            mask[0, head][blocked] = minimum
    return mask


def decoder_layers(hf_model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder layers of a Hugging Face causal LM or multimodal model."""
    for path in ("model.layers", "model.language_model.layers", "language_model.model.layers",
                 "model.text_model.layers"):
        module = hf_model
        try:
            for part in path.split("."):
                module = getattr(module, part)
            return module
        except AttributeError:
            continue
    raise AttributeError(f"cannot find the decoder layers of {type(hf_model).__name__}: "
                         f"expected model.layers or model.language_model.layers")


@torch.no_grad()
def hf_logits_with_layer_masks(hf_model: torch.nn.Module,
                               layer_masks: Mapping[int, Float[torch.Tensor, "1 head pos pos"]],
                               default_mask: Float[torch.Tensor, "1 head pos pos"],
                               **inputs: Any) -> Float[torch.Tensor, "batch pos d_vocab"]:
    """The Hugging Face model's logits with ``layer_masks[l]`` as the attention mask of decoder
    layer ``l`` and ``default_mask`` in the others — Attention Knockout as the official code does
    it, by an explicit additive mask. Load the model with ``attn_implementation="eager"`` (or
    SDPA); the masks are swapped in by forward pre-hooks replacing each decoder layer's
    ``attention_mask`` keyword, and removed afterwards."""
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


def tiny_llama(n_layers: int = 8, seed: int = 0, vocab: int = 64) -> torch.nn.Module:
    """A small random-initialised Hugging Face ``LlamaForCausalLM`` (GQA, eager attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, attn_implementation="eager")
    return LlamaForCausalLM(config).eval()


def backbone_of(text_model: torch.nn.Module, lm_head: torch.nn.Module | None, text_config: Any,
                **options: Any) -> Any:
    """:func:`~mapflow_tl.models.backbone.backbone_from_hf` on the installed backend, leaving the
    given HF modules untouched so that they stay an independent reference: the bridge backend
    wraps (and edits in place) the modules it is given, so it gets a copy of them."""
    import copy

    from .models.backbone import backbone_from_hf, resolve_backend

    if resolve_backend(options.pop("backend", None)) == "bridge":
        text_model, lm_head = copy.deepcopy((text_model, lm_head))
    return backbone_from_hf(text_model, lm_head, text_config, **options)


def assert_rows_close(actual: Sequence[Mapping[str, Any]], expected: Sequence[Mapping[str, Any]],
                      *, probability_tolerance: float = PROBABILITY_TOLERANCE) -> None:
    """Assert two result tables hold the same rows up to float rounding: the contract between
    runs that batch, shard or thread the same work differently.

    Row by row and column by column: the same columns; strings, ints and booleans (answers,
    options, ``correct``, edge counts, layers) equal; every float within
    ``probability_tolerance``, except the relative changes (:data:`RELATIVE_CHANGE_COLUMNS`),
    whose allowed difference is the probabilities' carried through ``(p − base) / base × 100``.
    Raises an AssertionError naming the first row and column that differ."""
    assert len(actual) == len(expected), f"{len(actual)} rows, expected {len(expected)}"
    for index, (row, reference) in enumerate(zip(actual, expected)):
        assert list(row) == list(reference), (
            f"row {index}: columns {list(row)}, expected {list(reference)}")
        for column, value in row.items():
            tolerance = probability_tolerance
            if column in RELATIVE_CHANGE_COLUMNS and value is not None:
                p, base = (reference[name] for name in RELATIVE_CHANGE_COLUMNS[column])
                if base:
                    tolerance = 100 * probability_tolerance * (1 + abs(p) / base) / base
            where = f"row {index} ({_describe(reference)}), column {column!r}"
            _assert_value_close(value, reference[column], tolerance, where)


def _assert_value_close(value: Any, reference: Any, tolerance: float, where: str) -> None:
    if isinstance(reference, float) and isinstance(value, float):
        assert math.isfinite(value) == math.isfinite(reference) and (
            value == reference or abs(value - reference) <= tolerance), (
            f"{where}: {value!r} != {reference!r} (tolerance {tolerance:.3g})")
    elif isinstance(reference, (list, tuple)) and isinstance(value, (list, tuple)):
        assert len(value) == len(reference), f"{where}: {value!r} != {reference!r}"
        for item, expected in zip(value, reference):
            _assert_value_close(item, expected, tolerance, where)
    else:
        assert type(value) is type(reference) and value == reference, (
            f"{where}: {value!r} != {reference!r}")


def _describe(row: Mapping[str, Any]) -> str:
    keys = ("sample", "circuit", "curve", "layer", "variant", "seed", "option", "position")
    return ", ".join(f"{key}={row[key]!r}" for key in keys if key in row)
