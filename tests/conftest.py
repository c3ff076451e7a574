import os

import pytest
import torch
from hypothesis import settings

# CI (.ci/run) sets HYPOTHESIS_PROFILE=ci: the same examples on every run, so that a fresh
# clone's result does not depend on what the property tests happen to draw; a local run keeps
# exploring new examples.
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "hooked_backend: tests of the HookedTransformer's own machinery (TransformerLens "
        "3.9: its key/value cache, its parameters, the hooked suffix path); skipped on the "
        "bridge backend, whose equivalents the other tests check")


def pytest_collection_modifyitems(config, items):
    from mapflow_tl.models.backends import installed_transformer_lens

    version = installed_transformer_lens() or "0"
    if not version.startswith("4."):
        return
    for item in items:
        marker = item.get_closest_marker("hooked_backend")
        if marker is not None:
            why = marker.args[0] if marker.args else "HookedTransformer machinery"
            item.add_marker(pytest.mark.skip(
                reason=f"{why}; TransformerLens {version} runs the bridge backend"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on two shared CI cores, OpenMP threads waiting on each other cost more than they gain."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_hf_llama():
    """A tiny random LlamaForCausalLM (GQA, eager attention) with weights scaled up so that
    knockouts visibly change its outputs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=61, hidden_size=48, intermediate_size=96, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         rope_theta=1000.0, rms_norm_eps=1e-5, attn_implementation="eager")
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.normal_(0, 0.25)
    return model


@pytest.fixture(scope="session")
def tiny_backbone(tiny_hf_llama):
    from mapflow_tl.testing import backbone_of

    return backbone_of(tiny_hf_llama.model, tiny_hf_llama.lm_head, tiny_hf_llama.config)


@pytest.fixture(scope="session")
def layout():
    """A small prompt layout: system, 3 frames of 2×3 tokens, question, 3 options, last."""
    from mapflow_tl.segments import SegmentMap

    return SegmentMap.sequential(system=2, frames=[(2, 3)] * 3, after_video=1, question=4,
                                 options=[2, 1, 2], true_option=1, between_options=1,
                                 before_last=1)


@pytest.fixture(scope="session")
def model_and_data(tmp_path_factory):
    """An untrained model of SynthTV's architecture saved as a checkpoint, and a small SynthTV set
    in TVBench's format: what a CLI run needs, in seconds."""
    import json

    build = pytest.importorskip("mapflow_tl.synthtv.build")
    generator = pytest.importorskip("mapflow_tl.synthtv.generator")
    root = tmp_path_factory.mktemp("run")
    model_dir = root / "model"
    tokenizer = build.build_tokenizer()
    model = build.build_model(tokenizer=tokenizer, seed=3)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    for name, data in build.processor_files().items():
        (model_dir / name).write_text(json.dumps(data))
    data_dir = root / "data"
    generator.write_benchmark(data_dir, generator.generate(["moving_direction", "object_count"],
                                                           per_task=6, seed=11))
    return model_dir, data_dir
