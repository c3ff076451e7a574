"""LLaVA-NeXT-Video (``llava_next_video``; Llama / Vicuna / Mistral backbones; SynthTV).

Video tokens come from the HF model's own video path, ``get_video_features``: every frame through
the CLIP vision tower (``vision_feature_layer``, CLS dropped by the "default" strategy), the
model's spatial pooling (``vision_resampler``: stride-``spatial_pool_stride`` average/max/conv
pooling of each frame's patch grid) and the projector. The frames' tokens are laid out frame-major
(``t·H·W + h·W + w``) with no separators, exactly where the processor expands the single
``<video>`` placeholder of the prompt. The grid of each frame is the pooled patch grid
(24×24 → 12×12 for the 7B/34B checkpoints).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import UInt8

from .adapter import register_adapter
from .spliced_adapter import SplicedVideoAdapter
from .splicing import VideoTokens, frame_layout, square_grid

__all__ = ["LlavaNextVideoAdapter"]


@register_adapter
class LlavaNextVideoAdapter(SplicedVideoAdapter):
    """``LlavaNextVideoForConditionalGeneration`` with its text decoder as the backbone."""

    model_types = ("llava_next_video",)
    name = "LLaVA-NeXT-Video"
    hf_class_name = "LlavaNextVideoForConditionalGeneration"

    def video_token_count(self, n_frames: int) -> int:
        # Each frame's patch grid, pooled with stride spatial_pool_stride (HF's
        # LlavaNextVideoPooler: kernel = stride, so side // stride per axis).
        vision = self.hf_config.vision_config
        side = (vision.image_size // vision.patch_size) // self.hf_config.spatial_pool_stride
        return n_frames * side * side

    def video_tokens(self, frames: UInt8[np.ndarray, "T H W 3"]) -> VideoTokens:
        pixels = self.pixel_values(frames)[None]  # [1, T, 3, h, w]
        config = self.hf_config
        output = self.vision.model.get_video_features(
            pixels, vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy)
        features = output.pooler_output.reshape(-1, output.pooler_output.shape[-1])
        n_frames = frames.shape[0]
        grid = square_grid(features.shape[0] // n_frames, f"{self.name} pooled frame")
        return VideoTokens(features, frame_layout(n_frames, grid),
                           meta={"pixel_values_videos": pixels.detach().cpu()})
