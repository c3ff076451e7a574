"""SmolVLM2 (``smolvlm``) on a tiny random model of the real HF class, saved with its processor
files to a temporary directory and loaded back through ``load_videollm``.

References are independent of the code under test: the HF model's own forward (eager attention)
on the same token ids and pixels, its own ``get_image_features`` for the frame grids, the HF
processor's own ``replace_video_token`` for where the video tokens go, and the HF model run with
explicit 4D masks for knockouts and a flow sweep.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from family_checks import check_bf16, check_fast_sweep, check_flow_sweep, check_knockout
from mapflow_tl.models import VideoSample, load_videollm
from test_models_qwen import OPTIONS, QUESTION, check_logits, frames_array, hf_model_of

HF_CLASS = "SmolVLMForConditionalGeneration"
TEXT = ("User: Assistant: Question: What does the cat do in the video? Options: (A) It runs "
        "away. (B) It sits still. (C) It jumps up. Only give the best option. Best option:( You "
        "are provided the following series of four frames from a 0:00:00 [H:MM:SS] video. Frame "
        "from 00:00:")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<image>",
            "<fake_token_around_image>", "<global-img>"]
#: The SmolVLM2 checkpoints' own chat template: images only (the processor swaps in its video
#: template for a conversation with a video).
IMAGE_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")
GRID = (2, 2)  # 32 px / patch 8 = 4×4 patches, pixel shuffle 2 → 2×2 tokens per frame


def smol_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<end_of_utterance>", pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<image>",
                              "fake_image_token": "<fake_token_around_image>",
                              "global_image_token": "<global-img>"})
    fast.chat_template = IMAGE_TEMPLATE
    return fast


def build(path, **config_overrides):
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration

    tokenizer = smol_tokenizer()
    config = SmolVLMConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=48,
                         intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=1024,
                         rope_theta=100000.0, rms_norm_eps=1e-5),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=2,
        **config_overrides)
    torch.manual_seed(0)
    model = SmolVLMForConditionalGeneration(config).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # larger weights: attention far from uniform, knockouts show
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2 and "text_model" in name:
                parameter.normal_(0, 0.15)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    # The releases keep the video settings in preprocessor_config.json (the image processor's
    # file, with "video_sampling"); LANCZOS (1) as theirs. 40×48 frames: longest edge to 64
    # (54×64), then the 32×32 square.
    (path / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SmolVLMImageProcessor", "do_image_splitting": True,
        "max_image_size": {"longest_edge": 32}, "size": {"longest_edge": 64}, "resample": 1,
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
        "video_sampling": {"fps": 1, "max_frames": 64, "video_size": {"longest_edge": 64}}}))
    (path / "processor_config.json").write_text(json.dumps({
        "processor_class": "SmolVLMProcessor", "image_seq_len": GRID[0] * GRID[1]}))
    return path


@pytest.fixture(scope="module")
def smolvlm_dir(tmp_path_factory):
    return build(tmp_path_factory.mktemp("smolvlm"))


@pytest.fixture(scope="module")
def smolvlm(smolvlm_dir):
    vlm = load_videollm(smolvlm_dir)
    x = vlm.prepare(VideoSample(frames_array(), QUESTION, OPTIONS, answer=1))
    return vlm, x, hf_model_of(smolvlm_dir, HF_CLASS)


def test_smolvlm_logits_equal_hf(smolvlm):
    vlm, x, hf_model = smolvlm
    assert vlm.family == "SmolVLM2"
    diff = check_logits(vlm, hf_model, x)
    print(f"smolvlm logits max abs diff {diff:.1e}")


def test_smolvlm_prompt_is_the_processors_video_conversation(smolvlm):
    from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

    vlm, x, _ = smolvlm
    options = "".join(f"({label}) {text}\n" for label, text in zip("ABC", OPTIONS))
    assert x.prompt == (f"<|im_start|>User: <video>Question: {QUESTION}\nOptions:\n{options}"
                        f"Only give the best option.<end_of_utterance>\nAssistant: Best option:(")
    assert vlm.tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE
    seg, ids, decode = x.segments, x.input_ids[0], vlm.tokenizer.decode
    assert decode(ids[seg.question.start:seg.question.stop]).strip() == QUESTION
    assert [decode(ids[o.start:o.stop]).strip() for o in seg.options] == [
        f"({label}) {text}" for label, text in zip("ABC", OPTIONS)]
    assert seg.true_option.label == "B" and seg.last.start == x.n_positions - 1
    assert [decode([int(i)]) for i in x.answer_ids] == ["A", "B", "C"]


def test_smolvlm_video_layout_follows_the_hf_processor_and_model(smolvlm, monkeypatch):
    from transformers.models.smolvlm import processing_smolvlm
    from transformers.video_utils import VideoMetadata

    vlm, x, hf_model = smolvlm
    seg, ids = x.segments, x.input_ids[0]
    image_id = hf_model.config.image_token_id
    assert [frame.grid for frame in seg.frames] == [GRID] * 4
    for t, frame in enumerate(seg.frames):
        assert frame.index == t and bool((ids[frame.start:frame.stop] == image_id).all())
    outside = [p for p in range(len(ids)) if not seg.video.start <= p < seg.video.stop]
    assert not bool((ids[outside] == image_id).any())
    covered = sorted(p for span in list(seg.frames) + list(seg.separators) for p in span)
    assert covered == list(range(seg.video.start, seg.video.stop))
    # Where the HF processor puts the video: its own replace_video_token for frames without
    # metadata (24 fps assumed), the count written in words by num2words (not installed here:
    # the one word this video needs, by hand).
    monkeypatch.setattr(processing_smolvlm, "num2words", {4: "four"}.__getitem__)
    processor = SimpleNamespace(image_seq_len=4, image_token="<image>",
                                fake_image_token="<fake_token_around_image>",
                                global_image_token="<global-img>")
    metadata = VideoMetadata(total_num_frames=4, fps=None, frames_indices=[0, 1, 2, 3])
    expected = processing_smolvlm.SmolVLMProcessor.replace_video_token(
        processor, {"video_metadata": [metadata]}, 0)
    assert expected.startswith("You are provided the following series of four frames")
    # The video segment is that text up to its closing blank line ("\n\n", whitespace at a
    # span's edge, as every span); the question block follows right after it.
    decode = vlm.tokenizer.decode
    assert decode(ids[seg.video.start:seg.video.stop]) == expected.removesuffix("\n\n")
    assert decode(ids[seg.video.start:seg.question_with_options.start]) == expected
    # The separators: intro + "\nFrame from 00:00:<fake><global-img>" before each frame, the
    # closing "<fake>" after it.
    assert decode(ids[seg.separators[1].start:seg.separators[1].stop]) == (
        "<fake_token_around_image>\nFrame from 00:00:<fake_token_around_image><global-img>")
    # The grid the model used: its own pixel-shuffled features [T, H, W, d] at frame.position.
    inputs = x.meta["model_inputs"]
    with torch.no_grad():
        features = hf_model.model.get_image_features(
            inputs["pixel_values"], inputs["pixel_attention_mask"]).pooler_output[0]
    grid = features.reshape(4, *GRID, -1)
    for frame in seg.frames:
        for h in range(GRID[0]):
            for w in range(GRID[1]):
                assert torch.equal(x.embeds[0, frame.position(h, w)], grid[frame.index, h, w])


def test_smolvlm_timestamps_of_a_video_file_follow_the_processor(smolvlm, monkeypatch):
    """Frames with their own times (from a file): "Frame from mm:ss" and the duration as the
    processor writes them from a video's metadata without a duration."""
    from transformers.models.smolvlm import processing_smolvlm
    from transformers.video_utils import VideoMetadata

    vlm, _, _ = smolvlm
    monkeypatch.setattr(processing_smolvlm, "num2words", {3: "three"}.__getitem__)
    processor = SimpleNamespace(image_seq_len=4, image_token="<image>",
                                fake_image_token="<fake_token_around_image>",
                                global_image_token="<global-img>")
    metadata = VideoMetadata(total_num_frames=400, fps=2.0, frames_indices=[1, 61, 151])
    expected = processing_smolvlm.SmolVLMProcessor.replace_video_token(
        processor, {"video_metadata": [metadata]}, 0)
    assert "Frame from 01:15:" in expected and "0:01:15 [H:MM:SS]" in expected
    assert vlm.adapter.expansion(np.array([0.5, 30.5, 75.5])) == expected


