"""Perception LM (``perception_lm``, transformers-native): Perception Encoder tower (a timm model
behind ``TimmWrapperModel``), two-layer MLP projector, 2D adaptive average pooling, Llama backbone.

How Perception LM lays a video out (``PerceptionLMVideoProcessor``,
``PerceptionLMProcessor.replace_video_token`` and ``PerceptionLMModel.get_image_features``):

- every frame is resized to the processor's fixed ``size`` (448×448 by default; no crop, aspect
  not kept), rescaled and normalised (mean = std = 0.5); the frames are not tiled;
- each frame goes through the tower on its own, the CLS token is dropped
  (``vision_use_cls_token``), the projector maps the (h/patch)×(w/patch) patch tokens and a 2D
  adaptive average pooling by ``projector_pooling_ratio`` r leaves
  H×W = (h/patch/r)×(w/patch/r) tokens, row-major;
- the processor writes H·W·T ``<|video|>`` tokens in place of the one placeholder, where the model
  scatters the frames' tokens, frame after frame: the video is the T grids back to back, with
  no text between them (no timestamps, no separators).

The processor counts the tokens from its own ``patch_size`` and ``pooling_ratio``
(processor_config.json); the adapter takes them from there too and refuses a pooling ratio that
is not the model's. The prompt is the checkpoint's own chat template around the paper's block,
tokenized without adding special tokens (the template writes ``<|begin_of_text|>``).
"""

from __future__ import annotations

from ..errors import InputError
from .adapter import register_adapter
from .loading import read_json, video_processor_settings
from .native_adapter import NativeVideoAdapter, VideoInputs

__all__ = ["PerceptionLMAdapter"]

#: ``PerceptionLMProcessor``'s default pooling ratio.
DEFAULT_POOLING_RATIO = 2


@register_adapter
class PerceptionLMAdapter(NativeVideoAdapter):
    """Perception LM (``PerceptionLMForConditionalGeneration``), Llama backbone."""

    model_types = ("perception_lm",)
    name = "Perception LM"
    hf_class_name = "PerceptionLMForConditionalGeneration"
    placeholder_default = "<|video|>"
    # The chat template writes the BOS itself; the tokenizer (Llama 3's) would add a second one.
    # transformers' apply_chat_template(tokenize=True), Perception LM's documented path, adds
    # none either.
    add_special_tokens = False
    # PerceptionLMVideoProcessor's class defaults (IMAGENET_STANDARD mean / std, bicubic).
    video_defaults = {"size": {"height": 448, "width": 448}, "resample": 3,
                      "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                      "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
                      "do_normalize": True}

    def load(self) -> None:
        super().load()
        self.video_config = {**self.video_defaults, **video_processor_settings(self.path)}
        if self.video_config.get("do_center_crop"):
            raise InputError(f"{self.path}: the video processor's do_center_crop is set; "
                             f"Perception LM's processor resizes whole frames, and a cropping "
                             f"one is not reproduced (set do_center_crop false)")
        processor = read_json(self.path / "processor_config.json")
        patch = processor.get("patch_size")
        pooling = processor.get("pooling_ratio", DEFAULT_POOLING_RATIO)
        if not isinstance(patch, int) or patch < 1:
            raise InputError(f"{self.path}/processor_config.json must give the vision tower's "
                             f"patch_size (an int, as PerceptionLMProcessor needs it to count "
                             f"video tokens), got {patch!r}")
        model_pooling = self.hf_config.projector_pooling_ratio
        if pooling != model_pooling:
            raise InputError(f"{self.path}: processor_config.json's pooling_ratio {pooling} is "
                             f"not the model's projector_pooling_ratio {model_pooling}; the "
                             f"processor and config.json do not belong together")
        height, width = self.fixed_size()
        self.grid = (height // patch // pooling, width // patch // pooling)
        if min(self.grid) < 1:
            raise InputError(f"{self.path}: frames of {height}×{width} px give no tokens at "
                             f"patch {patch} and pooling {pooling}")

    def video_inputs(self, frames, timestamps) -> VideoInputs:
        pixels = self._pixels(frames, self.fixed_size())
        n_frames = pixels.shape[0]
        height, width = self.grid
        return VideoInputs(
            model_kwargs={"pixel_values_videos": pixels[None]},
            expansion=self.placeholder * (n_frames * height * width),
            feature_token_id=self.feature_token_id("video_token_id"),
            frame_tokens=[height * width] * n_frames,
            grids=[self.grid] * n_frames,
        )
