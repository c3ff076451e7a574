"""The fast knockout sweep at long-video length (issue 35, "Long videos"): more than 4,000
positions, where the lean suffix forward runs its many-query attention segmented (runs of
queries over their allowed key ranges, merged by log-sum-exp) — checked against one full
HookedTransformer forward per configuration (``method="naive"``) on a narrow random model."""

from __future__ import annotations

import pytest
import torch

from mapflow_tl import edges as E
from mapflow_tl.engine import layer_sweep, sweep
from mapflow_tl.models.backbone import hooked_from_hf
from mapflow_tl.segments import SegmentMap

N_LAYERS = 3
TOLERANCE = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


def _narrow_llama(n_kv_heads: int):
    """Width 32, 2 heads of 16, 3 layers: a forward over 4,000 positions takes well under a
    second; weights large enough that knockouts move the answer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=N_LAYERS, num_attention_heads=2,
                         num_key_value_heads=n_kv_heads, max_position_embeddings=8192,
                         attn_implementation="eager")
    hf = LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in hf.parameters():
            if parameter.dim() > 1:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return hooked_from_hf(hf.model, hf.lm_head, hf.config)


@pytest.mark.parametrize("n_kv_heads", [2, 1], ids=["mha-segmented", "gqa-chunked"])
def test_fast_equals_naive_beyond_4000_positions(n_kv_heads):
    seg = SegmentMap.sequential(system=8, frames=[(16, 16)] * 16, after_video=3, question=12,
                                options=[3, 3, 3], true_option=1, between_options=1,
                                before_last=4)
    assert seg.n_positions >= 4000
    curves = {"cross-frame": E.cross_frame(seg), "intra-frame": E.intra_frame(seg),
              "video → question": E.video_to_question(seg), "video → last": E.video_to_last(seg)}
    configs = layer_sweep(curves, N_LAYERS, k=1, centers=[1])
    backbone = _narrow_llama(n_kv_heads)
    embeds = torch.randn(1, seg.n_positions, 32, generator=torch.Generator().manual_seed(2))
    fast = sweep(backbone, embeds, configs).softmax(-1)
    naive = sweep(backbone, embeds, configs, method="naive").softmax(-1)
    difference = (fast - naive).abs().max(dim=-1).values
    assert float(difference.max()) <= TOLERANCE, (
        f"fast and naive differ by {float(difference.max()):.3g} at "
        f"{configs[int(difference.argmax())]}")
    assert torch.equal(fast.argmax(-1), naive.argmax(-1))
    # not vacuous: the knockouts move the answer's probabilities
    with torch.no_grad():
        clean = backbone(embeds, start_at_layer=0)[0, -1].softmax(-1)
    assert float((naive - clean).abs().max()) > 1e-3
