"""LLaVA-family adapters against the Hugging Face models they load.

For each family a tiny random-initialised model of the real HF class (CLIP vision tower, a few
Llama / Mistral decoder layers, a locally trained tokenizer) is saved with ``save_pretrained`` and
loaded back through ``load_videollm``. The references are the HF model itself (its own forward on
the same video and prompt, eager attention, explicit 4D masks for knockouts) and the HF processors'
own token-expansion code; nothing is downloaded.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_prompt import VICUNA_TEMPLATE, legacy_llama_tokenizer, llama_tokenizer

import mapflow_tl.edges as E
from mapflow_tl.hooks import knockout
from mapflow_tl.models import VideoSample, load_videollm, supported_architectures
from mapflow_tl.testing import additive_mask, block_mask, hf_logits_with_layer_masks

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGE_SIZE, PATCH = 32, 8  # 4×4 patches per frame
QUESTION = "What does the person do first?"
OPTIONS = ["open the door", "close the door", "sit down"]


def _pixel_settings() -> dict:
    return {"do_resize": True, "size": {"shortest_edge": IMAGE_SIZE}, "do_center_crop": True,
            "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": CLIP_MEAN,
            "image_std": CLIP_STD, "do_convert_rgb": True, "resample": 3}


def _vision_config():
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, image_size=IMAGE_SIZE, patch_size=PATCH,
                            projection_dim=32)


def _text_config(tokenizer, backbone: str = "llama", tied: bool = False):
    from transformers import LlamaConfig, MistralConfig

    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                  num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, rms_norm_eps=1e-5, tie_word_embeddings=tied)
    if backbone == "mistral":
        return MistralConfig(**common, sliding_window=None, rope_theta=10000.0)
    return LlamaConfig(**common, rope_theta=1000.0)


def _scale_text_weights(model) -> None:
    """Random text weights large enough that knockouts visibly change the logits."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "language_model" in name and parameter.dim() == 2:
                parameter.normal_(0, 0.2)


def _write_json(path, name, data) -> None:
    (path / name).write_text(json.dumps(data))


def _save(model, tokenizer, path, files: dict) -> None:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    for name, data in files.items():
        _write_json(path, name, data)
    (path / "chat_template.jinja").write_text(VICUNA_TEMPLATE)


def build_llava_next_video(path, tied: bool = False):
    from transformers import LlavaNextVideoConfig, LlavaNextVideoForConditionalGeneration

    tokenizer = llama_tokenizer()
    config = LlavaNextVideoConfig(
        vision_config=_vision_config(), text_config=_text_config(tokenizer, tied=tied),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        spatial_pool_mode="average", spatial_pool_stride=2,
        image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]], image_seq_length=16,
        video_seq_length=4 * 4, tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = LlavaNextVideoForConditionalGeneration(config).eval()
    _scale_text_weights(model)
    _save(model, tokenizer, path, {
        "processor_config.json": {"processor_class": "LlavaNextVideoProcessor",
                                  "patch_size": PATCH, "vision_feature_select_strategy": "default",
                                  "video_token": "<video>", "image_token": "<image>",
                                  "num_additional_image_tokens": 1},
        "video_preprocessor_config.json": {"video_processor_type": "LlavaNextVideoVideoProcessor",
                                           "do_sample_frames": False, **_pixel_settings()},
        "preprocessor_config.json": {"image_processor_type": "LlavaNextImageProcessor",
                                     "image_grid_pinpoints": [[IMAGE_SIZE, IMAGE_SIZE]],
                                     **_pixel_settings()},
    })
    return path


