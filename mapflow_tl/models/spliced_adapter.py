"""What every VideoLLM adapter shares: loading HF parts with clear errors, validating frames,
splicing video features into the backbone embeddings and building the SegmentMap.

A family whose video tokens replace one placeholder token of the prompt (LLaVA-NeXT-Video,
LLaVA-NeXT with T-H-W pooling, Video-LLaVA, ...) subclasses :class:`SplicedVideoAdapter` and
provides only

- ``load_model()``: the HF model class to load and where its text decoder lives (default: the
  usual ``model.language_model`` + ``lm_head`` layout);
- ``video_tokens(frames)``: frames → :class:`VideoTokens` (features in sequence order and the
  layout of frames and separators), computed by the HF model's own vision code;
- a few class attributes: the media placeholder (``"<video>"``), its token id config key, the
  frame-count limits.

Prompt rendering, tokenization with exact spans, answer tokens, splicing and the SegmentMap are
written once, here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8
from torch import nn

from ..data.prompt import (
    PromptTokens,
    RenderedPrompt,
    answer_token_ids,
    render_prompt,
    tokenize_prompt,
)
from ..segments import Frame, Option, SegmentMap, Span
from .backbone import hooked_from_hf
from .base import FamilyAdapter, Prepared, VideoSample, as_video_sample

__all__ = [
    "VideoTokens",
    "SplicedVideoAdapter",
    "check_frames",
    "load_frames",
    "check_weights",
    "load_hf_model",
    "load_tokenizer",
    "load_chat_template",
    "FramePreprocessor",
    "vicuna_conversation",
    "backbone_from_hf",
    "splice_video",
    "torchvision_available",
    "frame_layout",
    "square_grid",
]

_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json",
                    "*.pt", "*.pth")


def torchvision_available() -> bool:
    """Whether a working torchvision is installed (HF video processors need it)."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install is as good as none
        return False
    return True


# ---------------------------------------------------------------------- frames
def check_frames(
    frames: Any, *, min_frames: int = 1, max_frames: int | None = None, what: str = "video"
) -> UInt8[np.ndarray, "T H W 3"]:
    """Validate frames: a uint8 array ``[T, H, W, 3]`` (RGB) with ``min_frames ≤ T ≤ max_frames``.

    Torch tensors are accepted and converted. Errors say what was expected and what came.
    """
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"{what}: frames must be a uint8 numpy array [T, H, W, 3], got "
                         f"{type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{what}: frames must be uint8 (0..255 RGB), got dtype {frames.dtype}; "
                         f"convert with (frames * 255).round().astype(np.uint8) if they are "
                         f"floats in [0, 1]")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{what}: frames must have shape [T, H, W, 3] (RGB, channels last), got "
                         f"{tuple(frames.shape)}")
    count = frames.shape[0]
    if count < min_frames or (max_frames is not None and count > max_frames):
        wanted = (f"exactly {min_frames}" if max_frames == min_frames else
                  f"at least {min_frames}" if max_frames is None else
                  f"{min_frames} to {max_frames}")
        raise ValueError(f"{what}: the model needs {wanted} frames, got {count}")
    if frames.shape[1] < 2 or frames.shape[2] < 2:
        raise ValueError(f"{what}: frames of {frames.shape[1]}×{frames.shape[2]} pixels are too "
                         f"small")
    return np.ascontiguousarray(frames)


def load_frames(
    sample: Any, *, num_frames: int, min_frames: int = 1, max_frames: int | None = None
) -> UInt8[np.ndarray, "T H W 3"]:
    """The frames of a sample: its array as given, or ``num_frames`` frames sampled from its video
    file / frame folder / GIF (paper's segment-midpoint sampling, start/end bounds applied)."""
    video = sample.video
    what = f"sample {getattr(sample, 'id', '') or ''}".strip() or "video"
    if isinstance(video, (str, Path)):
        from ..data.video import read_video

        start, end = getattr(sample, "start", None), getattr(sample, "end", None)
        bounds = None if start is None and end is None else (
            start if start is not None else 0.0, end if end is not None else float("inf"))
        frames = read_video(video, num_frames, bounds=bounds).frames
        what = str(video)
    else:
        frames = video
    return check_frames(frames, min_frames=min_frames, max_frames=max_frames, what=what)


