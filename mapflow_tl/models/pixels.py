"""Frames → the normalised pixels a checkpoint's vision tower takes, as its HF processor makes
them.

- :class:`FramePreprocessor`: the LLaVA-style processors (resize shortest edge, centre crop,
  rescale, normalise), through the checkpoint's own HF processor where torchvision is installed;
- :func:`resize_and_normalize`: the arithmetic of transformers' torch video processors in plain
  torch (the transformers-native families);
- :func:`smart_resize`, :func:`pixel_budget`, :func:`patchify`: the frame size and patch order of
  the Qwen2-VL-style video processors (Qwen2-VL, Qwen2.5-VL, VideoLLaMA3).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float, UInt8
from torch import nn

from ..errors import InputError
from .loading import read_json, torchvision_available

__all__ = ["FramePreprocessor", "resize_and_normalize", "smart_resize", "pixel_budget",
           "video_frame_size", "patchify", "CLIP_MEAN", "CLIP_STD"]

#: OpenAI CLIP's pixel mean and std, the default of several families' video processors.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# ---------------------------------------------------------------------- LLaVA-style processors
_PIXEL_KEYS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
               "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb")


class FramePreprocessor:
    """Frames → normalised pixels ``[T, 3, h, w]`` as the checkpoint's HF processor makes them.

    Uses the checkpoint's HF video processor when torchvision is installed (transformers' video
    processors need it). Otherwise the same steps (resize shortest edge, centre crop, rescale,
    normalise, with the checkpoint's sizes, mean and std) run through transformers' Pillow CLIP
    image processor; resampling may then differ from torchvision's by interpolation rounding.
    """

    def __init__(self, path: Path, config_file: str, *, video: bool) -> None:
        self.path, self.config_file = path, path / config_file
        if not self.config_file.is_file():
            raise InputError(f"{path} has no {config_file}: the checkpoint's processor "
                             f"configuration is missing (download it with the model)")
        self.settings = read_json(self.config_file)
        self.hf_processor = None
        if video and torchvision_available():
            from transformers import AutoVideoProcessor

            self.hf_processor = AutoVideoProcessor.from_pretrained(path)
        self._pil = None

    @property
    def crop_size(self) -> tuple[int, int]:
        crop = self.settings.get("crop_size") or self.settings.get("size") or {}
        if "height" in crop:
            return int(crop["height"]), int(crop["width"])
        edge = int(crop.get("shortest_edge", 0))
        return edge, edge

    def __call__(self, frames: UInt8[np.ndarray, "T H W 3"]) -> Float[torch.Tensor, "T 3 h w"]:
        if self.hf_processor is not None:
            out = self.hf_processor(videos=[frames], return_tensors="pt")
            return out["pixel_values_videos"][0]
        if self._pil is None:
            from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

            kwargs = {k: self.settings[k] for k in _PIXEL_KEYS if k in self.settings}
            self._pil = CLIPImageProcessorPil(**kwargs)
        return self._pil(images=list(frames), return_tensors="pt")["pixel_values"]


# ---------------------------------------------------------------------- torch video processors
_RESAMPLE = {1: "lanczos", 2: "bilinear", 3: "bicubic", "lanczos": "lanczos",
             "bilinear": "bilinear", "bicubic": "bicubic"}


def resize_and_normalize(
    frames: UInt8[torch.Tensor, "T 3 H W"],
    size: tuple[int, int],
    *,
    resample: int | str = 3,
    do_resize: bool = True,
    do_rescale: bool = True,
    rescale_factor: float = 1 / 255,
    do_normalize: bool = True,
    image_mean: Sequence[float] = (0.5, 0.5, 0.5),
    image_std: Sequence[float] = (0.5, 0.5, 0.5),
) -> Float[torch.Tensor, "T 3 h w"]:
    """Resize (antialiased), rescale and normalise frames as transformers' torch video processors
    do (``TorchvisionBackend.resize`` + fused ``rescale_and_normalize``), in plain torch.

    transformers' video processors need torchvision, which has no CPU build for this torch on
    PyPI; this mirrors their arithmetic: uint8 in, torch's uint8 antialiased interpolation
    (torchvision's CPU path; elsewhere float interpolation rounded back to uint8), then
    ``(x - mean/scale) / (std/scale)``.
    """
    mode = _RESAMPLE.get(resample)
    if mode is None:
        raise InputError(f"video resample {resample!r} is not supported; use 1 (lanczos), 2 "
                         f"(bilinear) or 3 (bicubic) in video_preprocessor_config.json")
    if do_resize and tuple(frames.shape[-2:]) != tuple(size):
        if frames.device.type == "cpu":
            # torch's native uint8 kernels, which torchvision's resize runs on CPU (lanczos from
            # torchvision 0.27): the float path below differs by up to 13 grey levels (bicubic).
            frames = nn.functional.interpolate(frames, size=list(size), mode=mode,
                                               align_corners=False, antialias=True)
        else:
            resized = nn.functional.interpolate(frames.float(), size=list(size), mode=mode,
                                                align_corners=False, antialias=True)
            frames = resized.clamp_(0, 255).round_().to(torch.uint8)
    pixels = frames.float()
    if do_normalize:
        scale = rescale_factor if do_rescale else 1.0
        mean = torch.tensor(image_mean, dtype=torch.float32) / scale
        std = torch.tensor(image_std, dtype=torch.float32) / scale
        return (pixels - mean[:, None, None]) / std[:, None, None]
    return pixels * rescale_factor if do_rescale else pixels


# ---------------------------------------------------------------------- Qwen2-VL-style patches
def pixel_budget(video_config: dict) -> dict:
    """The ``shortest_edge`` / ``longest_edge`` pixel counts of a Qwen-style video processor
    config (``min_pixels`` / ``max_pixels`` win over ``size`` where both are given)."""
    size = dict(video_config.get("size") or {})
    size["shortest_edge"] = video_config.get("min_pixels", size.get("shortest_edge"))
    size["longest_edge"] = video_config.get("max_pixels", size.get("longest_edge"))
    return size


def smart_resize(height: int, width: int, factor: int, min_pixels: int,
                 max_pixels: int) -> tuple[int, int]:
    """The frame size of the Qwen2-VL-style video processors (also VideoLLaMA3's): multiples of
    ``factor``, aspect ratio kept as well as possible, pixel count within [min_pixels,
    max_pixels]."""
    if max(height, width) / min(height, width) > 200:
        raise InputError(f"frame aspect ratio {max(height, width) / min(height, width):.0f} is "
                         f"above 200; the video processor cannot take such frames")
    resized_height = round(height / factor) * factor
    resized_width = round(width / factor) * factor
    if resized_height * resized_width > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        resized_height = max(factor, math.floor(height / beta / factor) * factor)
        resized_width = max(factor, math.floor(width / beta / factor) * factor)
    elif resized_height * resized_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        resized_height = math.ceil(height * beta / factor) * factor
        resized_width = math.ceil(width * beta / factor) * factor
    return resized_height, resized_width


def patchify(
    pixels: Float[torch.Tensor, "T 3 h w"], patch: int, merge: int, temporal: int
) -> tuple[Float[torch.Tensor, "patches patch_dim"], tuple[int, int, int]]:
    """Flatten frames into patches in the order of the Qwen2-VL-style video processors (also
    VideoLLaMA3's): temporal patch, merge-block row, merge-block column, row and column inside
    the block; each patch is (channel, time, y, x). Frames are padded to a multiple of
    ``temporal`` by repeating the last one. Returns the patches and (T', H, W) in patches."""
    if pad := -pixels.shape[0] % temporal:
        pixels = torch.cat([pixels, pixels[-1:].expand(pad, -1, -1, -1)])
    grid_t, grid_h, grid_w = (pixels.shape[0] // temporal, pixels.shape[2] // patch,
                              pixels.shape[3] // patch)
    patches = pixels.reshape(grid_t, temporal, 3, grid_h // merge, merge, patch,
                             grid_w // merge, merge, patch)
    patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(
        grid_t * grid_h * grid_w, 3 * temporal * patch * patch)
    return patches, (grid_t, grid_h, grid_w)


def video_frame_size(n_frames: int, height: int, width: int, *, factor: int, temporal: int,
                     min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The (height, width) every frame is resized to by a video processor that budgets the pixels
    of the whole clip (``Qwen3VLVideoProcessor``, ``Glm4vVideoProcessor``): multiples of
    ``factor``, aspect ratio kept, the pixels of all frames together (frames rounded to a multiple
    of ``temporal``) within [min_pixels, max_pixels]."""
    if n_frames < temporal:
        raise InputError(f"the video processor needs at least {temporal} frames (its temporal "
                         f"patch), got {n_frames}")
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise InputError(f"frame aspect ratio {max(height, width) / min(height, width):.0f} is "
                         f"above 200; the video processor cannot take such frames")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    t_bar = round(n_frames / temporal) * temporal
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((n_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (n_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar
