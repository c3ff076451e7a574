"""InternVL (``internvl``, transformers-native: InternVL2.5 / InternVL3 "-hf" checkpoints):
InternViT tower, pixel shuffle, MLP projector; Qwen2 / Qwen3 / Llama backbones.

How InternVL lays a video out (``InternVLProcessor.replace_video_token`` and
``InternVLModel.get_image_features``): each frame is resized to the tower's square input and
encoded as one image tile; its p×p patches (CLS dropped) are pixel-shuffled by
``downsample_ratio`` (0.5) to H×W = (p/2)×(p/2) tokens, flattened row-major (16×16 = 256 at
448 px). The text is ``Frame1: <img><IMG_CONTEXT>×256</img>\\nFrame2: <img>…</img>``: the features
sit on the ``<IMG_CONTEXT>`` tokens; "FrameN: <img>", "</img>" and newlines are separators.

The paper's Mini-InternVL-4B-Video-FT ships in InternVL-1.5 remote-code format (Phi-3 backbone,
``model_type: "internvl_chat"``); :mod:`mapflow_tl.models.internvl_chat` loads that format.
"""

from __future__ import annotations

from ..errors import InputError
from .adapter import register_adapter
from .native_adapter import NativeVideoAdapter, VideoInputs
from .pixels import CLIP_MEAN, CLIP_STD

__all__ = ["InternVLAdapter"]


@register_adapter
class InternVLAdapter(NativeVideoAdapter):
    """InternVL (``InternVLForConditionalGeneration``)."""

    model_types = ("internvl",)
    name = "InternVL"
    hf_class_name = "InternVLForConditionalGeneration"
    # InternVLVideoProcessor's class defaults.
    video_defaults = {"size": {"height": 384, "width": 384}, "resample": 3,
                      "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)}

    def frame_grid(self) -> tuple[int, int]:
        """(p·r)×(p·r) tokens per frame: p patches per side, r = downsample_ratio."""
        vision = self.hf_config.vision_config
        patches = vision.image_size[0] // vision.patch_size[0]
        side = int(patches * self.hf_config.downsample_ratio)
        if side * side != self.hf_config.image_seq_length:
            raise InputError(
                f"{self.path}/config.json: image_seq_length {self.hf_config.image_seq_length} "
                f"is not the {side}×{side} tokens the tower gives per frame")
        return side, side

    def video_inputs(self, frames, timestamps) -> VideoInputs:
        if self.video_config.get("do_center_crop"):
            raise InputError(f"{self.path}/video_preprocessor_config.json: do_center_crop is "
                             f"not supported; InternVL checkpoints resize without cropping")
        pixels = self._pixels(frames, self.fixed_size())
        height, width = self.frame_grid()
        tokenizer = self.tokenizer  # InternVLProcessor reads these names from the tokenizer
        start = getattr(tokenizer, "start_image_token", None) or "<img>"
        end = getattr(tokenizer, "end_image_token", None) or "</img>"
        context = getattr(tokenizer, "context_image_token", None) or "<IMG_CONTEXT>"
        context_id = tokenizer.convert_tokens_to_ids(context)
        if context_id != self.hf_config.image_token_id:
            raise InputError(
                f"{self.path}: the model's image_token_id {self.hf_config.image_token_id} is not "
                f"the tokenizer's {context!r} (id {context_id}); config.json and the tokenizer "
                f"do not belong together")
        n_frames = pixels.shape[0]
        expansion = "\n".join(f"Frame{t + 1}: {start}{context * (height * width)}{end}"
                              for t in range(n_frames))
        return VideoInputs(
            model_kwargs={"pixel_values": pixels},
            expansion=expansion,
            feature_token_id=int(context_id),
            frame_tokens=[height * width] * n_frames,
            grids=[(height, width)] * n_frames,
        )
