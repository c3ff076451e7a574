"""Qwen3-VL and Qwen3-VL-MoE (``qwen3_vl``, ``qwen3_vl_moe``): interleaved 3D rotary positions
(M-RoPE), per-frame timestamp text, and DeepStack visual features carried as per-sample additions
to the residual stream.

**DeepStack.** Besides the video features that replace the ``<|video_pad|>`` embeddings, the
vision tower hands the decoder one more feature tensor per entry of
``vision_config.deepstack_visual_indexes`` (the outputs of intermediate vision layers, each
through its own merger). ``Qwen3VLTextModel`` adds the i-th of them to the hidden states at the
visual positions right after decoder layer i (layers 0 … n−1, n = number of DeepStack indexes).
Injected embeddings cannot carry that. Here the HF model's own forward computes them (captured
with the position ids, just before its language model runs: ``deepstack_visual_embeds`` and
``visual_pos_masks`` are exactly what its decoder would receive) and
:class:`~mapflow_tl.models.backbone.RotaryPositions` binds them to the prepared embeddings with
the sample's rotary tables: a forward pre-hook on ``blocks.{i}.hook_resid_post`` adds them before
any user hook there runs. ``resid_post`` of those layers therefore holds what HF's layer output
holds, a knockout in those layers is the HF model with the mask, and the sweep engine's lean
suffix forward adds them when it recomputes those layers (``suffix_forward.residual_additions``).
One consequence for caches: ``cache.decompose_resid()`` has no term for the DeepStack additions,
so its components sum to the residual stream minus them in layers ≥ 1.

**Positions.** Qwen3-VL's M-RoPE interleaves the three axes over the frequency bands
(``mrope_interleaved``); the HF text model's own ``rotary_emb`` computes the tables from the
position ids its own forward computed, so the interleaving is reproduced by construction. Every
token frame is its own (t, h, w) block: ``get_rope_index`` splits the video grid per frame, and
the timestamp text between frames takes ordinary text positions.

How Qwen3-VL lays a video out (``Qwen3VLVideoProcessor`` + ``Qwen3VLProcessor``): all frames are
resized to one size, multiples of patch·merge (32 px for the real checkpoints), within a pixel
budget that counts every frame (``smart_resize(num_frames, …)``); frames are grouped in pairs
(``temporal_patch_size`` 2: a *token frame* covers input frames 2t and 2t+1, the last repeated
when the count is odd), cut into patches and merged 2×2. The chat template's
``<|vision_start|><|video_pad|><|vision_end|>`` is collapsed to the bare ``<|video_pad|>`` and
that becomes, per token frame, ``<{s:.1f} seconds><|vision_start|><|video_pad|>×H·W
<|vision_end|>`` with s the mean time of the frame's two input frames. The SegmentMap's frames are
the token frames (``frame.source_frames`` = the input frames each covers); the timestamps and the
vision start/end tokens are separators, never frame tokens.

Timestamps: frames read from a video file carry their times; an array of frames has none, and
the HF processor then assumes 24 fps and frame indices 0 … T−1 (``<0.0 seconds>``,
``<0.1 seconds>``, …), which is what is used here too.

**Qwen3-VL-MoE** (``qwen3_vl_moe``) is the same model with every decoder MLP a sparse mixture of
experts (``Qwen3VLMoeTextSparseMoeBlock``): router softmax in fp32, top-k, the k weights always
renormalised, gated SiLU experts — TransformerLens' ``MoE`` block with ``norm_topk_prob=True``
computes the same, expert by expert in the same order (``hooked_from_hf`` maps the fused expert
weights). Checkpoints that mix dense and MoE layers (``mlp_only_layers``, ``decoder_sparse_step``
> 1) are refused. The sweep engine's lean suffix forward does not restate MoE blocks, so its fast
sweeps of this family run on the hooked path (exact, slower).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .adapter import register_adapter
from .backbone import rotary_positions
from .loading import check_processor_ids
from .native_adapter import NativeVideoAdapter, VideoInputs
from .pixels import patchify, pixel_budget, video_frame_size
from .prompt import _render_with_template
from .videollm import Prepared

__all__ = ["Qwen3VLAdapter", "Qwen3VLMoeAdapter", "token_frame_times"]

#: transformers' default when a video's frame rate is unknown (``Qwen3VLProcessor``).
UNKNOWN_FPS = 24.0


def token_frame_times(times: np.ndarray, temporal: int) -> list[float]:
    """Seconds of each token frame as ``Qwen3VLProcessor`` writes them: the mean of the first and
    last input frame of its temporal patch (the last frame repeated to fill the final patch)."""
    times = [float(t) for t in times]
    times += [times[-1]] * (-len(times) % temporal)
    return [(times[i] + times[i + temporal - 1]) / 2 for i in range(0, len(times), temporal)]


@register_adapter
class Qwen3VLAdapter(NativeVideoAdapter):
    """Qwen3-VL (dense), exact under interleaved M-RoPE and DeepStack (module docstring)."""

    model_types = ("qwen3_vl",)
    name = "Qwen3-VL"
    hf_class_name = "Qwen3VLForConditionalGeneration"
    placeholder_default = "<|video_pad|>"
    positions = "per_sample"
    # Qwen3VLVideoProcessor's class defaults.
    video_defaults = {"size": {"shortest_edge": 128 * 32 * 32, "longest_edge": 32 * 32 * 768},
                      "resample": 3, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                      "patch_size": 16, "temporal_patch_size": 2, "merge_size": 2,
                      "cap_pixels_per_frame": False, "max_video_tokens": 768}

    def load(self) -> None:
        super().load()
        #: Binds each prepared sample's M-RoPE tables and DeepStack features to its embeddings.
        self.rotary = rotary_positions(self.backbone, self.vision.model.language_model.rotary_emb)
        self.vision_start = getattr(self.tokenizer, "vision_start_token", None) \
            or "<|vision_start|>"
        self.vision_end = getattr(self.tokenizer, "vision_end_token", None) or "<|vision_end|>"

    def conversation(self) -> Any:
        """The checkpoint's template with its ``<|vision_start|><|video_pad|><|vision_end|>``
        collapsed to the bare placeholder, as ``Qwen3VLProcessor`` does before expanding it (the
        expansion wraps every frame in its own start/end tokens)."""
        wrapper = self.vision_start + self.placeholder + self.vision_end

        def render(block: str, media: str | None) -> str:
            text = _render_with_template(self.tokenizer, block, media, "video")
            return text.replace(wrapper, self.placeholder)
        return render

    def video_inputs(self, frames, timestamps) -> VideoInputs:
        c = self.video_config
        size = pixel_budget(c)
        patch, merge, temporal = c["patch_size"], c["merge_size"], c["temporal_patch_size"]
        n_frames, height, width = frames.shape[:3]
        factor = patch * merge
        max_pixels = size["longest_edge"]
        if c.get("cap_pixels_per_frame"):  # the processor's optional per-frame budget
            per_frame = max(min(c["max_video_tokens"] * factor * factor,
                                max_pixels // n_frames), int(size["shortest_edge"] * 1.05))
            max_pixels = per_frame * n_frames
        resized = video_frame_size(n_frames, height, width, factor=factor, temporal=temporal,
                                   min_pixels=size["shortest_edge"], max_pixels=max_pixels)
        patches, (grid_t, grid_h, grid_w) = patchify(self._pixels(frames, resized), patch,
                                                     merge, temporal)
        grid = (grid_h // merge, grid_w // merge)
        times = (np.arange(n_frames) / UNKNOWN_FPS if timestamps is None
                 else np.asarray(timestamps, dtype=np.float64))
        seconds = token_frame_times(times, temporal)
        frame_text = self.vision_start + self.placeholder * (grid[0] * grid[1]) + self.vision_end
        expansion = "".join(f"<{s:.1f} seconds>" + frame_text for s in seconds)
        source = [tuple(min(t * temporal + i, n_frames - 1) for i in range(temporal))
                  for t in range(grid_t)]
        return VideoInputs(
            model_kwargs={"pixel_values_videos": patches,
                          "video_grid_thw": torch.tensor([[grid_t, grid_h, grid_w]])},
            expansion=expansion,
            feature_token_id=self.feature_token_id("video_token_id"),
            frame_tokens=[grid[0] * grid[1]] * grid_t,
            grids=[grid] * grid_t,
            source_frames=source,
            meta={"input_frames_per_frame": temporal, "frame_seconds": seconds},
        )

    def check_against_processor(self, text: str, frames: np.ndarray,
                                input_ids: torch.Tensor) -> None:
        """The HF processor's ids for the same frames: ``Qwen3VLVideoProcessor`` would otherwise
        sample frames again at 2 fps (``do_sample_frames``), assuming 24 fps for an array."""
        check_processor_ids(self, text, frames, input_ids, do_sample_frames=False)

    def extra_model_inputs(self, input_ids):
        # The processor's token types (text 0, image 1, video 2), from which M-RoPE is computed.
        video = input_ids == self.hf_config.video_token_id
        return {"mm_token_type_ids": video.to(torch.int32) * 2}

    def bind(self, prepared: Prepared, captured: dict[str, Any]) -> None:
        additions = {}
        deepstack = captured.get("deepstack_visual_embeds")
        if deepstack is not None:
            mask = captured["visual_pos_masks"]
            positions = mask[0].nonzero()[:, 0].cpu()
            if mask.shape[0] != 1 or any(f.shape[0] != len(positions) for f in deepstack):
                raise RuntimeError(f"{self.hf_class_name}: DeepStack features do not match the "
                                   f"{len(positions)} visual positions of this prompt")
            additions = {layer: (positions, features.detach())
                         for layer, features in enumerate(deepstack)}
        prepared.meta["deepstack_layers"] = sorted(additions)
        self.bind_rotary_positions(prepared, captured, additions)


@register_adapter
class Qwen3VLMoeAdapter(Qwen3VLAdapter):
    """Qwen3-VL-MoE: the dense adapter's video, positions and DeepStack, with every decoder MLP a
    top-k mixture of experts held by TransformerLens' ``MoE`` block (the router's softmax, top-k
    and renormalisation are HF's; see the module docstring). Knockout sweeps run on the hooked
    path: the lean suffix forward restates dense MLPs only."""

    model_types = ("qwen3_vl_moe",)
    name = "Qwen3-VL-MoE"
    hf_class_name = "Qwen3VLMoeForConditionalGeneration"
