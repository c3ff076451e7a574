"""LLaVA-OneVision (``llava_onevision``): SigLIP tower, 2×2 bilinear pooling, Qwen2 backbone.

How LLaVA-OneVision lays a video out (``LlavaOnevisionProcessor.replace_video_token`` and
``LlavaOnevisionModel.get_video_features``): every frame goes through the tower, the projector maps
its p×p patches (p = image_size // patch_size) and a bilinear resize pools them to
⌈p/2⌉×⌈p/2⌉ tokens, flattened row-major; the frames follow each other and one learned
``image_newline`` embedding closes the video. All of them sit on ``<video>`` placeholder tokens:
T·⌈p/2⌉² + 1 of them. The newline is a separator, never part of a frame.
"""

from __future__ import annotations

import math

from .adapter import register_adapter
from .native_adapter import NativeVideoAdapter, VideoInputs
from .pixels import CLIP_MEAN, CLIP_STD

__all__ = ["LlavaOnevisionAdapter"]


@register_adapter
class LlavaOnevisionAdapter(NativeVideoAdapter):
    """LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``), Qwen2 backbone."""

    model_types = ("llava_onevision",)
    name = "LLaVA-OneVision"
    hf_class_name = "LlavaOnevisionForConditionalGeneration"
    # LlavaOnevisionVideoProcessor's class defaults.
    video_defaults = {"size": {"height": 384, "width": 384}, "resample": 3,
                      "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)}

    def pooled_grid(self) -> tuple[int, int]:
        """⌈p/2⌉×⌈p/2⌉ tokens per frame, p = image_size // patch_size (``apply_pooling``)."""
        vision = self.hf_config.vision_config
        patches = vision.image_size // vision.patch_size
        return math.ceil(patches / 2), math.ceil(patches / 2)

    def video_inputs(self, frames, timestamps) -> VideoInputs:
        pixels = self._pixels(frames, self.fixed_size())
        height, width = self.pooled_grid()
        n_frames = pixels.shape[0]
        token = self.placeholder
        token_id = self.feature_token_id("video_token_index", "video_token_id")
        return VideoInputs(
            model_kwargs={"pixel_values_videos": pixels[None]},
            expansion=token * (n_frames * height * width + 1),  # +1: the closing image_newline
            feature_token_id=token_id,
            frame_tokens=[height * width] * n_frames,
            grids=[(height, width)] * n_frames,
        )
