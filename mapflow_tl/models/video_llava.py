"""Video-LLaVA (``video_llava``; Vicuna backbone).

Video tokens come from the HF model's own ``get_video_features``: every frame through the video
tower (``vision_feature_layer``; all tokens kept, CLS included, as Video-LLaVA does for videos) and
the projector. Each frame contributes ``1 + H·W`` positions: its CLS token, recorded as a
separator segment ``frame_{t}_cls`` (it has no place in the H×W grid), then the H×W patch grid
(16×16 at 224 px), frame-major, where the processor expands the single ``<video>`` placeholder.
The model was trained on a fixed number of frames (8: ``video_seq_length`` / (1 + H·W)); videos
must have exactly that many.
"""

from __future__ import annotations

import numpy as np
from jaxtyping import UInt8

from ..errors import InputError
from .adapter import register_adapter
from .spliced_adapter import SplicedVideoAdapter
from .splicing import VideoTokens, square_grid

__all__ = ["VideoLlavaAdapter"]


@register_adapter
class VideoLlavaAdapter(SplicedVideoAdapter):
    """``VideoLlavaForConditionalGeneration`` with its text decoder as the backbone."""

    model_types = ("video_llava",)
    name = "Video-LLaVA"
    hf_class_name = "VideoLlavaForConditionalGeneration"

    def __init__(self, path, config, **kwargs) -> None:
        vision = config.get("vision_config") or {}
        side = int(vision.get("image_size", 224)) // int(vision.get("patch_size", 14))
        per_frame = side * side + 1
        trained = int(config.get("video_seq_length", 8 * per_frame)) // per_frame
        self.default_num_frames = max(trained, 1)
        # Converted checkpoints ship the video processor's settings; older ones only the image's.
        self.preprocessor_file = ("video_preprocessor_config.json"
                                  if (path / "video_preprocessor_config.json").is_file()
                                  else "preprocessor_config.json")
        super().__init__(path, config, **kwargs)
        if self.num_frames != self.default_num_frames:
            raise InputError(f"{self.name} takes exactly {self.default_num_frames} frames "
                             f"(video_seq_length {config.get('video_seq_length')}), got "
                             f"num_frames={self.num_frames}")

    def frame_limits(self) -> tuple[int, int | None]:
        return self.num_frames, self.num_frames

    def video_token_count(self, n_frames: int) -> int:
        # Every frame keeps its CLS token and its whole patch grid.
        vision = self.hf_config.vision_config
        return n_frames * ((vision.image_size // vision.patch_size) ** 2 + 1)

    def video_tokens(self, frames: UInt8[np.ndarray, "T H W 3"]) -> VideoTokens:
        pixels = self.pixel_values(frames)[None]  # [1, T, 3, h, w]
        output = self.vision.model.get_video_features(
            pixels, vision_feature_layer=self.hf_config.vision_feature_layer)
        per_frame = output.pooler_output  # [T, 1 + H·W, d]
        grid = square_grid(per_frame.shape[1] - 1, f"{self.name} frame")
        layout = []
        for t in range(per_frame.shape[0]):
            layout += [("separator", f"frame_{t}_cls", 1), ("frame", t, grid)]
        features = per_frame.reshape(-1, per_frame.shape[-1])
        return VideoTokens(features, layout, meta={"pixel_values_videos": pixels.detach().cpu()})