def test_smolvlm_from_an_mp4_file_writes_its_frames_times(smolvlm_dir, tmp_path):
    """A video file's frames carry their times: 30 frames at 1 fps, midpoints 3, 10, 17, 25."""
    from test_models_qwen import write_mp4

    video = write_mp4(tmp_path / "clip.mp4", n_frames=30, fps=1)
    vlm = load_videollm(smolvlm_dir, num_frames=4)
    x = vlm.prepare(VideoSample(video, QUESTION, OPTIONS, answer=0))
    assert x.meta["timestamps"] == [3.0, 10.0, 17.0, 25.0] and len(x.segments.frames) == 4
    text = vlm.tokenizer.decode(x.input_ids[0, x.segments.video.start:x.segments.video.stop])
    assert text.startswith("You are provided the following series of four frames from a "
                           "0:00:25 [H:MM:SS] video.\n")
    assert [line.split(":<")[0] for line in text.split("\n") if line.startswith("Frame")] == [
        f"Frame from 00:{second:02d}" for second in (3, 10, 17, 25)]
    check_logits(vlm, hf_model_of(smolvlm_dir, HF_CLASS), x)


def test_smolvlm_number_words_are_num2words():
    from mapflow_tl.models.smolvlm import number_words

    written = {1: "one", 8: "eight", 13: "thirteen", 20: "twenty", 21: "twenty-one",
               64: "sixty-four", 99: "ninety-nine"}  # num2words(n), by hand
    assert {n: number_words(n) for n in written} == written


