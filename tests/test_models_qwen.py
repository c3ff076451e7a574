"""Qwen-family adapters (LLaVA-OneVision, VideoLLaMA3, InternVL) on tiny random models of the real
Hugging Face classes, saved to a temporary directory and loaded back through ``load_videollm``.

References are independent of the code under test: the HF model's own forward (eager attention) on
the same token ids and pixel values, its own ``get_video_features`` / ``get_image_features`` for
the frame grids, the HF processors' own ``replace_video_token`` for where video tokens go, and the
HF model run with explicit 4D masks for knockouts.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import mapflow_tl as mf
from mapflow_tl.models import VideoSample, load_videollm
from mapflow_tl.testing import additive_mask, block_mask, hf_logits_with_layer_masks

QUESTION = "What does the cat do in the video?"
OPTIONS = ["It runs away.", "It sits still.", "It jumps up."]
TEXT = ("Question: What does the cat do in the video? Options: (A) It runs away. (B) It sits "
        "still. (C) It jumps up. Only give the best option. Best option:( system user assistant "
        "Time Frame")


def byte_level_tokenizer(specials: list[str], named: dict[str, str], chat_template: str):
    """A tiny byte-level BPE tokenizer (tokenizers library) with the family's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", extra_special_tokens=named)
    fast.chat_template = chat_template
    return fast


