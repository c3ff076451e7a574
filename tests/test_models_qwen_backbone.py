"""The Qwen-family text decoders converted to a HookedTransformer reproduce the HF logits.

Reference: the Hugging Face causal LM itself (eager attention) on the same token ids.
"""

import pytest
import torch

from mapflow_tl.models.backbone import backbone_config_fields, run_from_embeds
from mapflow_tl.testing import backbone_of


def _tiny(config_class, model_class, **overrides):
    torch.manual_seed(0)
    settings = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                    rms_norm_eps=1e-6, attn_implementation="eager")
    settings.update(overrides)
    model = model_class(config_class(**settings)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2) if parameter.dim() == 2 else parameter.uniform_(0.5, 1.5)
        for layer in model.model.layers:  # non-zero biases so that a dropped bias would show
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj,
                               layer.self_attn.v_proj):
                if projection.bias is not None:
                    projection.bias.normal_(0, 0.5)
    return model


def _max_diff(hf_model, dtype=torch.float32):
    backbone = backbone_of(hf_model.model, hf_model.lm_head, hf_model.config, dtype=dtype)
    ids = torch.randint(0, hf_model.config.vocab_size, (1, 23), generator=torch.Generator()
                        .manual_seed(1))
    with torch.no_grad():
        expected = hf_model(ids).logits
        embeds = hf_model.model.embed_tokens(ids)
    got = run_from_embeds(backbone, embeds.to(dtype))
    return (got.float() - expected.float()).abs().max().item(), backbone


def test_qwen2_biases_rope_theta_and_tied_embeddings():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = _tiny(Qwen2Config, Qwen2ForCausalLM, rope_theta=50000.0, tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    diff, backbone = _max_diff(model)
    assert diff <= 1e-4
    assert backbone.cfg.rotary_base == 50000.0 and backbone.cfg.n_key_value_heads == 2


def test_qwen2_linear_rope_scaling():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = _tiny(Qwen2Config, Qwen2ForCausalLM, rope_theta=1000.0,
                  rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 1000.0})
    diff, _ = _max_diff(model)
    assert diff <= 1e-4


def test_qwen3_qk_norm_and_head_dim():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    model = _tiny(Qwen3Config, Qwen3ForCausalLM, head_dim=16, rope_theta=1e6)  # 4*16 != 48
    diff, backbone = _max_diff(model)
    assert diff <= 1e-4
    assert backbone.cfg.use_qk_norm and backbone.cfg.d_head == 16


def test_bf16_backbone_runs_in_bf16():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    model = _tiny(Qwen2Config, Qwen2ForCausalLM)
    diff, backbone = _max_diff(model, dtype=torch.bfloat16)
    assert backbone.W_Q.dtype == torch.bfloat16
    assert diff < 0.5  # bf16 rounding only


@pytest.mark.parametrize("change, message", [
    (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}), "yarn"),
    (dict(use_sliding_window=True, sliding_window=16), "sliding"),
    (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                           "mrope_section": [2, 1, 1]}), "3D multimodal rotary"),
])
def test_unreproducible_backbones_are_refused(change, message):
    from transformers import Qwen2Config

    config = Qwen2Config(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, **change)
    with pytest.raises(ValueError, match=message):
        backbone_config_fields(config)
