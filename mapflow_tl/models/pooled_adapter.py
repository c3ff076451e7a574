"""The base of image models run on video frames with the paper's T-H-W pooling (the PLLaVA code
path): LLaVA-NeXT (``llava_next``) and the paper's PLLaVA-format LLaVA checkpoints (``llava``).

How these models compute video tokens (the paper's LLaVA-NeXT-7B/13B-Video-FT checkpoints and
the image-only LLaVA-NeXT-7B control; docs/models.md): every frame goes through the CLIP vision
tower at its base resolution (``vision_feature_layer``; CLS dropped by the "default" strategy) and
the projector, as HF's ``get_image_features`` does before any-resolution tiling; then a 3D
adaptive average pool over (T, h, w) of the projected features gives T×H×W tokens
(``pooling_shape``, 8-12-12 by default: 8 frames of 24×24 patches → 8×12×12 = 1152 tokens),
flattened frame-major, with no image-newline tokens and no any-resolution tiles.

Prompt placement: the chat template's single ``<image>`` placeholder is replaced by the T·H·W
video positions (their input ids are the image token id, as if the processor had expanded it),
so the video sits exactly where the model's image would. Frames are resized (shortest edge) and
centre-cropped to the tower's input size with the checkpoint's CLIP mean and std.

Load options: ``pooling_shape`` (T, H, W), ``num_frames`` (frames sampled from a video file,
default T; at least T are needed, since pooling must not invent frames).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, UInt8

from ..errors import InputError
from .spliced_adapter import SplicedVideoAdapter
from .splicing import VideoTokens, frame_layout, square_grid

__all__ = ["PooledFramesAdapter", "DEFAULT_POOLING_SHAPE"]

#: The paper's T-H-W pooling shape.
DEFAULT_POOLING_SHAPE = (8, 12, 12)


class PooledFramesAdapter(SplicedVideoAdapter):
    """A LLaVA-style image model on T-H-W pooled frames (see the module docstring). Families set
    ``model_types``, ``name`` and ``hf_class_name`` (or their own ``load_model``)."""

    media_token = "<image>"
    media_type = "image"
    media_token_id_key = "image_token_id"
    preprocessor_file = "preprocessor_config.json"
    has_video_processor = False
    family_options = ("pooling_shape",)

    def __init__(self, path, config, **kwargs) -> None:
        shape = kwargs.get("pooling_shape") or config.get("pooling_shape") or DEFAULT_POOLING_SHAPE
        if len(tuple(shape)) != 3 or any(int(x) < 1 for x in shape):
            raise InputError(f"pooling_shape must be three positive ints (T, H, W), got {shape!r}")
        self.pooling_shape = tuple(int(x) for x in shape)
        self.default_num_frames = int(config.get("num_frames") or self.pooling_shape[0])
        super().__init__(path, config, **kwargs)

    def frame_limits(self) -> tuple[int, int | None]:
        return self.pooling_shape[0], None

    def video_token_count(self, n_frames: int) -> int | None:
        # Pooling gives T×H×W tokens whatever the number of frames it pools.
        t_out, h_out, w_out = self.pooling_shape
        return t_out * h_out * w_out

    def frame_features(self, pixels: Float[torch.Tensor, "T 3 h w"]
                       ) -> Float[torch.Tensor, "T n_patches d_model"]:
        """Pixels → projected patch features: the steps of HF's ``get_image_features`` for one
        base-resolution tile per frame."""
        model, config = self.vision.model, self.hf_config
        output = model.vision_tower(pixels, output_hidden_states=True, return_dict=True)
        layer = config.vision_feature_layer
        if isinstance(layer, int):
            selected = output.hidden_states[layer]
        else:
            selected = torch.cat([output.hidden_states[i] for i in layer], dim=-1)
        if config.vision_feature_select_strategy == "default":
            selected = selected[:, 1:]
        return model.multi_modal_projector(selected)

    def video_tokens(self, frames: UInt8[np.ndarray, "T H W 3"]) -> VideoTokens:
        pixels = self.pixel_values(frames)
        projected = self.frame_features(pixels)
        return self.pooled_tokens(projected, meta={"pixel_values": pixels.detach().cpu(),
                                                   "pooling_shape": self.pooling_shape})

    def pooled_tokens(self, projected: torch.Tensor, meta: dict[str, Any]) -> VideoTokens:
        """Projected features ``[T, p·p, d]`` → 3D adaptive average pool over (T, h, w) to
        ``pooling_shape``, flattened frame-major (t, then h, then w)."""
        n_frames, n_patches, d_model = projected.shape
        side, _ = square_grid(n_patches, f"{self.name} frame")
        t_out, h_out, w_out = self.pooling_shape
        if h_out > side:
            raise InputError(f"pooling_shape {self.pooling_shape} asks for {h_out}×{w_out} tokens "
                             f"per frame but the vision tower gives {side}×{side}")
        grid = projected.reshape(n_frames, side, side, d_model).permute(3, 0, 1, 2)[None]
        pooled = F.adaptive_avg_pool3d(grid, (t_out, h_out, w_out))  # [1, d, T, H, W]
        features = pooled[0].permute(1, 2, 3, 0).reshape(t_out * h_out * w_out, d_model)
        return VideoTokens(features, frame_layout(t_out, (h_out, w_out)), meta=meta)
