"""Qwen2-VL and Qwen2.5-VL (``qwen2_vl``, ``qwen2_5_vl``): 3D multimodal rotary positions
(M-RoPE), reproduced exactly (Qwen3-VL is ``qwen3_vl.py``).

**Why M-RoPE can be exact.** Qwen2-VL gives every token a (t, h, w) position: text tokens
(p, p, p); video tokens (t₀ + t·Δ, h₀ + h, w₀ + w) on their grid; text after the video continues
from the largest position used. Each rotary frequency band takes one of the three coordinates
(``mrope_section``), but the rotation itself is the ordinary ``x·cos + rotate_half(x)·sin``
with per-position tables. TransformerLens applies exactly that formula with tables indexed by the
sequence position, so installing the sample's HF tables (computed by the HF text model's own
``rotary_emb`` from the position ids its own forward computed) in every attention layer makes the
backbone compute what HF computes. The tables belong to one sample;
:class:`~mapflow_tl.models.backbone.RotaryPositions` binds them to the embeddings ``prepare``
returned and refuses any other embeddings, so a forward never runs with wrong positions.

How Qwen2-VL lays a video out (``Qwen2VLVideoProcessor`` + ``Qwen2VLProcessor``): frames are
resized to multiples of patch·merge (28 px) within [min_pixels, max_pixels], grouped in pairs
(``temporal_patch_size`` 2: one *token frame* covers input frames 2t and 2t+1), cut into 14 px
patches and merged 2×2, giving H×W tokens per token frame, flattened row-major, on
``<|video_pad|>`` tokens between ``<|vision_start|>`` and ``<|vision_end|>``. The SegmentMap's
frames are these token frames (``Prepared.meta["input_frames_per_frame"]`` = 2).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .adapter import register_adapter
from .backbone import rotary_positions
from .native_adapter import NativeVideoAdapter, VideoInputs
from .pixels import CLIP_MEAN, CLIP_STD, patchify, pixel_budget, smart_resize
from .videollm import Prepared

__all__ = ["QwenVLAdapter"]

#: transformers' default when a video's frame rate is unknown (``VideoMetadata.sampled_fps``).
UNKNOWN_FPS = 24.0


@register_adapter
class QwenVLAdapter(NativeVideoAdapter):
    """Qwen2-VL / Qwen2.5-VL, exact under their 3D rotary positions (module docstring)."""

    model_types = ("qwen2_vl", "qwen2_5_vl")
    name = "Qwen2-VL / Qwen2.5-VL"
    placeholder_default = "<|video_pad|>"
    positions = "per_sample"
    # Qwen2VLVideoProcessor's class defaults (Qwen2.5-VL uses the same processor).
    video_defaults = {"size": {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768},
                      "resample": 3, "image_mean": list(CLIP_MEAN),
                      "image_std": list(CLIP_STD), "patch_size": 14,
                      "temporal_patch_size": 2, "merge_size": 2, "cap_pixels_per_frame": False,
                      "max_video_tokens": 128000}

    def __init__(self, path, config, **kwargs: Any) -> None:
        super().__init__(path, config, **kwargs)
        self.hf_class_name = {"qwen2_vl": "Qwen2VLForConditionalGeneration",
                              "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}[
            config["model_type"]]

    def load(self) -> None:
        super().load()
        #: Binds each prepared sample's M-RoPE tables to its embeddings.
        self.rotary = rotary_positions(self.backbone, self.vision.model.language_model.rotary_emb)

    def video_inputs(self, frames, timestamps) -> VideoInputs:
        c = self.video_config
        size = pixel_budget(c)
        patch, merge, temporal = c["patch_size"], c["merge_size"], c["temporal_patch_size"]
        n_frames, height, width = frames.shape[:3]
        factor = patch * merge
        max_pixels = size["longest_edge"]
        if c.get("cap_pixels_per_frame"):  # the processor's optional total-video budget
            total = int(c["max_video_tokens"] * factor * factor * 0.9)
            max_pixels = max(min(max_pixels, total * temporal // n_frames),
                             int(size["shortest_edge"] * 1.05))
        resized = smart_resize(height, width, factor, size["shortest_edge"], max_pixels)
        patches, (grid_t, grid_h, grid_w) = patchify(self._pixels(frames, resized), patch,
                                                     merge, temporal)
        grid = (grid_h // merge, grid_w // merge)
        model_kwargs = {"pixel_values_videos": patches,
                        "video_grid_thw": torch.tensor([[grid_t, grid_h, grid_w]])}
        meta: dict[str, Any] = {"input_frames_per_frame": temporal}
        if self.config["model_type"] == "qwen2_5_vl":
            # Qwen2_5_VLProcessor: seconds per token frame = temporal_patch_size / sampled fps.
            fps = UNKNOWN_FPS
            if timestamps is not None and len(timestamps) > 1:
                fps = float(1.0 / np.mean(np.diff(timestamps)))
            model_kwargs["second_per_grid_ts"] = torch.tensor([temporal / fps])
            meta["fps"] = fps
        return VideoInputs(
            model_kwargs=model_kwargs,
            expansion=self.placeholder * (grid_t * grid[0] * grid[1]),
            feature_token_id=self.feature_token_id("video_token_id"),
            frame_tokens=[grid[0] * grid[1]] * grid_t,
            grids=[grid] * grid_t,
            source_frames=[tuple(min(t * temporal + i, n_frames - 1) for i in range(temporal))
                           for t in range(grid_t)],
            meta=meta,
        )

    def extra_model_inputs(self, input_ids):
        # The processor's token types (text 0, image 1, video 2), from which M-RoPE is computed.
        video = input_ids == self.hf_config.video_token_id
        return {"mm_token_type_ids": video.to(torch.int32) * 2}

    def bind(self, prepared: Prepared, captured: dict[str, Any]) -> None:
        self.bind_rotary_positions(prepared, captured)
