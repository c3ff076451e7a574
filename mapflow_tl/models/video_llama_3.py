"""VideoLLaMA3 (``video_llama_3``, transformers-native): SigLIP-style tower with 2D rotary
positions, bilinear 2×2 merge, Qwen2 / Qwen2.5 backbone with ordinary 1D positions.

How VideoLLaMA3 lays a video out (``VideoLlama3VideoProcessor`` and
``VideoLlama3Processor.replace_video_token``):

- every frame is resized to the same (h, w), multiples of patch·merge, aspect ratio kept, so that
  all frames together stay under a pixel budget; the tower sees (h/patch)×(w/patch) patches per
  frame and the merge pools them to H×W = (h/patch/merge)×(w/patch/merge) tokens, row-major;
- token compression: a token of frame t ≥ 1 is dropped when its pixels differ from the same
  token of frame t−1 by at most 0.1 grey levels on average (at least one token per frame is
  kept). Frames then keep different numbers of tokens; a frame that kept everything carries its
  H×W grid, a compressed one ``grid=None`` and ``Prepared.meta["kept_coords"][t]`` lists the
  (h, w) of each kept token, in order;
- the text is ``Time 0.0s:<tokens of frame 0>,Time 1.0s:<tokens of frame 1>,…``: timestamps and
  commas are separators between the frames' token grids, and each frame's ``extent`` holds the
  "," before it and its "Time …s:" (frame 0: its "Time 0.0s:"), as the official Map-the-Flow
  code cuts frames for cross-frame edges; the extents tile the video.

Defaults follow the official Map-the-Flow VideoLLaMA3 runs (each a load option):

- ``token_compression=False`` (the official scripts set ``use_token_compression = False``);
  ``True`` uses the checkpoint's video processor setting;
- ``max_visual_tokens=1152`` (8×12×12, the official script's budget): each of the T frames is
  resized under (1152/T)·(patch·merge)² pixels and above 16·(patch·merge)², as the official
  processor's ``simple_batched_resize``. Tokens per frame depend on the aspect ratio: 12×12 for
  square frames, 10×13 = 130 for 4:3, 9×16 for 16:9 (the paper's "8×12×12" is the upper
  bound). ``None`` uses the checkpoint's own ``size`` budget;
- ``prompt_format="paper"``: no system message, ``<|im_start|>user\\n{video}\\n{question block}
  <|im_end|>\\n<|im_start|>assistant\\n`` with VideoLLaMA3's own instruction ("Answer with the
  option's letter from the given choices directly and only give the best option.") and no
  "Best option:(" prefix; the question's and the options' spans take their trailing newline.
  ``"chat"`` renders the checkpoint's chat template around the plain block with "Best option:(";
- ``frame_sampler="linspace"``: frames of a video file at ``np.linspace(first, last, T,
  dtype=int)``, as the official path samples the decoded frames.

The remote-code release the paper ran (``videollama3_qwen2``, ``Videollama3Qwen2ForCausalLM``)
loads through :class:`VideoLlama3RemoteAdapter` without its code: its config and weights are
mapped onto the native classes (:func:`remote_config`, :func:`remote_state_dict`), everything else
is this family's.

When the settings differ from the checkpoint's processor (compression off, another budget), the
HF processor cannot make the same ids, so the cross-check against it is skipped; the tests
compare logits with the HF model fed the same inputs instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, UInt8

from ..errors import InputError
from .adapter import register_adapter
from .loading import check_loaded_keys, check_weights, read_json, read_weight_files
from .native_adapter import NativeVideoAdapter, VideoInputs
from .pixels import patchify, pixel_budget, smart_resize
from .prompt import MAPFLOW_STYLE, VIDEOLLAMA3_STYLE

__all__ = ["VideoLlama3Adapter", "VideoLlama3RemoteAdapter", "compression_mask",
           "remote_config", "remote_state_dict",
           "videollama3_conversation", "PAPER_MAX_VISUAL_TOKENS"]

#: The official Map-the-Flow VideoLLaMA3 runs' visual-token budget (8 frames × 12 × 12).
PAPER_MAX_VISUAL_TOKENS = 1152
#: The official processor's lower bound on a frame's tokens (``simple_batched_resize``).
MIN_FRAME_TOKENS = 16


def videollama3_conversation(block: str, media: str | None) -> str:
    """The official VideoLLaMA3 conversation: one user message, the video then the question, no
    system message, the generation prompt (VideoLLaMA3's processor template)."""
    video = f"{media}\n" if media is not None else ""
    return f"<|im_start|>user\n{video}{block}<|im_end|>\n<|im_start|>assistant\n"


def compression_mask(
    patches: Float[torch.Tensor, "tokens_times_merge2 patch_dim"],
    grid_thw: tuple[int, int, int],
    merge_size: int,
    threshold: float = 0.1,
    min_tokens: int = 1,
) -> Bool[torch.Tensor, " tokens"]:
    """Which merged tokens VideoLLaMA3 keeps: all of frame 0; of frame t ≥ 1 those whose pixels
    (normalised, ×255) differ from frame t−1's by more than ``threshold`` on average; at least
    ``min_tokens`` per frame (the first ones)."""
    t, h, w = grid_thw
    n_tokens = (h // merge_size) * (w // merge_size)
    if t == 1:
        return torch.ones(n_tokens, dtype=torch.bool)
    tokens = patches.reshape(t, n_tokens, -1)
    difference = (tokens[1:] - tokens[:-1]).abs().mean(dim=-1) * 255
    difference = torch.cat([torch.full_like(difference[:1], threshold + 1), difference])
    mask = difference > threshold
    sparse = torch.nonzero(mask.sum(dim=1) < min_tokens)[:, 0]
    mask[sparse, :min_tokens] = True
    return mask.flatten()


@register_adapter
class VideoLlama3Adapter(NativeVideoAdapter):
    """VideoLLaMA3 (``VideoLlama3ForConditionalGeneration``), Qwen2 backbone."""

    model_types = ("video_llama_3",)
    name = "VideoLLaMA3"
    hf_class_name = "VideoLlama3ForConditionalGeneration"
    placeholder_default = "<|video_pad|>"
    family_options = ("prompt_format", "token_compression", "max_visual_tokens")
    default_frame_sampler = "linspace"
    frame_extents = True
    # VideoLlama3VideoProcessor's class defaults.
    video_defaults = {"size": {"shortest_edge": 128 * 28 * 28, "longest_edge": 28 * 28 * 768},
                      "resample": 3, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                      "patch_size": 14, "temporal_patch_size": 1, "merge_size": 2,
                      "use_token_compression": True}

    def __init__(self, path, config, **kwargs) -> None:
        super().__init__(path, config, **kwargs)
        self.prompt_format = self.options.get("prompt_format", "paper")
        if self.prompt_format not in ("paper", "chat"):
            raise InputError(f"prompt_format {self.prompt_format!r} is not one of 'paper', "
                             f"'chat'")
        self.prompt_style = VIDEOLLAMA3_STYLE if self.prompt_format == "paper" else MAPFLOW_STYLE
        self.token_compression = bool(self.options.get("token_compression", False))
        budget = self.options.get("max_visual_tokens", PAPER_MAX_VISUAL_TOKENS)
        if budget is not None and (isinstance(budget, bool) or int(budget) < 1):
            raise InputError(f"max_visual_tokens must be a positive int or None, got {budget!r}")
        self.max_visual_tokens = None if budget is None else int(budget)

    def conversation(self):
        """The official conversation ("paper") or the checkpoint's chat template ("chat")."""
        return videollama3_conversation if self.prompt_format == "paper" else self.tokenizer

    def check_against_processor(self, text, frames, input_ids) -> None:
        """Only with the processor's own settings (compression on, its pixel budget): otherwise it
        cannot make the same ids."""
        if self.token_compression and self.max_visual_tokens is None:
            super().check_against_processor(text, frames, input_ids)

    def frame_size(self, height: int, width: int, n_frames: int) -> tuple[int, int]:
        """The (h, w) every frame is resized to: under ``max_visual_tokens`` (the official
        ``simple_batched_resize``: per frame at most budget/T tokens, at least 16) or under the
        checkpoint's ``size`` budget."""
        c = self.video_config
        factor = c["patch_size"] * c["merge_size"]
        if self.max_visual_tokens is None:
            size = pixel_budget(c)
            return smart_resize(height, width, factor, size["shortest_edge"],
                                size["longest_edge"] // n_frames)
        return smart_resize(height, width, factor, MIN_FRAME_TOKENS * factor ** 2,
                            self.max_visual_tokens * factor ** 2 // n_frames)

    def video_inputs(self, frames: UInt8[np.ndarray, "T H W 3"],
                     timestamps: np.ndarray | None) -> VideoInputs:
        c = self.video_config
        patch, merge, temporal = c["patch_size"], c["merge_size"], c["temporal_patch_size"]
        n_frames, height, width = frames.shape[:3]
        resized = self.frame_size(height, width, n_frames)
        pixels = self._pixels(frames, resized)  # [T, 3, h, w]
        patches, (grid_t, grid_h, grid_w) = patchify(pixels, patch, merge, temporal)
        compress = self.token_compression and c.get("use_token_compression", True)
        kept = (compression_mask(patches, (grid_t, grid_h, grid_w), merge) if compress
                else torch.ones(grid_t * grid_h * grid_w // merge ** 2, dtype=torch.bool))
        grid = (grid_h // merge, grid_w // merge)
        per_frame = kept.reshape(grid_t, grid[0] * grid[1])
        if timestamps is None:  # frames without metadata: the HF processor assumes 1 fps
            timestamps = np.arange(grid_t, dtype=np.float64)
        if len(timestamps) != grid_t:
            raise InputError(f"{len(timestamps)} timestamps for {grid_t} frames")
        token = self.placeholder
        counts = [int(frame.sum()) for frame in per_frame]
        expansion = ",".join(f"Time {float(t):.1f}s:" + token * n
                             for n, t in zip(counts, timestamps))
        kept_coords = [[divmod(int(i), grid[1]) for i in frame.nonzero()[:, 0]]
                       for frame in per_frame]
        return VideoInputs(
            model_kwargs={
                "pixel_values_videos": patches,
                "video_grid_thw": torch.tensor([[grid_t, grid_h, grid_w]]),
                "video_merge_sizes": torch.tensor([merge]),
                "video_compression_mask": kept,
            },
            expansion=expansion,
            feature_token_id=self.feature_token_id("video_token_id"),
            frame_tokens=counts,
            grids=[grid if n == grid[0] * grid[1] else None for n in counts],
            meta={"kept_coords": kept_coords, "frame_grid": grid,
                  "timestamps": [float(t) for t in timestamps],
                  "token_compression": bool(compress),
                  "max_visual_tokens": self.max_visual_tokens,
                  "prompt_format": self.prompt_format, "frame_sampler": self.frame_sampler},
        )


# ---------------------------------------------------------------------- the remote-code release
#: The remote release's own fields (``Videollama3Qwen2Config``) and bookkeeping; the rest of its
#: config.json is the Qwen2 backbone's.
_REMOTE_FIELDS = ("model_type", "architectures", "auto_map", "vision_encoder",
                  "vision_encoder_config", "mm_projector_type", "use_token_compression",
                  "image_token_index", "mm_hidden_size", "transformers_version", "_name_or_path",
                  "torch_dtype", "dtype")
#: ``Videollama3VisionEncoderConfig`` fields, which ``VideoLlama3VisionConfig`` takes as they are.
_ENCODER_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "num_channels", "patch_size", "hidden_act", "layer_norm_eps",
                   "attention_dropout")
#: Remote weight-name prefixes → native ones, first match wins. The vision encoder's and the
#: projector's inner names are the native ones already (SigLIP layout, ``readout.{0,2}``).
_RENAMES = (("model.vision_encoder.", "model.vision_model."),
            ("model.mm_projector.", "model.projector."),
            ("model.", "model.language_model."),
            ("lm_head.", "lm_head."))
#: The remote image processor's class defaults (``Videollama3ImageProcessor``, CLIP mean/std)
#: and the processor's ``video_merge_size``.
_REMOTE_PROCESSOR_DEFAULTS = {
    "resample": 3, "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "patch_size": 14, "min_tokens": 16,
    "max_tokens": 16384}


def remote_config(config: dict[str, Any], where: str) -> Any:
    """The native ``VideoLlama3Config`` that holds a ``videollama3_qwen2`` config.json, or an
    :class:`InputError` naming the field the native classes cannot hold."""
    from transformers import VideoLlama3Config

    def refuse(field: str, why: str) -> InputError:
        return InputError(f"{where}: config.json {field} {why}; the native VideoLLaMA3 classes "
                          f"cannot hold it, so it is not loaded approximately")

    architectures = config.get("architectures") or ["Videollama3Qwen2ForCausalLM"]
    if "Videollama3Qwen2ForCausalLM" not in architectures:
        raise refuse("architectures", f"{architectures} is not Videollama3Qwen2ForCausalLM")
    encoder = config.get("vision_encoder_config")
    if not isinstance(encoder, dict) or not encoder:
        raise refuse("vision_encoder_config", f"is {encoder!r} (vision_encoder "
                                              f"{config.get('vision_encoder')!r}): the tower "
                                              f"would come from another checkpoint at run time")
    projector = config.get("mm_projector_type", "mlp2x_gelu")
    if projector != "mlp2x_gelu":
        raise refuse("mm_projector_type", f"is {projector!r}; only 'mlp2x_gelu' (Linear, GELU, "
                                          f"Linear: VideoLlama3Projector) maps")
    token = config.get("image_token_index")
    if isinstance(token, bool) or not isinstance(token, int) or token < 0:
        raise refuse("image_token_index", f"is {token!r}, not the id of the <image> token")
    text = {k: v for k, v in config.items() if k not in _REMOTE_FIELDS}
    vision = {k: encoder[k] for k in _ENCODER_FIELDS if k in encoder}
    return VideoLlama3Config(
        text_config={**text, "model_type": "qwen2"}, vision_config=vision,
        image_token_id=token, video_token_id=token,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)))


def remote_state_dict(state: dict[str, torch.Tensor], expected: set[str], tied: bool,
                      where: str) -> dict[str, torch.Tensor]:
    """The remote release's weights under the native names, checked one to one against the
    native model's ``expected`` keys (``lm_head.weight`` may be absent when ``tied``); an
    :class:`InputError` names the remote keys that do not map and the native keys left empty."""
    out, origin, unmapped = {}, {}, []
    for key, value in state.items():
        prefix = next((p for p in _RENAMES if key.startswith(p[0])), None)
        if prefix is None:
            unmapped.append(key)
            continue
        name = prefix[1] + key[len(prefix[0]):]
        out[name], origin[name] = value, key
    unmapped += sorted(origin[name] for name in set(out) - expected)
    missing = sorted(expected - set(out) - ({"lm_head.weight"} if tied else set()))
    if unmapped or missing:
        raise InputError(f"{where}: the remote VideoLLaMA3 weights do not map one to one onto "
                         f"the native classes: unmapped {sorted(unmapped)[:5]}, native weights "
                         f"without a source {missing[:5]}")
    return {name: value for name, value in out.items() if name in expected}


@register_adapter
class VideoLlama3RemoteAdapter(VideoLlama3Adapter):
    """VideoLLaMA3's remote-code release (``videollama3_qwen2``, ``Videollama3Qwen2ForCausalLM``,
    the DAMO-NLP-SG/VideoLLaMA3-* checkpoints the paper ran), loaded WITHOUT its remote code:
    config and weights are mapped onto ``VideoLlama3ForConditionalGeneration`` (see
    docs/models.md), the video processor settings come from its ``preprocessor_config.json`` /
    ``processor_config.json``, frames are resized with Pillow as its image processor does, and
    the video tokens are its ``<image>`` token."""

    model_types = ("videollama3_qwen2",)
    name = "VideoLLaMA3 (remote-code format)"
    placeholder_default = "<image>"
    # The remote tokenizer names no video token; the processor writes "<image>" per video token.
    placeholder_attribute = "_mapflow_no_such_attribute"

    def load_hf_model(self, model_class: type) -> torch.nn.Module:
        check_weights(self.path)
        native = remote_config(self.config, str(self.path))
        with torch.device("meta"):
            expected = set(model_class(native).state_dict())
        files = sorted(self.path.glob("*.safetensors")) or sorted(self.path.glob("*.bin"))
        state = remote_state_dict(read_weight_files(files), expected,
                                  native.tie_word_embeddings, str(self.path))
        model, info = model_class.from_pretrained(
            None, config=native, state_dict=state, dtype=self.dtype,
            attn_implementation="eager", output_loading_info=True)
        check_loaded_keys(model, info.get("missing_keys", ()), info.get("unexpected_keys", ()),
                          f"{model_class.__name__} from {self.path}")
        return model.eval()

    def read_video_config(self) -> dict[str, Any]:
        """The remote processor's settings (class defaults overridden by preprocessor_config.json,
        ``video_merge_size`` of processor_config.json) in the native video processor's terms: the
        token budget ``min_tokens`` / ``max_tokens`` becomes pixels of (patch·merge)² each."""
        image = {**_REMOTE_PROCESSOR_DEFAULTS, **read_json(self.path / "preprocessor_config.json")}
        merge = int(read_json(self.path / "processor_config.json").get("video_merge_size", 2))
        factor = (int(image["patch_size"]) * merge) ** 2
        return {**image, "merge_size": merge, "temporal_patch_size": 1,
                "min_pixels": int(image["min_tokens"]) * factor,
                "max_pixels": int(image["max_tokens"]) * factor,
                "use_token_compression": bool(self.config.get("use_token_compression", True))}

    def check_against_processor(self, text, frames, input_ids) -> None:
        """The remote processor is remote code, which mapflow-tl does not run."""

    def _pixels(self, frames: UInt8[np.ndarray, "T H W 3"],
                size: tuple[int, int]) -> Float[torch.Tensor, "T 3 h w"]:
        """Pillow resize (the remote image processor's ``transformers.image_transforms.resize``),
        then rescale and normalise in float32."""
        from PIL import Image

        c = self.video_config
        height, width = size
        if c["do_resize"] and frames.shape[1:3] != (height, width):
            frames = np.stack([np.asarray(Image.fromarray(frame).resize(
                (width, height), resample=Image.Resampling(int(c["resample"]))))
                for frame in frames])
        pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        if c["do_rescale"]:
            pixels = pixels * float(c["rescale_factor"])
        if c["do_normalize"]:
            mean = torch.tensor(c["image_mean"], dtype=torch.float32)[:, None, None]
            std = torch.tensor(c["image_std"], dtype=torch.float32)[:, None, None]
            pixels = (pixels - mean) / std
        return pixels
