"""Why the hooked backend's logits on the tiny LLaVA-NeXT (Mistral) checkpoint differ from HF's by
1.6e-5 in fp32: float rounding in a different order of operations, not a different computation.

Run in the TransformerLens 3.9 environment (backend "hooked"):

    python benchmarks/mistral_rounding.py --models /tmp/parity-models

Prints one JSON object:

- ``fp32_tables``: max |Δ| between TransformerLens' rotary tables (angles pos / base^(2i/d)) and
  HF's (pos · inv_freq), both in fp32, over the sample's positions;
- ``fp32_logits_own_tables`` / ``fp32_logits_hf_tables``: the hooked backbone's logits vs the HF
  decoder's on the same embeddings, with its own tables and with HF's tables installed;
- ``fp64_logits_hf_as_shipped``: both in fp64, but HF's Mistral pins three steps to fp32 (the
  RMSNorm's upcast, the rotary tables, the eager softmax), so it is not an fp64 reference;
- ``fp64_logits_restated`` / ``fp64_resid_post_restated``: HF with those three steps restated in
  fp64 (the same formulas, nothing else changed) and the hooked backbone given the same fp64
  tables: what is left is fp64 rounding (≈1e-14).

The checkpoint is the test suite's builder (tests/test_models_llava.py: weights N(0, 0.2), logits
up to 6.4), saved under ``--models/llava_next`` (shared with benchmarks/backend_parity.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"


def _max(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _restate_in_fp64(modeling, dtype: torch.dtype, theta: float, dim: int) -> None:
    """HF Mistral's RMSNorm, default rotary and eager attention, computed in ``dtype`` (HF runs
    the first and third in fp32 and builds the rotary tables in fp32 whatever the dtype)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=dtype) / dim))

    def rms(self, hidden):
        variance = hidden.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden * torch.rsqrt(variance + self.variance_epsilon))

    def rotary(self, hidden, position_ids):
        freqs = position_ids[..., None].to(dtype) * inv_freq
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos(), angles.sin()

    def eager(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        key = modeling.repeat_kv(key, module.num_key_value_groups)
        value = modeling.repeat_kv(value, module.num_key_value_groups)
        weights = torch.matmul(query, key.transpose(2, 3)) * scaling
        if attention_mask is not None:
            weights = weights + attention_mask
        weights = weights.softmax(-1)
        return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights

    modeling.MistralRMSNorm.forward = rms
    modeling.MistralRotaryEmbedding.forward = rotary
    modeling.eager_attention_forward = eager


@torch.no_grad()
def measure(models: Path) -> dict:
    sys.path.insert(0, str(TESTS))
    import test_models_llava as llava
    from transformers.models.mistral import modeling_mistral

    from mapflow_tl.models import load_videollm

    path = models / "llava_next"
    if not (path / "config.json").exists():
        path.mkdir(parents=True, exist_ok=True)
        llava.BUILDERS["llava_next"](path)
    row = {}
    for dtype in (torch.float32, torch.float64):
        vlm = load_videollm(path, dtype=dtype, **llava.LOAD_OPTIONS["llava_next"])
        if vlm.backend != "hooked":
            raise SystemExit("run this in the TransformerLens 3.9 environment (backend 'hooked')")
        x = vlm.prepare(llava._sample("llava_next"))
        hf = llava._hf_model("llava_next", path).to(dtype)
        decoder, n, blocks = hf.model.language_model, x.n_positions, vlm.backbone.blocks

        def hf_logits():
            return hf.lm_head(decoder(inputs_embeds=x.embeds).last_hidden_state)

        def install(cos, sin):
            for block in blocks:
                block.attn.rotary_cos, block.attn.rotary_sin = cos[0], sin[0]

        if dtype == torch.float32:
            cos, sin = decoder.rotary_emb(torch.zeros(1), torch.arange(vlm.cfg.n_ctx)[None])
            row["fp32_tables"] = max(_max(blocks[0].attn.rotary_cos[:n], cos[0, :n]),
                                     _max(blocks[0].attn.rotary_sin[:n], sin[0, :n]))
            reference = hf_logits()
            row["fp32_logits_own_tables"] = _max(vlm(x), reference)
            install(cos, sin)
            row["fp32_logits_hf_tables"] = _max(vlm(x), reference)
            continue
        row["fp64_logits_hf_as_shipped"] = _max(vlm(x), hf_logits())
        config = decoder.config
        _restate_in_fp64(modeling_mistral, dtype, config.rope_parameters["rope_theta"],
                         config.head_dim)
        install(*decoder.rotary_emb(None, torch.arange(vlm.cfg.n_ctx)[None]))
        logits, cache = vlm.run_with_cache(x, names_filter=lambda name: "resid_post" in name)
        out = decoder(inputs_embeds=x.embeds, output_hidden_states=True)
        row["fp64_logits_restated"] = _max(logits, hf.lm_head(out.last_hidden_state))
        row["fp64_resid_post_restated"] = [
            _max(cache[f"blocks.{layer}.hook_resid_post"], out.hidden_states[layer + 1])
            for layer in range(vlm.cfg.n_layers - 1)]  # HF's last hidden state is normed
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True,
                        help="folder of the tiny checkpoints (built once)")
    print(json.dumps(measure(parser.parse_args().models)))


if __name__ == "__main__":
    main()
