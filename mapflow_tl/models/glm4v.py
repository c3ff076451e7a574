"""GLM-4.1V (``glm4v``): a GLM-4 text decoder with sandwich norms under partial, interleaved 3D
rotary positions, restated exactly on the ``HookedTransformer``.

**Why the backbone is exact.** ``Glm4vTextDecoderLayer`` is the Llama layer plus two RMSNorms:
``post_self_attn_layernorm`` on the attention output and ``post_mlp_layernorm`` on the MLP output,
each applied before its residual add. TransformerLens 3.9 has exactly that block
(``use_normalization_before_and_after``: ``ln1_post`` / ``ln2_post``, applied before
``hook_attn_out`` / ``hook_mlp_out``, so those hooks see what is added to the residual stream);
:func:`~mapflow_tl.models.backbone.hooked_from_hf` loads the two weights there. The rotary
embedding rotates adjacent pairs (``rotate_half_llm``: (x₀, x₁), (x₂, x₃), …) of the first
``partial_rotary_factor``·d_head dimensions with tables whose frequency bands take the t, h or w
coordinate (``mrope_section``) and are repeated pairwise — TransformerLens'
``rotary_adjacent_pairs`` with ``rotary_dim`` applies the same formula, and
:class:`~mapflow_tl.models.backbone.RotaryPositions` installs the HF text model's own tables of
each sample's position ids. Measured on a tiny random model of the real classes (fp32): logits
within 6.6e-7 of ``Glm4vForConditionalGeneration``'s own forward (``tests/test_models_glm4v.py``).

The sweep engine's lean suffix forward restates neither the post norms nor adjacent-pair
rotation (``suffix_forward.lean_unsupported``), so this family's fast sweeps run on the hooked
path: exact, slower.

How GLM-4.1V lays a video out (``Glm4vVideoProcessor`` + ``Glm4vProcessor``): all frames are
resized to one size, multiples of patch·merge (28 px), within a pixel budget that counts every
frame (the same ``smart_resize`` as Qwen3-VL's); frames are grouped in pairs (a *token frame*
covers input frames 2t and 2t+1, the last repeated when the count is odd), cut into 14 px patches
and merged 2×2. The chat template writes ``<|begin_of_video|><|video|><|end_of_video|>``; the
processor replaces ``<|video|>`` by, per token frame,
``<|begin_of_image|><|image|>×H·W<|end_of_image|>{s}`` with s the integer second of the frame's
first input frame. Video features are scattered onto ``<|image|>`` tokens (image and video share
that token; ``mm_token_type_ids`` marks those inside the video's begin/end as video, 2). An array
of frames has no timestamps: the processor assumes 24 fps and frame indices 0 … T−1, as here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .adapter import register_adapter
from .backbone import rotary_positions
from .loading import check_processor_ids
from .native_adapter import NativeVideoAdapter, VideoInputs
from .pixels import CLIP_MEAN, CLIP_STD, patchify, pixel_budget, video_frame_size
from .videollm import Prepared

__all__ = ["Glm4vAdapter", "glm4v_frame_seconds"]

#: transformers' default when a video's frame rate is unknown (``Glm4vProcessor``).
UNKNOWN_FPS = 24.0


def glm4v_frame_seconds(times: np.ndarray, temporal: int, n_token_frames: int) -> list[int]:
    """The integer second ``Glm4vProcessor`` writes after each token frame: the time of the
    frame's first input frame (``timestamps[::temporal]``), the last repeated if too few."""
    seconds = [int(t) for t in np.asarray(times, dtype=np.float64)[::temporal]][:n_token_frames]
    while len(seconds) < n_token_frames:
        seconds.append(seconds[-1] if seconds else 0)
    return seconds


