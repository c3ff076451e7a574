"""Faults in model folders and API input are refused by name (issue 24, "Model loading").

Each test injects one fault into a tiny checkpoint of the real HF class (built by the family
tests' own builders) or into a call, and checks the outcome: an :class:`InputError` naming the
offending thing, before anything is computed with it. The "before" behaviour of every fault is in
/work/notes/faults24.md (most loaded silently and gave wrong numbers).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from test_models_llava import BUILDERS, LOAD_OPTIONS, N_FRAMES, OPTIONS, QUESTION

import mapflow_tl.edges as E
from mapflow_tl.errors import InputError
from mapflow_tl.hooks import knockout
from mapflow_tl.models import VideoSample, load_videollm
from mapflow_tl.models.load import BUILTIN_MODELS


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 40, 48, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {}


def _checkpoint(checkpoints, tmp_path_factory, family):
    if family not in checkpoints:
        checkpoints[family] = BUILDERS[family](tmp_path_factory.mktemp(family))
    return checkpoints[family]


def _copy_with_config(source, target, edit):
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    edit(config)
    (target / "config.json").write_text(json.dumps(config))
    return target


def _layers(part: str, delta: int):
    def edit(config):
        config[part]["num_hidden_layers"] += delta
    return edit


# ---------------------------------------------------------------------- weight keys
@pytest.mark.parametrize("family, edit, listed", [
    # config.json one text layer short of the weights: layer 2's tensors would be dropped
    ("llava_next_video", _layers("text_config", -1),
     r"in the checkpoint but not in the model.*model\.language_model\.layers\.2\.\* \(9 tensors\)"),
    # one text layer more than the weights: layer 3 would be random
    ("llava_next_video", _layers("text_config", +1),
     r"missing from the checkpoint.*model\.language_model\.layers\.3\.\* \(9 tensors\)"),
    # one vision layer more: a random CLIP layer in the tower
    ("llava_next_video", _layers("vision_config", +1),
     r"missing from the checkpoint.*model\.vision_tower\.encoder\.layers\.2\.\* \(16 tensors\)"),
    # the PLLaVA format loads through the same from_pretrained
    ("pllava", _layers("text_config", -1),
     r"not in the model.*model\.language_model\.layers\.2\.\*"),
])
def test_weights_that_config_json_does_not_describe_are_refused_with_their_keys(
        checkpoints, tmp_path_factory, tmp_path, family, edit, listed):
    source = _checkpoint(checkpoints, tmp_path_factory, family)
    path = _copy_with_config(source, tmp_path / "edited", edit)
    with pytest.raises(InputError, match=listed) as raised:
        load_videollm(path, **LOAD_OPTIONS[family])
    assert str(path) in str(raised.value) and "num_hidden_layers" in str(raised.value)


def test_a_saved_buffer_is_not_an_unexpected_weight(checkpoints, tmp_path_factory, tmp_path):
    """Older checkpoints save buffers the model recomputes (CLIP's position_ids): they load,
    with the same logits as without them."""
    from safetensors.torch import load_file, save_file

    source = _checkpoint(checkpoints, tmp_path_factory, "llava_next_video")
    path = tmp_path / "with_buffer"
    shutil.copytree(source, path)
    (weights,) = path.glob("*.safetensors")
    state = load_file(str(weights))
    state["model.vision_tower.embeddings.position_ids"] = torch.arange(17)[None]
    save_file(state, str(weights), metadata={"format": "pt"})
    sample = VideoSample(_frames(N_FRAMES["llava_next_video"]), QUESTION, OPTIONS, answer=1)
    with_buffer = load_videollm(path, num_frames=4)
    plain = load_videollm(source, num_frames=4)
    assert torch.equal(with_buffer(with_buffer.prepare(sample)), plain(plain.prepare(sample)))


def test_internvl_chat_hand_mapped_weights_name_the_keys_they_lack(tmp_path):
    from test_models_paper_formats import build_internvl_chat

    source = tmp_path / "internvl"
    source.mkdir()
    build_internvl_chat(source)
    llm = _copy_with_config(source, tmp_path / "llm", _layers("llm_config", +1))
    with pytest.raises(ValueError, match=r"Phi3 language model weights.*missing "
                                         r"\['model\.layers\.2\."):
        load_videollm(llm)
    vit = _copy_with_config(source, tmp_path / "vit", _layers("vision_config", +1))
    with pytest.raises(ValueError, match=r"InternViT weights.*missing \['encoder\.layer\.2\."):
        load_videollm(vit)


# ---------------------------------------------------------------------- prompt length
def _tower_calls(module) -> list:
    calls: list = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("family", list(BUILDERS))
def test_too_long_prompt_is_refused_before_the_vision_tower_runs(
        checkpoints, tmp_path_factory, tmp_path, family):
    source = _checkpoint(checkpoints, tmp_path_factory, family)
    sample = VideoSample(_frames(N_FRAMES[family]), QUESTION, OPTIONS, answer=1)
    # The count the adapter predicts before the tower is the count the tower gives.
    vlm = load_videollm(source, **LOAD_OPTIONS[family])
    x = vlm.prepare(sample)
    n_video = x.segments.video.stop - x.segments.video.start
    assert vlm.adapter.video_token_count(N_FRAMES[family]) == n_video
    limit = x.n_positions - 1
    path = _copy_with_config(source, tmp_path / "short",
                             lambda c: c["text_config"].update(max_position_embeddings=limit))
    short = load_videollm(path, **LOAD_OPTIONS[family])
    towers = [m for name, m in short.vision.model.named_children() if name.endswith("tower")]
    calls = [_tower_calls(tower) for tower in towers]
    with pytest.raises(InputError, match=f"the prompt has {x.n_positions} positions, more than "
                                         f"the backbone's max_position_embeddings {limit}"):
        short.prepare(sample)
    assert towers and not any(calls), "the vision tower ran before the length check"


def test_native_family_checks_the_length_before_its_vision_tower(tmp_path):
    from test_models_paper_formats import build_internvl_chat

    path = tmp_path / "internvl"
    path.mkdir()
    build_internvl_chat(path)
    config = json.loads((path / "config.json").read_text())
    config["llm_config"]["original_max_position_embeddings"] = 16
    (path / "config.json").write_text(json.dumps(config))
    vlm = load_videollm(path)
    calls = _tower_calls(vlm.vision["vision_tower"])
    with pytest.raises(ValueError, match="more than the 16 this backbone reproduces"):
        vlm.prepare(VideoSample(_frames(4), QUESTION, OPTIONS, answer=1))
    assert not calls


# ---------------------------------------------------------------------- answer letters
@pytest.fixture(scope="module")
def synthtv():
    from mapflow_tl.synthtv import generator as gen

    item = gen.generate_task("object_count", 1, seed=0)[0]
    return load_videollm("synthtv-video-ft"), item


def test_an_option_letter_the_tokenizer_lacks_is_an_error_not_unk(synthtv):
    vlm, item = synthtv
    tokenizer = vlm.tokenizer
    # The shipped word-level tokenizer has A-D only: "E" is its unknown token.
    assert tokenizer.convert_tokens_to_ids("E") == tokenizer.unk_token_id
    assert tokenizer.convert_tokens_to_ids("D") != tokenizer.unk_token_id
    options = ["red", "blue", "green", "circle", "square", "forest"]
    with pytest.raises(InputError, match=r"option letter 'E' is not a token of the tokenizer "
                                         r".*synthtv-video-ft.*'<unk>'"):
        vlm.prepare(VideoSample(item.frames, item.question, options, answer=5))
    x = vlm.prepare(VideoSample(item.frames, item.question, options[:4], answer=3))
    assert [tokenizer.decode([int(i)]) for i in x.answer_ids] == ["A", "B", "C", "D"]


# ---------------------------------------------------------------------- API input
@pytest.mark.parametrize("options, answer, message", [
    (["red", "red", "blue"], 0, r"sample 's1': options 0 and 1 are the same text \('red'\)"),
    (["red", "Red "], None, r"options 0 and 1 are the same text"),
    (["red", "blue"], True, r"answer must be the int index .* got True \(bool\)"),
    (["red", "blue"], "B", r"answer must be the int index .* got 'B' \(str\)"),
    (["red", "blue"], 2, r"answer 2 is not an index into its 2 options \(0 … 1\)"),
    (["red", "blue"], -1, r"answer -1 is not an index into its 2 options"),
    ([], 0, r"answer 0 given but the sample has no options"),
    (["red", ""], 0, r"option 1 must be non-empty text"),
])
def test_bad_options_and_answers_are_named(synthtv, options, answer, message):
    vlm, item = synthtv
    with pytest.raises(InputError, match=message):
        vlm.prepare(VideoSample(item.frames, item.question, options, answer=answer, id="s1"))


def test_zero_options_is_the_open_ended_prompt_and_analyses_refuse_it(synthtv):
    from mapflow_tl.analyses import base_prediction

    vlm, item = synthtv
    x = vlm.prepare(VideoSample(item.frames, item.question, [], id="s2"))
    assert x.segments.options == () and len(x.answer_ids) == 0
    with pytest.raises(InputError, match=r"sample 's2' has no options"):
        base_prediction(vlm, x)


def test_edges_of_another_sample_are_refused_naming_both_lengths(synthtv):
    vlm, item = synthtv
    two = vlm.prepare(VideoSample(item.frames, item.question, ["red", "blue"], answer=0))
    four = vlm.prepare(VideoSample(item.frames, item.question,
                                   ["red", "blue", "green", "circle"], answer=0))
    fewer_frames = vlm.prepare(VideoSample(item.frames[:4], item.question, ["red", "blue"],
                                           answer=0))
    layers = range(vlm.n_layers)
    # longer: the edges reach past this sample's sequence
    with pytest.raises(InputError, match=rf"built from another sample's segment map "
                                         rf"\({four.n_positions} positions, 8 frames\) but run "
                                         rf"on one of {two.n_positions} positions, 8 frames"):
        vlm.run_with_hooks(two, knockout(E.video_to_last(four.segments), layers))
    # shorter, other frames: these would cut wrong positions silently
    with pytest.raises(InputError, match=rf"\({fewer_frames.n_positions} positions, 4 frames\) "
                                         rf"but run on one of {two.n_positions} positions, 8 "
                                         rf"frames"):
        vlm.run_with_cache(two, knockout(E.cross_frame(fewer_frames.segments), layers))
    # combined expressions carry their parts' maps
    mixed = E.video_to_last(two.segments) | E.question_to_last(fewer_frames.segments)
    with pytest.raises(InputError, match="another sample's segment map"):
        vlm.run_with_hooks(two, knockout(mixed, layers))
    # edges written from spans: only their reach is known
    beyond = E.Edges(src=four.segments.video, dst=four.segments.last)
    with pytest.raises(InputError, match=rf"beyond the sequence of {two.n_positions} positions"):
        vlm.run_with_hooks(two, knockout(beyond, layers))
    # the sample's own edges, and an equal map from another call, run
    own = knockout(E.cross_frame(two.segments), layers)
    again = vlm.prepare(VideoSample(item.frames, item.question, ["red", "blue"], answer=0))
    assert torch.equal(vlm.run_with_hooks(two, own), vlm.run_with_hooks(again, own))


def test_a_misspelt_hook_point_is_named_not_its_layer(synthtv):
    vlm, item = synthtv
    x = vlm.prepare(VideoSample(item.frames, item.question, ["red", "blue"], answer=0))

    def identity(tensor, hook):
        return tensor

    with pytest.raises(InputError, match=r"hook 'blocks\.1\.attn\.hook_patern' is not a hook "
                                         r"point of this model; did you mean "
                                         r"'blocks\.1\.attn\.hook_pattern'\?"):
        vlm.run_with_hooks(x, [("blocks.1.attn.hook_patern", identity)])
    with pytest.raises(InputError, match=r"layer 99 is outside \[0, 8\)"):
        vlm.run_with_hooks(x, [("blocks.99.attn.hook_pattern", identity)])


# ---------------------------------------------------------------------- command line
def _broken_model(tmp_path, weights=None, config=None):
    path = tmp_path / "model"
    shutil.copytree(BUILTIN_MODELS["synthtv-video-ft"], path)
    if weights is not None:
        weights(path / "model.safetensors")
    if config is not None:
        (path / "config.json").write_text(config)
    return path


@pytest.mark.parametrize("fault, message", [
    (dict(weights=lambda p: p.write_bytes(b"")), r"the weight file \S+model\.safetensors is "
                                                 r"empty \(0 bytes\)"),
    (dict(weights=lambda p: p.write_bytes(b"\x07garbage" * 10)),
     r"the weight file \S+model\.safetensors \(80 bytes\) is not a readable safetensors file"),
    (dict(weights=lambda p: p.write_bytes(p.read_bytes()[:100_000])),
     r"the weight file \S+model\.safetensors \(100000 bytes\) is not a readable safetensors"),
    (dict(config="[1, 2]"), r"\S+config\.json holds a list, expected a JSON object"),
    (dict(config="null"), r"\S+config\.json holds null, expected a JSON object"),
    (dict(config="{not json"), r"\S+config\.json is not valid JSON"),
])
def test_broken_model_folders_are_one_line_at_the_command_line(tmp_path, capsys, fault,
                                                               message):
    import re

    from mapflow_tl.cli import main

    model = _broken_model(tmp_path, **fault)
    code = main(["flow", "--model", str(model), "--limit", "1", "--task", "object_count",
                 "--out", str(tmp_path / "run"), "--circuit", "cross-frame"])
    loading, err = capsys.readouterr().err.strip().splitlines()   # the loading line, the error
    assert code == 2
    assert loading.startswith("flow: loading model ") and err.startswith("mapflow-tl flow: error: ")
    assert re.search(message, err), err
    assert str(model) in err


# ---------------------------------------------------------------------- issue 36: silent inputs
def test_options_given_as_one_string_are_refused_not_split_into_letters(synthtv):
    from pathlib import Path

    from mapflow_tl.data import Sample

    vlm, item = synthtv
    message = (r"sample 's3': options must be a list of option texts, got the string 'up' "
               r"\(read as one option per character\); pass options=\['up', \.\.\.\]")
    with pytest.raises(InputError, match=message):
        VideoSample(item.frames, item.question, "up", id="s3")
    # a benchmark Sample built by hand goes through the same check on its way to prepare
    sample = Sample(id="s3", dataset="x", task="t", video=Path("v.mp4"), question="q?",
                    options="up", answer_index=0)
    with pytest.raises(InputError, match=message):
        vlm.prepare(sample)
    with pytest.raises(InputError, match="options must be a list of option texts, got int"):
        VideoSample(item.frames, item.question, 3)
    # lists, tuples and 1-D arrays of texts are option lists
    for options in (["up", "down"], ("up", "down"), np.array(["up", "down"])):
        assert len(VideoSample(item.frames, item.question, options).options) == 2


def test_an_empty_names_filter_is_refused_with_the_fix(synthtv):
    vlm, item = synthtv
    x = vlm.prepare(VideoSample(item.frames, item.question, ["red", "blue"], answer=0))
    with pytest.raises(InputError, match=r"names_filter is an empty list, which caches nothing; "
                                         r"pass the hook names .* or names_filter=None"):
        vlm.run_with_cache(x, names_filter=[])
    # a generator of names is read once for the check and still caches what it names
    wanted = (f"blocks.{layer}.hook_resid_post" for layer in (0, 1))
    _, cache = vlm.run_with_cache(x, names_filter=wanted)
    assert sorted(cache.keys()) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


# ---------------------------------------------------------------------- issue 36: non-finite
def _nan_checkpoint(tmp_path, key: str):
    """The shipped SynthTV model with one weight entry set to NaN (a corrupt checkpoint)."""
    from safetensors.torch import load_file, save_file

    path = tmp_path / "nan-model"
    shutil.copytree(BUILTIN_MODELS["synthtv-video-ft"], path)
    weights = load_file(str(path / "model.safetensors"))
    weights[key][0, 0] = float("nan")
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


@pytest.mark.parametrize("command", [["flow", "--circuit", "cross-frame"],
                                     ["prune", "--circuit", "pathway-synthtv"],
                                     ["crossframe"], ["prob"], ["lens"], ["attention"],
                                     ["patch"]])
@pytest.mark.parametrize("key, place, weight", [
    ("language_model.model.layers.2.mlp.down_proj.weight",
     r"the MLP output of layer 2 \(blocks\.2\.hook_mlp_out\)", r"blocks\.2\.mlp\.W_out"),
    ("language_model.model.layers.0.self_attn.v_proj.weight",
     r"the attention output of layer 0 \(blocks\.0\.hook_attn_out\)", r"blocks\.0\.attn\.W_V"),
])
def test_a_nan_weight_stops_the_run_naming_the_layer_and_weight(tmp_path, capsys, command, key,
                                                                 place, weight):
    """Before: exit 0, "base accuracy 0.0 %", rows with NaN (not JSON)."""
    import re

    from mapflow_tl.cli import main

    model = _nan_checkpoint(tmp_path, key)
    out = tmp_path / "run"
    code = main([command[0], "--model", str(model), "--limit", "1", "--task", "object_count",
                 "--out", str(out), *command[1:]])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    # patch names the run at fault: the sample or its counterfactual ("object_count/0~reverse")
    assert re.search(rf"error: sample 'object_count/0(~reverse)?': the .* are not finite \(NaN "
                     rf"or inf\); the values first become non-finite in {place}; the "
                     rf"checkpoint's weights {weight} hold NaN/inf", err), err
    for table in out.glob("*.jsonl"):  # nothing but what was refused at load
        assert table.name == "skipped.jsonl" or not table.read_text().strip(), table


@pytest.fixture(scope="module")
def nan_vlm(tmp_path_factory):
    path = _nan_checkpoint(tmp_path_factory.mktemp("nan"),
                           "language_model.model.layers.1.mlp.down_proj.weight")
    return load_videollm(path)


def test_the_fast_sweep_refuses_nan_logits_even_with_a_given_base(nan_vlm, synthtv):
    """The engine's lean sweep path: a base computed elsewhere skips the clean check of
    base_prediction, and the sweep's NaN logits became NaN rows."""
    from mapflow_tl.analyses import flow_sweep
    from mapflow_tl.circuits import load_circuit

    _, item = synthtv
    x = nan_vlm.prepare(VideoSample(item.frames, item.question, ["red", "blue"], answer=0,
                                    id="s5"))
    base = {"base_token": 0, "base_p_pred": 0.5, "base_p_true": 0.5, "base_correct": True,
            "base_option": 0}
    with pytest.raises(InputError, match=r"sample 's5': the logits of the clean forward are not "
                                         r"finite .* the MLP output of layer 1 "
                                         r"\(blocks\.1\.hook_mlp_out\); the checkpoint's weights "
                                         r"blocks\.1\.mlp\.W_out hold NaN/inf"):
        flow_sweep(nan_vlm, x, load_circuit("cross-frame"), base=base)


def _write_nan(at: int):
    def hook(activation, hook):
        activation = activation.clone()
        activation[:, at] = float("nan")
        return activation
    return hook


def test_a_hook_writing_nan_is_named_with_its_place(synthtv):
    from mapflow_tl.analyses import base_prediction, crossframe_knockout, flow_sweep
    from mapflow_tl.circuits import load_circuit

    vlm, item = synthtv
    x = vlm.prepare(VideoSample(item.frames, item.question, ["red", "blue"], answer=0, id="s6"))
    hooks = [("blocks.3.hook_mlp_out", _write_nan(at=5))]
    message = (r"sample 's6': the logits of the forward are not finite \(NaN or inf\); the "
               r"values first become non-finite in the MLP output of layer 3 "
               r"\(blocks\.3\.hook_mlp_out\); its weights are finite: check the hooks")
    with pytest.raises(InputError, match=message):
        vlm.option_probabilities(x, hooks)
    # attached with vlm.hooks(): the analyses' own forwards see it too
    with vlm.hooks(hooks):
        with pytest.raises(InputError, match=r"clean forward .*blocks\.3\.hook_mlp_out"):
            base_prediction(vlm, x)
        with pytest.raises(InputError, match=r"the base forward .*blocks\.3\.hook_mlp_out"):
            crossframe_knockout(vlm, x)
        # the engine's hooked sweep (hooks attached to the model), with a base given
        base = {"base_token": 0, "base_p_pred": 0.5, "base_p_true": 0.5, "base_correct": True,
                "base_option": 0}
        with pytest.raises(InputError, match=r"sample 's6': the logits of the clean forward .*"
                                             r"blocks\.3\.hook_mlp_out.*check the hooks"):
            flow_sweep(vlm, x, load_circuit("cross-frame"), base=base)
    # written into the embeddings: named as the input
    with pytest.raises(InputError, match=r"the input embeddings as hooked \(hook_embed\)"):
        vlm.option_probabilities(x, [("hook_embed", _write_nan(at=0))])
    # the model itself is fine
    assert torch.isfinite(vlm.option_probabilities(x)).all()
