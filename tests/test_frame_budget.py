"""Frame budgets bounded by the model's context (issue 35, "Long videos"): a prompt whose frames
do not fit the backbone's context is refused by one line that names the frames, the tokens per
frame, the positions needed, the context and the largest frame count that fits."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mapflow_tl.errors import InputError
from mapflow_tl.models import VideoSample, load_videollm
from mapflow_tl.models.adapter import check_context_length


def test_the_error_names_frames_tokens_positions_context_and_what_fits():
    # 64 frames of 144 tokens + 105 text positions = 9,321 > 4,096; by hand, (4096 − 105) // 144
    # = 27 frames fit (27·144 + 105 = 3,993; 28·144 + 105 = 4,137).
    config = SimpleNamespace(max_position_embeddings=4096)
    with pytest.raises(InputError) as error:
        check_context_length(9321, config, n_frames=64, video_positions=lambda k: 144 * k)
    message = str(error.value)
    assert "\n" not in message
    assert message == ("the prompt has 9321 positions, more than the backbone's "
                       "max_position_embeddings 4096: 64 frames × 144 tokens per frame + 105 "
                       "other positions; at most 27 frames fit — pass num_frames=27 "
                       "(load_videollm(..., num_frames=N), CLI --num-frames N)")
    check_context_length(27 * 144 + 105, config, n_frames=27, video_positions=lambda k: 144 * k)


def test_sliding_window_and_frame_counts_that_cannot_help():
    window = SimpleNamespace(max_position_embeddings=32768, sliding_window=4096)
    with pytest.raises(InputError, match=r"sliding window 4096.*at most 27 frames fit"):
        check_context_length(9321, window, n_frames=64, video_positions=lambda k: 144 * k)
    # a pooled video takes the same positions whatever the frame count: no count fits
    config = SimpleNamespace(max_position_embeddings=1000)
    with pytest.raises(InputError, match=r"16 frames × 72 tokens per frame \+ 10 other "
                                         r"positions; no frame count fits \(the fewest frames "
                                         r"still take 1162 positions\)"):
        check_context_length(1162, config, n_frames=16, video_positions=lambda k: 1152)
    # a family that knows only the count it sampled names the split and the flag
    with pytest.raises(InputError, match=r"64 frames × 144 tokens per frame \+ 105 other "
                                         r"positions; use fewer frames \(.*--num-frames N\)"):
        check_context_length(9321, SimpleNamespace(max_position_embeddings=4096), n_frames=64,
                             video_positions=lambda k: 144 * k if k == 64 else None)


def _frame_folder(path, n: int):
    from PIL import Image

    path.mkdir()
    rng = np.random.default_rng(0)
    for index in range(1, n + 1):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            path / f"{index:05d}.png")
    return path


def test_a_model_refuses_more_frames_than_its_context_holds(tmp_path):
    # SynthTV's backbone: 512 positions, 4 tokens per frame, 42 other positions with this
    # prompt; by hand, (512 − 42) // 4 = 117 frames fit (510 positions), 118 do not (514).
    folder = _frame_folder(tmp_path / "frames", 8)  # sampled with repeats, as the reference
    sample = VideoSample(str(folder), "Which way does the object move?",
                         ["left", "right", "up", "down"], answer=0)
    too_many = load_videollm("synthtv-video-ft", num_frames=120)
    with pytest.raises(InputError, match=r"^the prompt has 522 positions, more than the "
                                         r"backbone's max_position_embeddings 512: 120 frames "
                                         r"× 4 tokens per frame \+ 42 other positions; at most "
                                         r"117 frames fit — pass num_frames=117"):
        too_many.prepare(sample)
    fits = load_videollm("synthtv-video-ft", num_frames=117).prepare(sample)
    assert fits.n_positions == 510
    # an array is used as given: the error says to pass fewer frames, not num_frames
    frames = np.zeros((120, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(InputError, match=r"at most 117 frames fit \(the sample's frame array is "
                                         r"used as given: pass fewer frames\)"):
        too_many.prepare(VideoSample(frames, sample.question, sample.options, answer=0))
