"""VideoLLaMA3 (``video_llama_3``, transformers-native): SigLIP-style tower with 2D rotary
positions, bilinear 2×2 merge, Qwen2 / Qwen2.5 backbone with ordinary 1D positions.

How VideoLLaMA3 lays a video out (``VideoLlama3VideoProcessor`` and
``VideoLlama3Processor.replace_video_token``):

- every frame is resized to the same (h, w), multiples of patch·merge, so that all frames together
  stay under ``longest_edge`` pixels; the tower sees (h/patch)×(w/patch) patches per frame and the
  merge pools them to H×W = (h/patch/merge)×(w/patch/merge) tokens, flattened row-major;
- token compression: a token of frame t ≥ 1 is dropped when its pixels differ from the same
  token of frame t−1 by at most 0.1 grey levels on average (at least one token per frame is
  kept). Frames therefore keep different numbers of tokens; the SegmentMap follows what the model
  kept: a frame that kept everything carries its H×W grid, a compressed one carries ``grid=None``
  and ``Prepared.meta["kept_coords"][t]`` lists the (h, w) of each kept token, in order;
- the text is ``Time 0.0s:<tokens of frame 0>,Time 1.0s:<tokens of frame 1>,…``: timestamps and
  commas are separators between the frames.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Bool, Float, UInt8

from .adapter import register_adapter
from .native_adapter import NativeVideoAdapter, VideoInputs
from .pixels import patchify, pixel_budget, smart_resize

__all__ = ["VideoLlama3Adapter", "compression_mask"]


def compression_mask(
    patches: Float[torch.Tensor, "tokens_times_merge2 patch_dim"],
    grid_thw: tuple[int, int, int],
    merge_size: int,
    threshold: float = 0.1,
    min_tokens: int = 1,
) -> Bool[torch.Tensor, " tokens"]:
    """Which merged tokens VideoLLaMA3 keeps: all of frame 0; of frame t ≥ 1 those whose pixels
    (normalised, ×255) differ from frame t−1's by more than ``threshold`` on average; at least
    ``min_tokens`` per frame (the first ones)."""
    t, h, w = grid_thw
    n_tokens = (h // merge_size) * (w // merge_size)
    if t == 1:
        return torch.ones(n_tokens, dtype=torch.bool)
    tokens = patches.reshape(t, n_tokens, -1)
    difference = (tokens[1:] - tokens[:-1]).abs().mean(dim=-1) * 255
    difference = torch.cat([torch.full_like(difference[:1], threshold + 1), difference])
    mask = difference > threshold
    sparse = torch.nonzero(mask.sum(dim=1) < min_tokens)[:, 0]
    mask[sparse, :min_tokens] = True
    return mask.flatten()


@register_adapter
class VideoLlama3Adapter(NativeVideoAdapter):
    """VideoLLaMA3 (``VideoLlama3ForConditionalGeneration``), Qwen2 backbone."""

    model_types = ("video_llama_3",)
    name = "VideoLLaMA3"
    hf_class_name = "VideoLlama3ForConditionalGeneration"
    placeholder_default = "<|video_pad|>"
    # VideoLlama3VideoProcessor's class defaults.
    video_defaults = {"size": {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768},
                      "resample": 3, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                      "patch_size": 14, "temporal_patch_size": 1, "merge_size": 2,
                      "use_token_compression": True}

    def video_inputs(self, frames: UInt8[np.ndarray, "T H W 3"],
                     timestamps: np.ndarray | None) -> VideoInputs:
        c = self.video_config
        size = pixel_budget(c)
        patch, merge, temporal = c["patch_size"], c["merge_size"], c["temporal_patch_size"]
        n_frames, height, width = frames.shape[:3]
        resized = smart_resize(height, width, patch * merge, size["shortest_edge"],
                               size["longest_edge"] // n_frames)
        pixels = self._pixels(frames, resized)  # [T, 3, h, w]
        patches, (grid_t, grid_h, grid_w) = patchify(pixels, patch, merge, temporal)
        kept = (compression_mask(patches, (grid_t, grid_h, grid_w), merge)
                if c.get("use_token_compression", True)
                else torch.ones(grid_t * grid_h * grid_w // merge ** 2, dtype=torch.bool))
        grid = (grid_h // merge, grid_w // merge)
        per_frame = kept.reshape(grid_t, grid[0] * grid[1])
        if timestamps is None:  # frames without metadata: the HF processor assumes 1 fps
            timestamps = np.arange(grid_t, dtype=np.float64)
        if len(timestamps) != grid_t:
            raise ValueError(f"{len(timestamps)} timestamps for {grid_t} frames")
        token = self.placeholder
        counts = [int(frame.sum()) for frame in per_frame]
        expansion = ",".join(f"Time {float(t):.1f}s:" + token * n
                             for n, t in zip(counts, timestamps))
        kept_coords = [[divmod(int(i), grid[1]) for i in frame.nonzero()[:, 0]]
                       for frame in per_frame]
        return VideoInputs(
            model_kwargs={
                "pixel_values_videos": patches,
                "video_grid_thw": torch.tensor([[grid_t, grid_h, grid_w]]),
                "video_merge_sizes": torch.tensor([merge]),
                "video_compression_mask": kept,
            },
            expansion=expansion,
            feature_token_id=self.feature_token_id("video_token_id"),
            frame_tokens=counts,
            grids=[grid if n == grid[0] * grid[1] else None for n in counts],
            meta={"kept_coords": kept_coords, "frame_grid": grid,
                  "timestamps": [float(t) for t in timestamps]},
        )
