"""LLaVA-NeXT image models on video frames with the paper's T-H-W pooling (``llava_next``): the
checkpoint's ``LlavaNextForConditionalGeneration`` on pooled frames, as
:mod:`mapflow_tl.models.pooled_adapter` describes. The paper's own PLLaVA-format checkpoints
(``model_type: "llava"`` with pooling fields, LoRA adapters, the paper's conversation) are
:mod:`mapflow_tl.models.pllava`.

Load options: ``pooling_shape`` (T, H, W), ``num_frames`` (frames sampled from a video file,
default T; at least T are needed, since pooling must not invent frames).
"""

from __future__ import annotations

from .adapter import register_adapter
from .pooled_adapter import PooledFramesAdapter

__all__ = ["LlavaNextPooledAdapter"]


@register_adapter
class LlavaNextPooledAdapter(PooledFramesAdapter):
    """``LlavaNextForConditionalGeneration`` on T-H-W pooled frames."""

    model_types = ("llava_next",)
    name = "LLaVA-NeXT (T-H-W pooled frames)"
    hf_class_name = "LlavaNextForConditionalGeneration"