# ---------------------------------------------------------------------- HF loading
def check_weights(path: Path) -> None:
    """A checkpoint directory must hold weight files; say how to get them when it does not."""
    if not any(next(path.glob(pattern), None) for pattern in _WEIGHT_PATTERNS):
        raise ValueError(
            f"{path} has a config.json but no model weights (*.safetensors or *.bin): the "
            f"download is incomplete. Download the checkpoint again, e.g. `hf download <hub id> "
            f"--local-dir {path}`, or pass the directory that holds the weights.")


def load_hf_model(model_class: type, path: Path, dtype: torch.dtype, **kwargs: Any) -> nn.Module:
    """``model_class.from_pretrained(path)`` on CPU in ``dtype`` with eager attention, errors
    naming the directory instead of a traceback from deep inside transformers. ``kwargs`` pass
    through to ``from_pretrained`` (e.g. ``config=``)."""
    check_weights(path)
    try:
        model = model_class.from_pretrained(path, dtype=dtype, attn_implementation="eager",
                                            **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        if "mismatched" in str(error):
            raise ValueError(f"cannot load {model_class.__name__} from {path}: the weights do "
                             f"not have the shapes its config.json describes "
                             f"({_mismatched(model_class, path, dtype, kwargs)}). Is config.json "
                             f"from another model, or a weight file from another size?") from None
        raise ValueError(f"cannot load {model_class.__name__} from {path}: {error}") from None
    return model.eval()


def _mismatched(model_class: type, path: Path, dtype: torch.dtype, kwargs: dict) -> str:
    """A short list of the weights whose shapes disagree with the config (error path only)."""
    try:
        _, info = model_class.from_pretrained(path, dtype=dtype, ignore_mismatched_sizes=True,
                                              output_loading_info=True, **kwargs)
    except Exception:  # noqa: BLE001 - the list is a courtesy; the error is raised regardless
        return "shapes differ"
    entries = [f"{name}: checkpoint {tuple(saved)} vs config {tuple(expected)}"
               if isinstance(saved, (tuple, list, torch.Size)) else str(name)
               for name, saved, expected in (
                   (entry + (None, None))[:3] if isinstance(entry, tuple) else (entry, None, None)
                   for entry in info.get("mismatched_keys", []))]
    more = f", and {len(entries) - 3} more" if len(entries) > 3 else ""
    return "; ".join(entries[:3]) + more if entries else "shapes differ"


def load_tokenizer(path: Path) -> Any:
    """The checkpoint's fast tokenizer (offset mappings are needed for exact spans)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"cannot load the tokenizer of {path}: {error}. The checkpoint needs "
                         f"its tokenizer files (tokenizer.json or tokenizer_config.json)") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"the tokenizer of {path} is a slow tokenizer; mapflow-tl needs a fast "
                         f"tokenizer (tokenizer.json) for exact token spans")
    return tokenizer


def load_chat_template(path: Path, tokenizer: Any) -> str | None:
    """The chat template: the processor's (``chat_template.jinja`` / ``chat_template.json``) or
    the tokenizer's, or None."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    as_json = path / "chat_template.json"
    if as_json.is_file():
        try:
            return json.loads(as_json.read_text())["chat_template"]
        except (json.JSONDecodeError, KeyError) as error:
            raise ValueError(f"{as_json} is not a chat template file: {error}") from None
    return getattr(tokenizer, "chat_template", None) or None


def vicuna_conversation(block: str, media: str | None) -> str:
    """LLaVA's Vicuna v1 conversation (used when a checkpoint ships no chat template)."""
    return f"USER: {media}\n{block} ASSISTANT:" if media else f"USER: {block} ASSISTANT:"


class _TemplateOwner:
    """A tokenizer with a given chat template, for :func:`render_prompt`."""

    def __init__(self, tokenizer: Any, template: str) -> None:
        self.tokenizer, self.template = tokenizer, template

    def apply_chat_template(self, conversation, **kwargs):
        return self.tokenizer.apply_chat_template(conversation, chat_template=self.template,
                                                  **kwargs)


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
            raise ValueError(f"{path} has no {config_file}: the checkpoint's processor "
                             f"configuration is missing (download it with the model)")
        self.settings = json.loads(self.config_file.read_text())
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


# ---------------------------------------------------------------------- backbone
def backbone_from_hf(hf_model: nn.Module, text_config: Any, *, dtype: torch.dtype,
                     device: str | torch.device, n_devices: int):
    """The HookedTransformer of a LLaVA-style model's text decoder (``model.language_model``) and
    LM head (None when the embeddings are tied)."""
    text_model = hf_model.model.language_model
    tied = bool(getattr(hf_model.config, "tie_word_embeddings", False)
                or getattr(text_config, "tie_word_embeddings", False))
    lm_head = None if tied else hf_model.lm_head
    return hooked_from_hf(text_model, lm_head, text_config, dtype=dtype, device=device,
                          n_devices=n_devices)


# ---------------------------------------------------------------------- splicing
@dataclass
class VideoTokens:
    """A video's tokens in sequence order and what they are.

    ``features[i]`` is the embedding of the i-th video position. ``layout`` lists, in order, the
    pieces the positions are made of: ``("frame", t, (H, W))`` for the H·W tokens of frame t
    (row-major), ``("frame", t, n)`` for n tokens of frame t without a spatial grid, and
    ``("separator", name, n)`` for n tokens between frames that belong to no frame.
    """

    features: Float[torch.Tensor, "n_video d_model"]
    layout: list[tuple[str, Any, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        total = sum(_piece_length(piece) for piece in self.layout)
        if total != self.features.shape[0]:
            raise ValueError(f"video layout covers {total} positions but there are "
                             f"{self.features.shape[0]} video features")

    @property
    def grids(self) -> list[tuple[int, int] | None]:
        return [piece[2] if isinstance(piece[2], tuple) else None
                for piece in self.layout if piece[0] == "frame"]


def _piece_length(piece: tuple[str, Any, Any]) -> int:
    size = piece[2]
    return int(size[0] * size[1]) if isinstance(size, tuple) else int(size)


def splice_video(
    tokens: PromptTokens,
    video: VideoTokens,
    *,
    video_token_id: int,
    embed: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[Int[torch.Tensor, "1 pos"], Float[torch.Tensor, "1 pos d_model"], SegmentMap]:
    """Replace the prompt's placeholder token by the video's positions.

    Returns the expanded input ids (the placeholder repeated, as the HF processors do), the
    embeddings (text tokens through ``embed``, video positions set to ``video.features``) and the
    SegmentMap: ``system`` = everything before the video, frames with their grids, separators,
    question, options and last, all shifted by the video's length.
    """
    if tokens.media is None:
        raise ValueError("the prompt has no video placeholder to splice the video into")
    ids = tokens.input_ids[0]
    at, n_video = tokens.media, video.features.shape[0]
    expanded = torch.cat([ids[:at], torch.full((n_video,), video_token_id, dtype=ids.dtype),
                          ids[at + 1:]])[None]
    text_ids = expanded.clone()
    text_ids[0, at:at + n_video] = ids[at]  # any valid id; these rows are overwritten
    embeds = embed(text_ids)
    features = video.features.to(embeds.device, embeds.dtype)
    embeds = torch.cat([embeds[:, :at], features[None], embeds[:, at + n_video:]], dim=1)

    shift = n_video - 1

    def moved(span: tuple[int, int]) -> tuple[int, int]:
        start, stop = span
        if start <= at < stop:
            raise ValueError("a text span contains the video placeholder")
        return (start + shift, stop + shift) if start > at else (start, stop)

    frames, separators, cursor = [], [], at
    for kind, key, size in video.layout:
        length = _piece_length((kind, key, size))
        if kind == "frame":
            frames.append(Frame(f"frame_{key}", cursor, cursor + length, index=int(key),
                                grid=size if isinstance(size, tuple) else None))
        elif kind == "separator":
            separators.append(Span(str(key), cursor, cursor + length, "separator"))
        else:
            raise ValueError(f"unknown video layout piece {kind!r}")
        cursor += length
    rendered: RenderedPrompt | None = tokens.rendered
    options = []
    for index, span in enumerate(tokens.options):
        start, stop = moved(span)
        chars = rendered.options[index] if rendered is not None else None
        options.append(Option(f"option_{chars.label if chars else index}", start, stop,
                              label=chars.label if chars else str(index),
                              text=chars.text if chars else "",
                              is_true=bool(chars.is_true) if chars else False))
    q_start, q_stop = moved(tokens.question)
    n_positions = expanded.shape[1]
    segments = SegmentMap(
        n_positions=n_positions,
        system=Span("system", 0, at, "system") if at > 0 else None,
        video=Span("video", at, at + n_video, "video"),
        frames=tuple(frames),
        separators=tuple(separators),
        question=Span("question", q_start, q_stop, "question"),
        options=tuple(options),
    )
    return expanded, embeds, segments


# ---------------------------------------------------------------------- the shared adapter
class SplicedVideoAdapter(FamilyAdapter):
    """An adapter whose video tokens replace one placeholder token (see the module docstring).

    Load options common to these families: ``num_frames`` (frames sampled from a video file;
    default the family's), ``template`` (a chat-template string or a conversation renderer
    ``(block, media) -> text`` overriding the checkpoint's).
    """

    #: The placeholder the chat template emits for the video.
    media_token: ClassVar[str] = "<video>"
    #: The type of the media item in the chat message (``{"type": "video"}``).
    media_type: ClassVar[str] = "video"
    #: Config attribute holding the placeholder's token id (expanded into the video positions).
    media_token_id_key: ClassVar[str] = "video_token_id"
    #: Frames sampled from a video file when the load options do not say.
    default_num_frames: ClassVar[int] = 8
    #: Whether the checkpoint's HF processor handles videos (then, where torchvision is
    #: installed, its token ids are checked against ours on every prepare).
    has_video_processor: ClassVar[bool] = True
    #: Load options this family accepts besides the common ones.
    family_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: Path, config: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(path, config, **kwargs)
        known = {"num_frames", "template"} | set(self.family_options)
        unknown = sorted(set(self.options) - known)
        if unknown:
            raise ValueError(f"unknown load option(s) {unknown} for the {self.name} family; "
                             f"options: {sorted(known)}")
        self.num_frames = int(self.options.get("num_frames", self.default_num_frames))
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {self.num_frames}")

    # -- what a family provides ------------------------------------------------------------
    def load_model(self) -> nn.Module:
        """Load and return the HF model (``load_hf_model(ModelClass, self.path, self.dtype)``)."""
        raise NotImplementedError

    def video_tokens(self, frames: UInt8[np.ndarray, "T H W 3"]) -> VideoTokens:
        """Frames → the video's features in sequence order and their layout."""
        raise NotImplementedError

    def frame_limits(self) -> tuple[int, int | None]:
        """(min, max) frame count the model accepts (max None: any)."""
        return 1, None

    def check_against_processor(self, text: str, frames: np.ndarray,
                                input_ids: torch.Tensor) -> None:
        """See :func:`check_processor_ids`."""
        if self.has_video_processor:
            check_processor_ids(self, text, frames, input_ids)

    # -- shared machinery --------------------------------------------------------------------
    def load(self) -> None:
        from transformers import AutoConfig

        check_weights(self.path)
        hf_config = AutoConfig.from_pretrained(self.path)
        self.hf_config = hf_config
        self.text_config = hf_config.text_config
        self.tokenizer = load_tokenizer(self.path)
        model = self.load_model()
        self.backbone = backbone_from_hf(model, self.text_config, dtype=self.dtype,
                                         device=self.device, n_devices=self.n_devices)
        # The text decoder now lives in the backbone; drop the HF copy to halve the memory.
        model.model.language_model = None
        model.lm_head = None
        vision_device = self.device if self.n_devices == 1 else self.backbone.cfg.device
        self.vision = model.to(vision_device)
        self.vision_device = torch.device(vision_device)
        template = self.options.get("template")
        if template is None:
            template = load_chat_template(self.path, self.tokenizer)
        if template is None:
            template = vicuna_conversation
        self.template = (_TemplateOwner(self.tokenizer, template) if isinstance(template, str)
                         else template)
        self.processor = getattr(self, "processor", None)
        token_id = getattr(hf_config, self.media_token_id_key, None)
        if token_id is None or self.tokenizer.convert_tokens_to_ids(self.media_token) != token_id:
            raise ValueError(
                f"{self.path}: the tokenizer's {self.media_token!r} token id "
                f"{self.tokenizer.convert_tokens_to_ids(self.media_token)} differs from the "
                f"config's {self.media_token_id_key} {token_id}")
        self.media_token_id = int(token_id)

    def prepare(self, sample: VideoSample | Any) -> Prepared:
        sample = as_video_sample(sample)
        question, options, answer = sample.question, tuple(sample.options), sample.answer
        if answer is not None and not isinstance(answer, (int, np.integer)):
            raise ValueError(f"sample answer must be the index of the true option, got "
                             f"{answer!r}")
        minimum, maximum = self.frame_limits()
        frames = load_frames(sample, num_frames=self.num_frames, min_frames=minimum,
                             max_frames=maximum)
        rendered = render_prompt(question, options, template=self.template,
                                 answer=None if answer is None else int(answer),
                                 media=self.media_token, media_type=self.media_type,
                                 open_ended=not options)
        tokens = tokenize_prompt(self.tokenizer, rendered, add_special_tokens=True)
        with torch.no_grad():
            video = self.video_tokens(frames)
        input_ids, embeds, segments = splice_video(
            tokens, video, video_token_id=self.media_token_id,
            embed=lambda ids: self.backbone.embed(ids.to(self.backbone.cfg.device)))
        self._check_length(segments.n_positions)
        self.check_against_processor(rendered.text, frames, input_ids)
        answer_ids = (answer_token_ids(self.tokenizer, rendered.text, rendered.labels)
                      if options else torch.zeros(0, dtype=torch.long))
        return Prepared(embeds=embeds, segments=segments, input_ids=input_ids,
                        answer_ids=answer_ids, answer=None if answer is None else int(answer),
                        prompt=rendered.text, frames=frames,
                        meta={"family": self.name, **video.meta})

    def _check_length(self, n_positions: int) -> None:
        limit = getattr(self.text_config, "max_position_embeddings", None)
        if limit is not None and n_positions > limit:
            raise ValueError(f"the prompt has {n_positions} positions, more than the backbone's "
                             f"max_position_embeddings {limit}; use fewer frames (num_frames)")
        window = getattr(self.text_config, "sliding_window", None)
        if window is not None and getattr(self.text_config, "use_sliding_window", True) \
                and n_positions > window:
            raise ValueError(
                f"the prompt has {n_positions} positions, more than the backbone's sliding "
                f"window {window}; the HookedTransformer backbone attends to all positions, so "
                f"it would not reproduce the model. Use fewer frames (num_frames)")

    def pixel_values(self, frames: np.ndarray) -> torch.Tensor:
        """Frames → pixels on the vision device in the vision dtype."""
        pixels = self.preprocess(frames)
        return pixels.to(self.vision_device, self.dtype)


def frame_layout(n_frames: int, grid: tuple[int, int]) -> list[tuple[str, Any, Any]]:
    """The layout of ``n_frames`` frames of one grid each, no separators."""
    return [("frame", t, grid) for t in range(n_frames)]


def square_grid(n_tokens: int, what: str) -> tuple[int, int]:
    """(s, s) for a square number of tokens per frame."""
    side = int(round(n_tokens ** 0.5))
    if side * side != n_tokens:
        raise ValueError(f"{what}: {n_tokens} tokens per frame is not a square grid")
    return side, side


def check_processor_ids(adapter: Any, text: str, frames: np.ndarray,
                        input_ids: Int[torch.Tensor, "1 pos"]) -> None:
    """Where the HF processor can run (torchvision installed), check that the ids it makes of the
    prompt and the video equal ours, so the video positions are where it puts them."""
    if not torchvision_available():
        return
    if adapter.processor is None:
        from transformers import AutoProcessor

        adapter.processor = AutoProcessor.from_pretrained(adapter.path)
    theirs = adapter.processor(text=text, videos=[frames], return_tensors="pt")["input_ids"]
    if not torch.equal(theirs.cpu(), input_ids.cpu()):
        raise RuntimeError(
            f"{adapter.name}: the HF processor makes {theirs.shape[1]} token ids of this prompt "
            f"but mapflow-tl made {input_ids.shape[1]}; the video positions would be wrong. "
            f"Please report this with the checkpoint name.")