def qwen_template(video: str) -> str:
    """A ChatML template like Qwen's: the video placeholder first in the user turn."""
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
        "{% for c in message['content'] %}{% if c['type'] == 'video' %}" + video + "\n"
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def scale_up(model: torch.nn.Module) -> None:
    """Larger random weights so that attention is far from uniform and knockouts show."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2 and "language_model" in name:
                parameter.normal_(0, 0.15)


def tiny_qwen2(vocab_size: int, **extra) -> dict:
    return dict(model_type="qwen2", vocab_size=vocab_size, hidden_size=48, intermediate_size=96,
                num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                max_position_embeddings=1024, rope_theta=1000.0, rms_norm_eps=1e-6, **extra)


def frames_array(n_frames: int = 4, height: int = 40, width: int = 48, seed: int = 0):
    return np.random.RandomState(seed).randint(0, 256, (n_frames, height, width, 3),
                                               dtype=np.uint8)


def hf_model_of(path, class_name):
    import transformers

    return getattr(transformers, class_name).from_pretrained(
        path, attn_implementation="eager").eval()


def check_logits(vlm, hf_model, x, **feature_inputs):
    inputs = {name: value for name, value in x.meta["model_inputs"].items()}
    with torch.no_grad():
        expected = hf_model(input_ids=x.input_ids, **inputs, **feature_inputs).logits
    got = vlm.run_with_hooks(x)
    assert got.shape == expected.shape
    diff = (got - expected).abs().max().item()
    assert diff <= 1e-4, diff
    return diff


def check_layout(x, feature_token_id):
    """Frames lie on feature tokens, in order; separators do not; frames + separators tile the
    video segment; nothing outside the video is a feature token."""
    seg, ids = x.segments, x.input_ids[0]
    for t, frame in enumerate(seg.frames):
        assert frame.index == t
        assert bool((ids[frame.start:frame.stop] == feature_token_id).all())
    covered = sorted(p for span in list(seg.frames) + list(seg.separators) for p in span)
    assert covered == list(range(seg.video.start, seg.video.stop))
    frame_positions = {p for frame in seg.frames for p in frame}
    for separator in seg.separators:
        assert not frame_positions & set(separator.positions)
    outside = [p for p in range(len(ids)) if not seg.video.start <= p < seg.video.stop]
    assert not bool((ids[outside] == feature_token_id).any())


# ---------------------------------------------------------------------------- LLaVA-OneVision
@pytest.fixture(scope="module")
def onevision_dir(tmp_path_factory):
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    tokenizer = byte_level_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<video>", "<image>"],
        {"video_token": "<video>", "image_token": "<image>"}, qwen_template("<video>"))
    config = LlavaOnevisionConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=2, image_size=40,
                           patch_size=8),
        text_config=tiny_qwen2(len(tokenizer)),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_layer=-1, vision_feature_select_strategy="full",
        image_grid_pinpoints=[[40, 40]])
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    scale_up(model)
    with torch.no_grad():  # q/k/v biases are what Qwen2 adds over Llama: make them count
        for layer in model.model.language_model.layers:
            layer.self_attn.q_proj.bias.normal_(0, 0.5)
            layer.self_attn.k_proj.bias.normal_(0, 0.5)
    path = tmp_path_factory.mktemp("llava_onevision")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "LlavaOnevisionVideoProcessor", "size": {"height": 40,
                                                                         "width": 40},
        "resample": 3, "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    return path


@pytest.fixture(scope="module")
def onevision(onevision_dir):
    vlm = load_videollm(onevision_dir)
    x = vlm.prepare(VideoSample(frames_array(), QUESTION, OPTIONS, answer=1))
    return vlm, x, hf_model_of(onevision_dir, "LlavaOnevisionForConditionalGeneration")


def test_onevision_logits_equal_hf(onevision):
    vlm, x, hf_model = onevision
    assert vlm.family == "LLaVA-OneVision"
    check_logits(vlm, hf_model, x)


def test_onevision_video_layout_follows_the_hf_processor_and_model(onevision):
    from transformers.models.llava_onevision.processing_llava_onevision import (
        LlavaOnevisionProcessor,
    )

    vlm, x, hf_model = onevision
    seg = x.segments
    video_id = hf_model.config.video_token_index
    # p = 40 // 8 = 5 patches per side, pooled to ceil(5 / 2) = 3: 4 frames of 3×3, then newline
    assert [frame.grid for frame in seg.frames] == [(3, 3)] * 4
    assert [len(s) for s in seg.separators] == [1] and seg.separators[0].stop == seg.video.stop
    check_layout(x, video_id)
    # Where the HF processor puts the video tokens: its own replace_video_token's text.
    processor = SimpleNamespace(num_image_tokens=25, video_token="<video>")
    expected = LlavaOnevisionProcessor.replace_video_token(
        processor, {"pixel_values_videos": x.meta["model_inputs"]["pixel_values_videos"]}, 0)
    video_ids = x.input_ids[0, seg.video.start:seg.video.stop]
    assert vlm.tokenizer.decode(video_ids) == expected
    # The grid the model really used: its own pooled features, [T, H, W, d], at frame.position.
    with torch.no_grad():
        features = hf_model.model.get_video_features(
            x.meta["model_inputs"]["pixel_values_videos"]).pooler_output[0]
    grid = features[:-1].reshape(4, 3, 3, -1)
    for frame in seg.frames:
        for h in range(3):
            for w in range(3):
                assert torch.equal(x.embeds[0, frame.position(h, w)], grid[frame.index, h, w])
    assert torch.equal(x.embeds[0, seg.separators[0].start], features[-1])


def test_onevision_question_options_answer_tokens(onevision):
    vlm, x, _ = onevision
    seg, tokenizer = x.segments, vlm.tokenizer
    assert tokenizer.decode(x.input_ids[0, seg.question.start:seg.question.stop]).strip() \
        == QUESTION
    for option, label, text in zip(seg.options, "ABC", OPTIONS):  # "(A) text", label included
        assert tokenizer.decode(x.input_ids[0, option.start:option.stop]).strip() == \
            f"({label}) {text}"
        span = option.text_span
        assert tokenizer.decode(x.input_ids[0, span.start:span.stop]).strip() == text
    assert seg.true_option.label == "B"
    assert x.prompt.endswith("<|im_start|>assistant\nBest option:(")
    assert [tokenizer.decode([int(i)]) for i in x.answer_ids] == ["A", "B", "C"]
    assert seg.last.start == x.n_positions - 1


def test_onevision_knockout_equals_hf_with_explicit_masks(onevision):
    vlm, x, hf_model = onevision
    seg = x.segments
    layers = [0, 2]
    edges = mf.cross_frame(seg) | mf.Edges(src=seg.video, dst=seg.question_with_options)
    got = vlm.run_with_hooks(x, mf.knockout(edges, layers))
    n = x.n_positions
    pairs = [(seg.frames[s].positions, seg.frames[d].positions)
             for d in range(len(seg.frames)) for s in range(d)]
    # the coarse question: from "Question:" through the last option ("(C) It jumps up.")
    ids, decode = x.input_ids[0], vlm.tokenizer.decode
    coarse = seg.question_with_options
    assert decode(ids[coarse.start:coarse.stop]).strip() == (
        f"Question: {QUESTION}\nOptions:\n(A) {OPTIONS[0]}\n(B) {OPTIONS[1]}\n(C) {OPTIONS[2]}")
    pairs.append((seg.video.positions, coarse.positions))
    blocked = block_mask(n, pairs)
    heads = hf_model.config.text_config.num_attention_heads
    masks = {layer: additive_mask(n, blocked, heads) for layer in layers}
    expected = hf_logits_with_layer_masks(hf_model, masks, additive_mask(n, None, heads),
                                          input_ids=x.input_ids, **x.meta["model_inputs"])
    baseline = vlm.run_with_hooks(x)
    assert (got - baseline).abs().max() > 1e-2  # the knockout changes something
    assert (got - expected).abs().max().item() <= 1e-4


# ---------------------------------------------------------------------------- VideoLLaMA3
@pytest.fixture(scope="module")
def videollama3_dir(tmp_path_factory):
    from transformers import VideoLlama3Config, VideoLlama3ForConditionalGeneration

    tokenizer = byte_level_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|video_pad|>", "<|image_pad|>"],
        {"video_token": "<|video_pad|>", "image_token": "<|image_pad|>"},
        qwen_template("<|video_pad|>"))
    config = VideoLlama3Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, patch_size=8),
        text_config=tiny_qwen2(len(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"))
    torch.manual_seed(0)
    model = VideoLlama3ForConditionalGeneration(config).eval()
    scale_up(model)
    path = tmp_path_factory.mktemp("video_llama_3")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    # 32×48 frames stay 32×48 (multiples of patch·merge = 16, under longest_edge / 4 frames):
    # 4×6 patches, merged to 2×3 tokens per frame.
    (path / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "VideoLlama3VideoProcessor",
        "size": {"shortest_edge": 16 * 16, "longest_edge": 4 * 32 * 48}, "patch_size": 8,
        "merge_size": 2, "temporal_patch_size": 1, "resample": 3, "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3, "use_token_compression": True}))
    return path


def static_video():
    """Frame 1 repeats frame 0 except merge blocks (0, 0) and (1, 2); frame 2 repeats frame 1;
    frame 3 is new. VideoLLaMA3 keeps 6, 2, 1 (the minimum) and 6 tokens."""
    frames = frames_array(4, 32, 48, seed=3)
    frames[1] = frames[0]
    fresh = frames_array(1, 32, 48, seed=4)[0]
    for h, w in [(0, 0), (1, 2)]:
        frames[1, 16 * h:16 * h + 16, 16 * w:16 * w + 16] = fresh[16 * h:16 * h + 16,
                                                                   16 * w:16 * w + 16]
    frames[2] = frames[1]
    return frames


#: The checkpoint's own processing (its compression and pixel budget, its chat template): the
#: layout tests below pin it against the HF processor; the official runs' settings (the defaults)
#: are tested further down.
MODEL_OWN = dict(token_compression=True, max_visual_tokens=None, prompt_format="chat")


@pytest.fixture(scope="module")
def videollama3(videollama3_dir):
    vlm = load_videollm(videollama3_dir, **MODEL_OWN)
    x = vlm.prepare(VideoSample(static_video(), QUESTION, OPTIONS, answer=2))
    return vlm, x, hf_model_of(videollama3_dir, "VideoLlama3ForConditionalGeneration")


def test_videollama3_logits_equal_hf(videollama3):
    vlm, x, hf_model = videollama3
    check_logits(vlm, hf_model, x)


def test_videollama3_frames_follow_the_kept_tokens(videollama3):
    from transformers.models.video_llama_3.processing_video_llama_3 import VideoLlama3Processor
    from transformers.video_utils import VideoMetadata

    vlm, x, hf_model = videollama3
    seg = x.segments
    check_layout(x, hf_model.config.video_token_id)
    assert [len(frame) for frame in seg.frames] == [6, 2, 1, 6]
    assert [frame.grid for frame in seg.frames] == [(2, 3), None, None, (2, 3)]
    assert x.meta["kept_coords"][1] == [(0, 0), (1, 2)]
    assert x.meta["kept_coords"][2] == [(0, 0)]
    # Separators: "Time 0.0s:" before frame 0, ",Time 1.0s:" etc. between frames.
    assert len(seg.separators) == 4 and seg.separators[0].start == seg.video.start
    decode = vlm.tokenizer.decode
    assert decode(x.input_ids[0, seg.separators[2].start:seg.separators[2].stop]) \
        == ",Time 2.0s:"
    # Where the HF processor puts the video tokens: its own replace_video_token's text.
    inputs = x.meta["model_inputs"]
    expected = VideoLlama3Processor.replace_video_token(
        SimpleNamespace(video_token="<|video_pad|>"),
        {"video_grid_thw": inputs["video_grid_thw"], "video_merge_sizes": inputs[
            "video_merge_sizes"], "video_compression_mask": inputs["video_compression_mask"],
         "video_metadata": [VideoMetadata(total_num_frames=4, fps=None,
                                          frames_indices=[0, 1, 2, 3])]}, 0)
    assert decode(x.input_ids[0, seg.video.start:seg.video.stop]) == expected
    # The model's own merged features [T, H, W, d]: kept tokens land where the map says.
    with torch.no_grad():
        features = hf_model.model.get_video_features(
            inputs["pixel_values_videos"], inputs["video_grid_thw"],
            inputs["video_merge_sizes"]).pooler_output[0].reshape(4, 2, 3, -1)
    for frame, coords in zip(seg.frames, x.meta["kept_coords"]):
        for position, (h, w) in zip(frame.positions, coords):
            assert torch.equal(x.embeds[0, position], features[frame.index, h, w])
        if frame.grid is not None:
            assert frame.position(1, 2) == frame.start + 5


def test_videollama3_knockout_equals_hf_with_explicit_masks(videollama3):
    vlm, x, hf_model = videollama3
    seg = x.segments
    layers = [1]
    edges = mf.cross_frame(seg, frame_text=False)  # the frames' token grids alone (our option)
    got = vlm.run_with_hooks(x, mf.knockout(edges, layers))
    n = x.n_positions
    blocked = block_mask(n, [(seg.frames[s].positions, seg.frames[d].positions)
                             for d in range(len(seg.frames)) for s in range(d)])
    heads = hf_model.config.text_config.num_attention_heads
    expected = hf_logits_with_layer_masks(
        hf_model, {1: additive_mask(n, blocked, heads)}, additive_mask(n, None, heads),
        input_ids=x.input_ids, **x.meta["model_inputs"])
    assert (got - vlm.run_with_hooks(x)).abs().max() > 1e-3
    assert (got - expected).abs().max().item() <= 1e-4


OFFICIAL_V3_INSTRUCTION = ("Answer with the option's letter from the given choices directly "
                           "and only give the best option.")


def official_v3_frames(ids, decode, n_frames):
    """The official VideoLLaMA3 frame cut, re-stated: the video lies between the first two
    standalone "\\n" tokens; frame 0 runs from there to the first "," token, frame i from comma
    i-1 (included) to comma i, the last frame to the second "\\n" (official.md §10)."""
    pieces = [decode([int(i)]) for i in ids]
    borders = [i for i, piece in enumerate(pieces) if piece == "\n"][:2]
    commas = [i for i, piece in enumerate(pieces) if piece.startswith(",")][:n_frames - 1]
    starts = [borders[0] + 1] + commas
    stops = commas + [borders[1]]
    return (borders[0] + 1, borders[1]), list(zip(starts, stops))


@pytest.fixture(scope="module")
def videollama3_paper(videollama3_dir):
    frames = frames_array(4, 64, 96, seed=5)
    frames[1] = frames[0]  # a static frame: the official runs keep all its tokens anyway
    vlm = load_videollm(videollama3_dir)  # defaults = the official runs' settings
    x = vlm.prepare(VideoSample(frames, QUESTION, OPTIONS, answer=1))
    return vlm, x, hf_model_of(videollama3_dir, "VideoLlama3ForConditionalGeneration")


def test_videollama3_paper_prompt_is_the_official_conversation(videollama3_paper):
    vlm, x, hf_model = videollama3_paper
    options = "".join(f"({label}) {text}\n" for label, text in zip("ABC", OPTIONS))
    assert x.prompt == (f"<|im_start|>user\n<|video_pad|>\nQuestion: {QUESTION}\nOptions:\n"
                        f"{options}{OFFICIAL_V3_INSTRUCTION}<|im_end|>\n<|im_start|>assistant\n")
    # no compression, 1152-token budget: 64×96 frames stay 64×96 (multiples of patch·merge = 16,
    # 24 tokens ≤ 1152/4, ≥ 16), so 4×6 tokens per frame, the static frame included
    seg, ids, decode = x.segments, x.input_ids[0], vlm.tokenizer.decode
    assert [(frame.grid, len(frame)) for frame in seg.frames] == [((4, 6), 24)] * 4
    assert decode(ids[seg.video.start:seg.video.stop]) == ",".join(
        f"Time {t}.0s:" + "<|video_pad|>" * 24 for t in range(4))
    # the question and each option take their trailing newline, as the official spans
    assert decode(ids[seg.question.start:seg.question.stop]).lstrip(" ") == f"{QUESTION}\n"
    assert [decode(ids[o.start:o.stop]) for o in seg.options] == [
        f"({label}) {text}\n" for label, text in zip("ABC", OPTIONS)]
    coarse = seg.question_with_options
    assert decode(ids[coarse.start:coarse.stop]) == f"Question: {QUESTION}\nOptions:\n{options}"
    assert x.meta["token_compression"] is False and x.meta["max_visual_tokens"] == 1152
    check_logits(vlm, hf_model, x)


def test_videollama3_frame_extents_are_the_official_frames(videollama3_paper):
    vlm, x, hf_model = videollama3_paper
    seg = x.segments
    video, frames = official_v3_frames(x.input_ids[0], vlm.tokenizer.decode, 4)
    assert (seg.video.start, seg.video.stop) == video
    assert [(f.extent.start, f.extent.stop) for f in seg.frames] == frames
    # cross-frame knockout with the official frames equals the HF model with explicit masks
    layers = [1]
    got = vlm.run_with_hooks(x, mf.knockout(mf.cross_frame(seg), layers))
    n = x.n_positions
    blocked = block_mask(n, [(range(frames[s][0], frames[s][1]), range(*frames[d]))
                             for d in range(4) for s in range(d)])
    heads = hf_model.config.text_config.num_attention_heads
    expected = hf_logits_with_layer_masks(
        hf_model, {1: additive_mask(n, blocked, heads)}, additive_mask(n, None, heads),
        input_ids=x.input_ids, **x.meta["model_inputs"])
    assert (got - expected).abs().max().item() <= 1e-4
    assert (got - vlm.run_with_hooks(x)).abs().max() > 1e-3


# ---------------------------------------------------------------------------- InternVL
@pytest.fixture(scope="module")
def internvl_dir(tmp_path_factory):
    from transformers import InternVLConfig, InternVLForConditionalGeneration

    tokenizer = byte_level_tokenizer(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>",
         "<video>"],
        {"start_image_token": "<img>", "end_image_token": "</img>",
         "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
        qwen_template("<video>"))
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=[48, 48], patch_size=[8, 8]),
        text_config=tiny_qwen2(len(tokenizer), tie_word_embeddings=True),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=9,
        downsample_ratio=0.5)
    torch.manual_seed(0)
    model = InternVLForConditionalGeneration(config).eval()
    scale_up(model)
    path = tmp_path_factory.mktemp("internvl")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "video_preprocessor_config.json").write_text(json.dumps({
        "video_processor_type": "InternVLVideoProcessor", "size": {"height": 48, "width": 48},
        "resample": 3, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    return path


@pytest.fixture(scope="module")
def internvl(internvl_dir):
    vlm = load_videollm(internvl_dir)
    x = vlm.prepare(VideoSample(frames_array(3), QUESTION, OPTIONS, answer=0))
    return vlm, x, hf_model_of(internvl_dir, "InternVLForConditionalGeneration")


def test_internvl_logits_equal_hf(internvl):
    vlm, x, hf_model = internvl
    assert vlm.backbone.W_U.data_ptr() != 0
    check_logits(vlm, hf_model, x)


def test_internvl_frames_sit_between_img_tokens(internvl):
    from transformers.models.internvl.processing_internvl import InternVLProcessor

    vlm, x, hf_model = internvl
    seg = x.segments
    check_layout(x, hf_model.config.image_token_id)
    # 48 px / 8 = 6 patches per side, pixel-shuffled by 0.5: 3×3 tokens per frame
    assert [frame.grid for frame in seg.frames] == [(3, 3)] * 3
    decode = vlm.tokenizer.decode
    assert [decode(x.input_ids[0, s.start:s.stop]) for s in seg.separators] == [
        "Frame1: <img>", "</img>\nFrame2: <img>", "</img>\nFrame3: <img>", "</img>"]
    processor = SimpleNamespace(start_image_token="<img>", end_image_token="</img>",
                                image_token="<IMG_CONTEXT>", image_seq_length=9)
    expected = InternVLProcessor.replace_video_token(
        processor, {"pixel_values_videos": [x.meta["model_inputs"]["pixel_values"]]}, 0)
    assert decode(x.input_ids[0, seg.video.start:seg.video.stop]) == expected
    with torch.no_grad():
        features = hf_model.model.get_image_features(
            x.meta["model_inputs"]["pixel_values"]).pooler_output.reshape(3, 3, 3, -1)
    for frame in seg.frames:
        for h in range(3):
            for w in range(3):
                assert torch.equal(x.embeds[0, frame.position(h, w)], features[frame.index, h, w])


def test_internvl_knockout_equals_hf_with_explicit_masks(internvl):
    vlm, x, hf_model = internvl
    seg, n = x.segments, x.n_positions
    layers = [0, 2]
    edges = mf.cross_frame(seg) | mf.Edges(src=seg.video, dst=seg.last)
    got = vlm.run_with_hooks(x, mf.knockout(edges, layers))
    pairs = [(seg.frames[s].positions, seg.frames[d].positions)
             for d in range(len(seg.frames)) for s in range(d)]
    pairs.append((range(seg.video.start, seg.video.stop), [n - 1]))
    blocked = block_mask(n, pairs)
    heads = hf_model.config.text_config.num_attention_heads
    masks = {layer: additive_mask(n, blocked, heads) for layer in layers}
    expected = hf_logits_with_layer_masks(hf_model, masks, additive_mask(n, None, heads),
                                          input_ids=x.input_ids, **x.meta["model_inputs"])
    assert (got - vlm.run_with_hooks(x)).abs().max() > 1e-3
    assert (got - expected).abs().max().item() <= 1e-4


# ---------------------------------------------------------------------------- files and bad input
def write_mp4(path, n_frames: int = 30, fps: int = 10):
    import av

    frames = frames_array(n_frames, 32, 64, seed=7)  # decord needs widths like 32, 64
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_videollama3_from_an_mp4_file_uses_its_timestamps(videollama3_dir, tmp_path):
    video = write_mp4(tmp_path / "clip.mp4")  # 30 frames at 10 fps
    hf_model = hf_model_of(videollama3_dir, "VideoLlama3ForConditionalGeneration")
    # default: the official VideoLLaMA3 sampling, np.linspace(0, 29, 4, dtype=int) = 0, 9, 19, 29,
    # timed as its load_video: np.linspace(0, 3.0 s, 30)[i] = 0, 0.93, 1.97, 3.0
    # midpoints (the LLaVA path's): int(3.625 + round(7.25 k)) = 3, 10, 17, 25, at i / 10 fps
    for options, seconds in [({}, ["0.0", "0.9", "2.0", "3.0"]),
                             ({"frame_sampler": "midpoints"}, ["0.3", "1.0", "1.7", "2.5"])]:
        vlm = load_videollm(videollama3_dir, num_frames=4, **options)
        x = vlm.prepare(VideoSample(video, QUESTION, OPTIONS, answer=0))
        assert x.frames.shape[0] == 4 and len(x.segments.frames) == 4
        decode = vlm.tokenizer.decode
        texts = [decode(x.input_ids[0, s.start:s.stop]) for s in x.segments.separators]
        assert texts == [f"{',' if t else ''}Time {second}s:" for t, second in enumerate(seconds)]
        check_logits(vlm, hf_model, x)
    import av

    with av.open(str(video)) as container:  # every frame, decoded independently of the reader
        every = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert np.array_equal(x.frames, every[[3, 10, 17, 25]])
    linspace = load_videollm(videollama3_dir, num_frames=4).prepare(
        VideoSample(video, QUESTION, OPTIONS, answer=0))
    assert np.array_equal(linspace.frames, every[[0, 9, 19, 29]])


def test_linspace_timestamps_are_spread_over_the_clip_as_videollama3_times_them():
    from mapflow_tl.models.frames import evenly_timed

    # whole file: 30 frames at 10 fps are np.linspace(0, 3.0, 30); frame 29 is at 3.0 s
    assert np.allclose(evenly_timed(np.array([0, 29]), 30, 10.0, None), [0.0, 3.0])
    # bounds 2–5 s of a 100-frame 10 fps file: frames 20 … 50 spread over 3 s, 0.1 s apart
    assert np.allclose(evenly_timed(np.array([20, 30, 50]), 100, 10.0, (2.0, 5.0)),
                       [2.0, 3.0, 5.0])


def test_bad_input_is_refused_with_what_was_expected(onevision, onevision_dir, tmp_path):
    vlm = onevision[0]
    with pytest.raises(ValueError, match="uint8"):
        vlm.prepare(VideoSample(frames_array().astype(np.float32), QUESTION, OPTIONS))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        vlm.prepare(VideoSample(frames_array()[..., 0], QUESTION, OPTIONS))
    with pytest.raises(ValueError, match="more than once"):  # the placeholder in the question
        vlm.prepare(VideoSample(frames_array(), "What is <video> about?", OPTIONS))
    with pytest.raises(ValueError, match="unknown load option"):
        load_videollm(onevision_dir, pooling_shape=(8, 12, 12))
    with pytest.raises(ValueError, match="frame_sampler 'random' is not one of"):
        load_videollm(onevision_dir, frame_sampler="random")
    with pytest.raises(ValueError, match="unknown load option.*prompt_format"):
        load_videollm(onevision_dir, prompt_format="paper")  # only the paper's own models
    (tmp_path / "config.json").write_text((onevision_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="no model weights"):
        load_videollm(tmp_path)