def test_smolvlm_knockout_equals_hf_with_explicit_masks(smolvlm):
    vlm, x, hf_model = smolvlm
    coarse = x.segments.question_with_options
    assert vlm.tokenizer.decode(x.input_ids[0, coarse.start:coarse.stop]).startswith(
        f"Question: {QUESTION}")
    print(f"smolvlm knockout max abs diff {check_knockout(vlm, x, hf_model):.1e}")


def test_smolvlm_fast_sweep_equals_naive_sweep(smolvlm):
    vlm, x, _ = smolvlm
    print(f"smolvlm fast vs naive sweep max abs diff {check_fast_sweep(vlm, x):.1e}")


def test_smolvlm_flow_sweep_matches_hf_with_explicit_masks(smolvlm):
    vlm, x, hf_model = smolvlm
    print(f"smolvlm flow sweep p_true max abs diff {check_flow_sweep(vlm, x, hf_model):.1e}")


def test_smolvlm_bf16_runs_close_to_hf_bf16(smolvlm_dir):
    check_bf16(smolvlm_dir, HF_CLASS, VideoSample(frames_array(), QUESTION, OPTIONS, answer=1),
               hf_model_of)


@pytest.mark.parametrize("drop_size", [False, True], ids=["size", "video_sampling"])
def test_smolvlm_frame_sizes_are_the_video_processors(tmp_path, drop_size):
    """The settings the HF video processor takes from the same file (its own __init__: the
    file's "size" wins over video_sampling's video_size, which applies without it)."""
    from transformers.models.smolvlm.video_processing_smolvlm import SmolVLMVideoProcessor

    path = build(tmp_path / "model")
    settings = json.loads((path / "preprocessor_config.json").read_text())
    settings["video_sampling"]["video_size"] = {"longest_edge": 48}
    if drop_size:
        del settings["size"]
    (path / "preprocessor_config.json").write_text(json.dumps(settings))
    processor = SmolVLMVideoProcessor(**settings)
    ours = load_videollm(path).adapter.video_config
    assert ours["size"] == {k: v for k, v in dict(processor.size).items() if v is not None}
    assert ours["size"] == {"longest_edge": 48 if drop_size else 64}
    assert ours["max_image_size"] == processor.max_image_size
    assert ours["resample"] == processor.resample


def test_smolvlm_refuses_a_processor_of_another_size(tmp_path):
    path = build(tmp_path / "model")
    settings = json.loads((path / "preprocessor_config.json").read_text())
    settings["max_image_size"] = {"longest_edge": 48}
    (path / "preprocessor_config.json").write_text(json.dumps(settings))
    with pytest.raises(ValueError, match="max_image_size"):
        load_videollm(path)
