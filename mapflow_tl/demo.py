"""The demo: a layer-wise knockout sweep of the paper's four information-flow targets.

Until the SynthTV model organism ships, the demo runs on a small random-initialised Llama backbone
with a paper-shaped prompt layout (system, 4 frames of 3×3 video tokens, question, three options,
last). A random backbone carries no meaning — the table shows the mechanics: which pathway
knockouts can move the answer probability at all, and that question → video is empty.
"""

from __future__ import annotations

import torch

from . import edges as E
from .engine import layer_sweep, sweep
from .metrics import relative_change
from .models.backbone import hooked_from_hf, run_from_embeds
from .segments import SegmentMap


def tiny_llama(n_layers: int = 8, seed: int = 0, vocab: int = 64):
    """A small random-initialised Hugging Face ``LlamaForCausalLM`` (eager attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, attn_implementation="eager")
    return LlamaForCausalLM(config).eval()


def run_demo(seed: int = 0, n_layers: int = 8, k: int = 3) -> dict:
    hf = tiny_llama(n_layers, seed)
    model = hooked_from_hf(hf.model, hf.lm_head, hf.config)
    seg = SegmentMap.sequential(system=3, frames=[(3, 3)] * 4, after_video=2, question=6,
                                options=[2, 2, 2], true_option=1, between_options=1,
                                before_last=2)
    generator = torch.Generator().manual_seed(seed)
    embeds = torch.randn(1, seg.n_positions, model.cfg.d_model, generator=generator)
    print(seg)
    curves = {
        "cross-frame": E.cross_frame(seg),
        "video → question": E.video_to_question(seg),
        "video → last": E.video_to_last(seg),
        "question → last": E.question_to_last(seg),
        "last → last": E.last_to_last(seg),
        "question → video": E.question_to_video(seg),
    }
    base = run_from_embeds(model, embeds)[0, -1].softmax(-1)
    predicted = int(base.argmax())
    configs = layer_sweep(curves, n_layers, k=k)
    probabilities = sweep(model, embeds, configs).softmax(-1)[:, predicted]
    table: dict[str, list[float]] = {curve: [] for curve in curves}
    for config, probability in zip(configs, probabilities):
        table[config.curve].append(round(float(relative_change(probability, base[predicted])), 3))
    print(f"\nrelative change of p(predicted token {predicted}) in %, window k={k}, "
          f"random {n_layers}-layer backbone")
    header = f"{'pathway':<18}" + "".join(f"{'L' + str(l):>8}" for l in range(n_layers))
    print(header)
    for curve, row in table.items():
        print(f"{curve:<18}" + "".join(f"{value:>8.2f}" for value in row))
    return {"predicted_token": predicted, "base_probability": float(base[predicted]),
            "relative_change": table,
            "edges": {curve: edges.count(seg.n_positions) for curve, edges in curves.items()}}