@register_adapter
class Glm4vAdapter(NativeVideoAdapter):
    """GLM-4.1V, exact under its sandwich norms and partial interleaved M-RoPE (module
    docstring)."""

    model_types = ("glm4v",)
    name = "GLM-4.1V"
    hf_class_name = "Glm4vForConditionalGeneration"
    placeholder_default = "<|video|>"
    positions = "per_sample"
    # The chat template writes [gMASK]<sop> itself: the prompt is tokenized as
    # apply_chat_template(tokenize=True) does, without the tokenizer's own special tokens.
    add_special_tokens = False
    # Glm4vVideoProcessor's class defaults.
    video_defaults = {"size": {"shortest_edge": 112 * 112, "longest_edge": 28 * 28 * 2 * 30000},
                      "resample": 3, "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
                      "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2}

    def load(self) -> None:
        super().load()
        #: Binds each prepared sample's M-RoPE tables to its embeddings.
        self.rotary = rotary_positions(self.backbone, self.vision.model.language_model.rotary_emb)
        width = self.rotary.tables(torch.zeros(3, 1, 1, dtype=torch.long))[0].shape[-1]
        if width != self.backbone.cfg.rotary_dim:  # a config whose factor HF reads elsewhere
            raise InputError(f"{self.path}: the HF rotary tables rotate {width} dimensions per "
                             f"head, the backbone {self.backbone.cfg.rotary_dim}; check "
                             f"partial_rotary_factor in text_config.rope_parameters")
        tokens = self.tokenizer.convert_tokens_to_ids
        self.image_token = getattr(self.tokenizer, "image_token", None) or "<|image|>"
        self.video_start_id = tokens("<|begin_of_video|>")
        self.video_end_id = tokens("<|end_of_video|>")

    def video_inputs(self, frames, timestamps) -> VideoInputs:
        c = self.video_config
        size = pixel_budget(c)
        patch, merge, temporal = c["patch_size"], c["merge_size"], c["temporal_patch_size"]
        n_frames, height, width = frames.shape[:3]
        if n_frames < temporal:
            raise InputError(f"GLM-4.1V needs at least {temporal} frames (its temporal patch), "
                             f"got {n_frames}")
        resized = video_frame_size(n_frames, height, width, factor=patch * merge,
                                   temporal=temporal, min_pixels=size["shortest_edge"],
                                   max_pixels=size["longest_edge"])
        patches, (grid_t, grid_h, grid_w) = patchify(self._pixels(frames, resized), patch,
                                                     merge, temporal)
        grid = (grid_h // merge, grid_w // merge)
        times = (np.arange(n_frames) / UNKNOWN_FPS if timestamps is None
                 else np.asarray(timestamps, dtype=np.float64))
        seconds = glm4v_frame_seconds(times, temporal, grid_t)
        frame_text = ("<|begin_of_image|>" + self.image_token * (grid[0] * grid[1])
                      + "<|end_of_image|>")
        feature_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        if feature_id != self.hf_config.image_token_id:
            raise InputError(
                f"{self.path}: the model scatters video features onto image_token_id "
                f"{self.hf_config.image_token_id}, but the tokenizer's {self.image_token!r} is "
                f"id {feature_id}; config.json and the tokenizer do not belong together")
        return VideoInputs(
            model_kwargs={"pixel_values_videos": patches,
                          "video_grid_thw": torch.tensor([[grid_t, grid_h, grid_w]])},
            expansion="".join(frame_text + str(s) for s in seconds),
            feature_token_id=int(feature_id),
            frame_tokens=[grid[0] * grid[1]] * grid_t,
            grids=[grid] * grid_t,
            source_frames=[tuple(min(t * temporal + i, n_frames - 1) for i in range(temporal))
                           for t in range(grid_t)],
            meta={"input_frames_per_frame": temporal, "frame_seconds": seconds},
        )

    def check_against_processor(self, text: str, frames: np.ndarray,
                                input_ids: torch.Tensor) -> None:
        """The HF processor's ids for the same frames: ``Glm4vVideoProcessor`` would otherwise
        sample frames again at 2 fps (``do_sample_frames``)."""
        check_processor_ids(self, text, frames, input_ids, do_sample_frames=False)

    def extra_model_inputs(self, input_ids):
        """``Glm4vProcessor.create_mm_token_type_ids``: feature tokens inside the video's
        begin/end are video (2), elsewhere image (1); M-RoPE is computed from them."""
        ids = input_ids[0]
        inside = (torch.cumsum(ids == self.video_start_id, 0)
                  > torch.cumsum(ids == self.video_end_id, 0))
        features = ids == self.hf_config.image_token_id
        if bool((features & ~inside).any()):
            raise InputError(
                f"{self.name}: video feature tokens {self.image_token!r} lie outside "
                f"<|begin_of_video|> … <|end_of_video|>; the chat template must wrap the video "
                f"placeholder in them, as GLM-4.1V's own template does")
        types = torch.where(features & inside, 2, torch.where(features, 1, 0))
        return {"mm_token_type_ids": types.to(torch.int32)[None]}

    def bind(self, prepared: Prepared, captured: dict[str, Any]) -> None:
        self.bind_rotary_positions(prepared, captured)