def build_llava_next(path, backbone: str = "mistral"):
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    tokenizer = llama_tokenizer()
    config = LlavaNextConfig(
        vision_config=_vision_config(), text_config=_text_config(tokenizer, backbone, tied=True),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_grid_pinpoints=[[IMAGE_SIZE, IMAGE_SIZE]], image_seq_length=16,
        tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(config).eval()
    _scale_text_weights(model)
    _save(model, tokenizer, path, {
        "preprocessor_config.json": {"image_processor_type": "LlavaNextImageProcessor",
                                     "image_grid_pinpoints": [[IMAGE_SIZE, IMAGE_SIZE]],
                                     **_pixel_settings()},
    })
    return path


def build_pllava(path):
    """The paper's own format: ``model_type: "llava"`` with PLLaVA's pooling fields."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tokenizer = llama_tokenizer()
    config = LlavaConfig(
        vision_config=_vision_config(), text_config=_text_config(tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=16)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    _scale_text_weights(model)
    _save(model, tokenizer, path, {
        "preprocessor_config.json": {"image_processor_type": "CLIPImageProcessor",
                                     **_pixel_settings()},
    })
    saved = json.loads((path / "config.json").read_text())
    saved.update(pooling_shape=[2, 2, 2], num_frames=4, use_pooling=True,
                 pooling_method="avg", frame_shape=[IMAGE_SIZE // PATCH] * 2)
    _write_json(path, "config.json", saved)
    return path


def build_video_llava(path):
    from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

    tokenizer = legacy_llama_tokenizer()  # the llava-hf Vicuna tokenizer.json layout
    per_frame = (IMAGE_SIZE // PATCH) ** 2 + 1
    config = VideoLlavaConfig(
        vision_config=_vision_config(), text_config=_text_config(tokenizer),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default",
        image_seq_length=per_frame - 1, video_seq_length=8 * per_frame)
    torch.manual_seed(0)
    model = VideoLlavaForConditionalGeneration(config).eval()
    _scale_text_weights(model)
    _save(model, tokenizer, path, {
        "processor_config.json": {"processor_class": "VideoLlavaProcessor", "patch_size": PATCH,
                                  "vision_feature_select_strategy": "default",
                                  "num_additional_image_tokens": 1},
        "video_preprocessor_config.json": {"video_processor_type": "VideoLlavaVideoProcessor",
                                           **_pixel_settings()},
        "preprocessor_config.json": {"image_processor_type": "VideoLlavaImageProcessor",
                                     **_pixel_settings()},
    })
    return path


BUILDERS = {"llava_next_video": build_llava_next_video, "llava_next": build_llava_next,
            "pllava": build_pllava, "video_llava": build_video_llava}
N_FRAMES = {"llava_next_video": 4, "llava_next": 4, "pllava": 4, "video_llava": 8}
LOAD_OPTIONS = {"llava_next_video": {"num_frames": 4},
                "llava_next": {"pooling_shape": (2, 2, 2), "num_frames": 4},
                "pllava": {},  # pooling shape and frame count from its config.json
                "video_llava": {}}
POOLED = ("llava_next", "pllava")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {family: build(tmp_path_factory.mktemp(family)) for family, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def loaded(checkpoints):
    return {family: load_videollm(path, **LOAD_OPTIONS[family])
            for family, path in checkpoints.items()}


def _hf_model(family, path):
    from transformers import (LlavaForConditionalGeneration, LlavaNextForConditionalGeneration,
                              LlavaNextVideoForConditionalGeneration,
                              VideoLlavaForConditionalGeneration)

    model_class = {"llava_next_video": LlavaNextVideoForConditionalGeneration,
                   "llava_next": LlavaNextForConditionalGeneration,
                   "pllava": LlavaForConditionalGeneration,
                   "video_llava": VideoLlavaForConditionalGeneration}[family]
    return model_class.from_pretrained(path, attn_implementation="eager").eval()


def _frames(n: int, seed: int = 0, size=(40, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def _sample(family, video=None, answer=1) -> VideoSample:
    return VideoSample(video=_frames(N_FRAMES[family]) if video is None else video,
                       question=QUESTION, options=OPTIONS, answer=answer)


@torch.no_grad()
def _hf_reference_inputs(family, hf, x) -> dict:
    """The HF model's own inputs for the same prompt and video. LLaVA-NeXT-Video and Video-LLaVA
    place the video themselves from input ids + pixels; for the pooled LLaVA-NeXT path the video
    tokens are computed here by hand (tower → projector → block means over T, H, W)."""
    if family not in POOLED:
        return {"input_ids": x.input_ids, "pixel_values_videos": x.meta["pixel_values_videos"]}
    pixels = x.meta["pixel_values"]
    hidden = hf.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    projected = hf.model.multi_modal_projector(hidden)  # [T, 16, d]
    t_out, h_out, w_out = x.meta["pooling_shape"]
    n_frames, d = projected.shape[0], projected.shape[-1]
    blocks = projected.reshape(t_out, n_frames // t_out, h_out, 4 // h_out, w_out, 4 // w_out, d)
    video = blocks.mean(dim=(1, 3, 5)).reshape(-1, d)
    embeds = hf.get_input_embeddings()(x.input_ids).clone()
    positions = (x.input_ids[0] == hf.config.image_token_id).nonzero()[:, 0]
    embeds[0, positions] = video
    return {"inputs_embeds": embeds}


# ---------------------------------------------------------------------- logits
@pytest.mark.parametrize("family", list(BUILDERS))
def test_backbone_logits_equal_the_hf_models_own_forward(family, checkpoints, loaded):
    vlm = loaded[family]
    x = vlm.prepare(_sample(family))
    hf = _hf_model(family, checkpoints[family])
    with torch.no_grad():
        reference = hf(**_hf_reference_inputs(family, hf, x)).logits
    ours = vlm(x)
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max() <= 1e-4
    assert x.segments.n_positions == x.input_ids.shape[1] == x.embeds.shape[1]


def test_mp4_video_file_goes_through_the_same_path(checkpoints, loaded, tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    frames = _frames(12, seed=3, size=(48, 64))
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=6)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    vlm = loaded["llava_next_video"]
    x = vlm.prepare(_sample("llava_next_video", video=str(path)))
    assert x.frames.shape == (4, 48, 64, 3) and x.segments.n_frames == 4
    hf = _hf_model("llava_next_video", checkpoints["llava_next_video"])
    with torch.no_grad():
        reference = hf(input_ids=x.input_ids,
                       pixel_values_videos=x.meta["pixel_values_videos"]).logits
    assert (vlm(x) - reference).abs().max() <= 1e-4


def test_bfloat16_load_puts_vision_and_backbone_in_bfloat16(checkpoints):
    vlm = load_videollm(checkpoints["llava_next_video"], dtype=torch.bfloat16, num_frames=4)
    x = vlm.prepare(_sample("llava_next_video"))
    assert vlm.backbone.cfg.dtype == torch.bfloat16 and x.embeds.dtype == torch.bfloat16
    assert next(vlm.vision.parameters()).dtype == torch.bfloat16
    hf = _hf_model("llava_next_video", checkpoints["llava_next_video"])
    with torch.no_grad():
        reference = hf(input_ids=x.input_ids,
                       pixel_values_videos=x.meta["pixel_values_videos"].float()).logits
    assert (vlm(x).float() - reference).abs().max() <= 0.1  # bf16 rounding only


# ---------------------------------------------------------------------- positions
def _processor_expansion(family, pixels) -> int:
    """How many video tokens the HF processor puts in place of the placeholder: its own
    ``replace_video_token`` code (the processors themselves need torchvision to be built)."""
    from transformers import LlavaNextVideoProcessor, VideoLlavaProcessor

    processor_class = {"llava_next_video": LlavaNextVideoProcessor,
                       "video_llava": VideoLlavaProcessor}[family]
    settings = SimpleNamespace(patch_size=PATCH, num_additional_image_tokens=1,
                               video_token="<video>")
    text = processor_class.replace_video_token(settings, {"pixel_values_videos": pixels}, 0)
    return text.count("<video>")


@pytest.mark.parametrize("family", ["llava_next_video", "video_llava"])
def test_video_positions_are_where_the_processor_puts_video_tokens(family, loaded):
    vlm = loaded[family]
    x = vlm.prepare(_sample(family))
    n_video = _processor_expansion(family, x.meta["pixel_values_videos"])
    expanded = x.prompt.replace("<video>", "<video>" * n_video)
    expected = torch.tensor([vlm.tokenizer(expanded)["input_ids"]])
    assert torch.equal(x.input_ids, expected)
    video_positions = (expected[0] == vlm.tokenizer.convert_tokens_to_ids("<video>")).nonzero()
    video_positions = video_positions[:, 0].tolist()
    seg = x.segments
    assert list(seg.video.positions) == video_positions
    n_frames = N_FRAMES[family]
    per_frame = n_video // n_frames
    if family == "llava_next_video":  # 4×4 patches, stride-2 pooling → 2×2 per frame
        grids, prefix = [(2, 2)] * n_frames, 0
    else:  # Video-LLaVA: CLS + 4×4 patches per frame
        grids, prefix = [(4, 4)] * n_frames, 1
        assert [s.name for s in seg.separators] == [f"frame_{t}_cls" for t in range(n_frames)]
    for t, frame in enumerate(seg.frames):
        start = video_positions[0] + t * per_frame + prefix
        assert (frame.index, frame.grid) == (t, grids[t])
        assert list(frame.positions) == video_positions[t * per_frame + prefix:(t + 1) * per_frame]
        assert frame.start == start
        for separator in seg.separators:
            assert not frame.overlaps(separator)


@pytest.mark.parametrize("family", list(BUILDERS))
def test_text_segments_decode_to_question_and_options(family, loaded):
    vlm = loaded[family]
    x = vlm.prepare(_sample(family, answer=2))
    seg, ids = x.segments, x.input_ids[0]
    decode = vlm.tokenizer.decode
    assert decode(ids[seg.question.start:seg.question.stop]).strip() == QUESTION
    labelled = [f"({label}) {text}" for label, text in zip("ABCD", OPTIONS)]
    assert [decode(ids[o.start:o.stop]).strip() for o in seg.options] == labelled
    assert [decode(ids[t.start:t.stop]).strip() for t in seg.option_texts] == OPTIONS
    coarse = seg.question_with_options
    assert decode(ids[coarse.start:coarse.stop]).strip() == (
        f"Question: {QUESTION}\nOptions:\n" + "\n".join(labelled))
    assert seg.true_option.label == "C" and seg.true_option.text == "sit down"
    # PLLaVA-format checkpoints get the official eval_mvbench spacing, the others the plain block
    ending = ("option. ASSISTANT:Best option:(" if family == "pllava"
              else "option. ASSISTANT: Best option:(")
    assert seg.last.start == x.n_positions - 1 and x.prompt.endswith(ending)
    assert seg.system.start == 0 and seg.system.stop == seg.video.start
    letters = vlm.tokenizer.convert_ids_to_tokens(x.answer_ids.tolist())
    assert letters == ["A", "B", "C"] and x.answer_token == x.answer_ids[2]


@pytest.mark.parametrize("family", POOLED)
def test_pooled_llava_next_places_thw_tokens_at_the_image_placeholder(family, loaded):
    vlm = loaded[family]
    x = vlm.prepare(_sample(family))
    image_id = vlm.tokenizer.convert_tokens_to_ids("<image>")
    positions = (x.input_ids[0] == image_id).nonzero()[:, 0].tolist()
    assert len(positions) == 2 * 2 * 2 == len(x.segments.video)
    assert positions == list(x.segments.video.positions)
    assert [(f.index, f.grid, len(f)) for f in x.segments.frames] == [(0, (2, 2), 4),
                                                                      (1, (2, 2), 4)]
    assert "<image>" in x.prompt and "<video>" not in x.prompt


# ---------------------------------------------------------------------- knockout
@pytest.mark.parametrize("family", list(BUILDERS))
def test_knockout_equals_hf_with_explicit_4d_mask(family, checkpoints, loaded):
    vlm = loaded[family]
    x = vlm.prepare(_sample(family))
    seg, n = x.segments, x.n_positions
    heads = vlm.backbone.cfg.n_heads
    cut = E.cross_frame(seg) | E.video_to_question(seg) | E.true_option_to_last(seg)
    layers = [0, 2]
    ours = vlm.run_with_hooks(x, fwd_hooks=knockout(cut, layers))
    frames = [list(f.positions) for f in seg.frames]
    # the coarse question ("Question:" … last option), whose text the decode test pins
    question_block = range(seg.question_with_options.start, seg.question_with_options.stop)
    assert seg.video.stop < question_block.start and question_block.stop < seg.last.start
    pairs = [(sum(frames[:t], []), frames[t]) for t in range(1, len(frames))]
    pairs += [(seg.video.positions, question_block),
              (seg.options[1].positions, seg.last.positions)]  # the sample's true option is B
    blocked = block_mask(n, pairs)
    hf = _hf_model(family, checkpoints[family])
    inputs = _hf_reference_inputs(family, hf, x)
    reference = hf_logits_with_layer_masks(
        hf, {layer: additive_mask(n, blocked, heads) for layer in layers},
        additive_mask(n, None, heads), **inputs)
    assert (ours - reference).abs().max() <= 1e-4
    assert (ours - vlm(x)).abs().max() > 1e-3, "the knockout should change the output"


# ---------------------------------------------------------------------- bad input
def test_unsupported_model_type_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "blip_2"}))
    with pytest.raises(ValueError, match="not supported.*llava_next_video"):
        load_videollm(tmp_path)
    assert {"llava_next_video", "llava_next", "video_llava"} <= set(supported_architectures())


def test_missing_weights_and_uncached_hub_id_say_how_to_download(checkpoints, tmp_path):
    config = json.loads((checkpoints["video_llava"] / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"no model weights.*hf download"):
        load_videollm(tmp_path)
    with pytest.raises(ValueError, match=r"mapflow-tl-tests/not-a-model.*hf download"):
        load_videollm("mapflow-tl-tests/not-a-model")


@pytest.mark.parametrize("frames, message", [
    (np.zeros((4, 40, 48, 3), dtype=np.float32), "must be uint8"),
    (np.zeros((4, 40, 48), dtype=np.uint8), r"shape \[T, H, W, 3\]"),
    (np.zeros((4, 3, 40, 48), dtype=np.uint8), r"shape \[T, H, W, 3\]"),
    ("not/a/video.mp4", "video.mp4"),
])
def test_bad_frames_are_named(loaded, frames, message):
    with pytest.raises(ValueError, match=message):
        loaded["llava_next_video"].prepare(_sample("llava_next_video", video=frames))


def test_frame_count_the_model_cannot_use_is_an_error(loaded):
    with pytest.raises(ValueError, match="exactly 8 frames, got 5"):
        loaded["video_llava"].prepare(_sample("video_llava", video=_frames(5)))
    with pytest.raises(ValueError, match="at least 2 frames, got 1"):
        loaded["llava_next"].prepare(_sample("llava_next", video=_frames(1)))


def test_unlocatable_question_is_an_error(checkpoints):
    def shouting(block, media):
        return f"USER: {media}\n{block.upper()} ASSISTANT:"

    vlm = load_videollm(checkpoints["llava_next_video"], template=shouting)
    with pytest.raises(ValueError, match="question block does not appear verbatim"):
        vlm.prepare(_sample("llava_next_video"))


def test_unknown_load_option_is_an_error(checkpoints):
    with pytest.raises(ValueError, match="unknown load option.*pooling_shape"):
        load_videollm(checkpoints["llava_next_video"], pooling_shape=(8, 12, 12))


def test_config_that_does_not_match_the_weights_names_the_tensors(checkpoints, tmp_path):
    import shutil

    path = tmp_path / "mismatched"
    shutil.copytree(checkpoints["llava_next_video"], path)
    config = json.loads((path / "config.json").read_text())
    config["text_config"]["intermediate_size"] *= 2
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"do not have the shapes its config.json describes "
                                         r"\(model\.language_model\.layers\.\d\.mlp\..*checkpoint"):
        load_videollm(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
        load_videollm(path)
