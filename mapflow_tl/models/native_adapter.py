"""LLaVA-OneVision (``llava_onevision``): SigLIP tower, 2×2 bilinear pooling, Qwen2 backbone.

Also home of :class:`NativeVideoAdapter`, the shared machinery of the transformers-native families
(LLaVA-OneVision, VideoLLaMA3, InternVL): each of them only says how frames become the HF model's
video inputs and which text the HF processor puts where the prompt's video placeholder was.

How LLaVA-OneVision lays a video out (``LlavaOnevisionProcessor.replace_video_token`` and
``LlavaOnevisionModel.get_video_features``): every frame goes through the tower, the projector maps
its p×p patches (p = image_size // patch_size) and a bilinear resize pools them to
⌈p/2⌉×⌈p/2⌉ tokens, flattened row-major; the frames follow each other and one learned
``image_newline`` embedding closes the video. All of them sit on ``<video>`` placeholder tokens:
T·⌈p/2⌉² + 1 of them. The newline is a separator, never part of a frame.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8
from torch import nn

from ..data.prompt import CharSpan, answer_token_ids, render_prompt, token_span
from ..segments import Frame, Option, SegmentMap, Span
from .backbone import hooked_from_hf
from .base import FamilyAdapter, Prepared, register_adapter
from .common import (check_frames, check_processor_ids, load_chat_template, load_hf_model,
                     load_tokenizer)

__all__ = ["VideoInputs", "NativeVideoAdapter", "LlavaOnevisionAdapter", "resize_and_normalize"]

DEFAULT_NUM_FRAMES = 8


@dataclass
class VideoInputs:
    """What one video becomes for a family's HF model and processor.

    - ``model_kwargs``: the video keyword arguments of the HF model's forward
      (``pixel_values_videos`` & co.);
    - ``expansion``: the text the HF processor substitutes for the prompt's video placeholder;
    - ``feature_token_id``: the placeholder token whose positions receive the video features;
    - ``frame_tokens[t]``: how many feature positions frame t kept, in order (the rest of the
      feature positions, e.g. LLaVA-OneVision's closing newline, are separators);
    - ``grids[t]``: frame t's (H, W) token grid when the frame kept all of it, else None (then
      ``meta["kept_coords"][t]`` lists the (h, w) of each kept token).
    """

    model_kwargs: dict[str, torch.Tensor]
    expansion: str
    feature_token_id: int
    frame_tokens: list[int]
    grids: list[tuple[int, int] | None]
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- preprocessing
_RESAMPLE = {2: "bilinear", 3: "bicubic", "bilinear": "bilinear", "bicubic": "bicubic"}


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
    PyPI; this mirrors their arithmetic: uint8 in, float interpolation, rounded back to uint8
    (torchvision's uint8 path), then ``(x - mean/scale) / (std/scale)``.
    """
    mode = _RESAMPLE.get(resample)
    if mode is None:
        raise ValueError(f"video resample {resample!r} is not supported; use 2 (bilinear) or 3 "
                         f"(bicubic) in video_preprocessor_config.json")
    if do_resize and tuple(frames.shape[-2:]) != tuple(size):
        if mode == "bilinear" and frames.device.type == "cpu":
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


class _Captured(Exception):
    """Raised from inside the HF forward to hand back the language model's keyword arguments."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("captured")
        self.kwargs = kwargs


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


# ---------------------------------------------------------------------------- the base adapter
class NativeVideoAdapter(FamilyAdapter):
    """A family whose whole model is a transformers class: the HF model computes the video
    features and splices them into the input embeddings exactly as in its own forward (captured
    just before its language model runs, with the position ids it computed); the text decoder
    becomes the HookedTransformer.

    Unlike :class:`~mapflow_tl.models.common.SplicedVideoAdapter`, the placeholder's expansion
    may mix text with the video tokens (timestamps, "Frame1: <img>"): the expansion text is
    tokenized with the prompt, and the frames are the runs of feature tokens inside it.

    Subclasses set ``hf_class_name``, ``video_defaults`` (the HF video processor's class
    defaults) and implement :meth:`video_inputs`. Load options: ``num_frames`` (frames sampled
    from a video file, default 8), ``template`` (a chat-template string overriding the
    checkpoint's).
    """

    #: ``transformers`` class of the full model (``...ForConditionalGeneration``).
    hf_class_name: ClassVar[str] = ""
    #: Defaults of the family's HF video processor, overridden by video_preprocessor_config.json.
    video_defaults: ClassVar[dict[str, Any]] = {}
    #: Tokenizer attribute naming the video placeholder, and its fallback string.
    placeholder_attribute: ClassVar[str] = "video_token"
    placeholder_default: ClassVar[str] = "<video>"
    #: Whether the processor's tokenizer call adds special tokens (BOS) to the prompt.
    add_special_tokens: ClassVar[bool] = True
    #: "sequential" rotary positions 0..n-1, or "per_sample" (M-RoPE; see RotaryPositions).
    positions: ClassVar[str] = "sequential"

    def __init__(self, path: Path, config: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(path, config, **kwargs)
        unknown = sorted(set(self.options) - {"num_frames", "template"})
        if unknown:
            raise ValueError(f"unknown load option(s) {unknown} for the {self.name} family; "
                             f"options: ['num_frames', 'template']")
        self.num_frames = int(self.options.get("num_frames", DEFAULT_NUM_FRAMES))
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {self.num_frames}")

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        import transformers

        hf_model = load_hf_model(getattr(transformers, self.hf_class_name), self.path,
                                 self.dtype)
        self.tokenizer = load_tokenizer(self.path)
        template = self.options.get("template") or load_chat_template(self.path, self.tokenizer)
        if not isinstance(template, str):
            raise ValueError(f"{self.path} has no chat template (chat_template.jinja, "
                             f"chat_template.json or the tokenizer's); pass template='...'")
        self.tokenizer.chat_template = template
        self.placeholder = (getattr(self.tokenizer, self.placeholder_attribute, None)
                            or self.placeholder_default)
        self.video_config = {**self.video_defaults,
                             **_read_json(self.path / "video_preprocessor_config.json")}
        self.hf_config = hf_model.config
        language_model = hf_model.model.language_model
        # A tied lm_head shares the embedding's weight, so passing it is right either way.
        self.backbone = hooked_from_hf(
            language_model, hf_model.lm_head, hf_model.config.text_config,
            dtype=self.dtype, device=self.device, n_devices=self.n_devices,
            positions=self.positions)
        # The backbone owns the decoder now: keep embeddings, rotary, vision tower, projector.
        language_model.layers = nn.ModuleList()
        hf_model.lm_head = nn.Identity()
        first_device = self.device if self.n_devices == 1 else self.backbone.cfg.device
        self.vision = hf_model.to(first_device).eval()
        self.processor = None  # loaded on first use where torchvision exists (check below)

    # ------------------------------------------------------------------ video
    def frames_of(self, sample: Any) -> tuple[UInt8[np.ndarray, "T H W 3"], np.ndarray | None]:
        """The sample's frames (uint8 ``[T, H, W, 3]``) and their timestamps in seconds (None for
        a frames array), sampled from the file with the paper's segment midpoints for a path."""
        video = sample.video
        if isinstance(video, (str, Path)):
            from ..data.video import read_video

            start, end = getattr(sample, "start", None), getattr(sample, "end", None)
            bounds = None if start is None and end is None else (
                start if start is not None else 0.0, end if end is not None else math.inf)
            clip = read_video(video, self.num_frames, bounds=bounds)
            return (check_frames(clip.frames, what=str(video)),
                    np.asarray(clip.timestamps, dtype=np.float64))
        return check_frames(video, what=getattr(sample, "id", "") or "video"), None

    def video_inputs(self, frames: UInt8[np.ndarray, "T H W 3"],
                     timestamps: np.ndarray | None) -> VideoInputs:
        """Frames → the HF model's video inputs and the processor's placeholder expansion."""
        raise NotImplementedError

    def feature_token_id(self, *config_fields: str) -> int:
        """The token id the HF model scatters video features onto (from its config), checked
        against the tokenizer's placeholder."""
        token_id = next((getattr(self.hf_config, f) for f in config_fields
                         if getattr(self.hf_config, f, None) is not None), None)
        placeholder_id = self.tokenizer.convert_tokens_to_ids(self.placeholder)
        if token_id is None or token_id != placeholder_id:
            raise ValueError(
                f"{self.path}: the model's video token id ({'/'.join(config_fields)} = "
                f"{token_id}) is not the tokenizer's placeholder {self.placeholder!r} "
                f"(id {placeholder_id}); config.json and the tokenizer do not belong together")
        return int(token_id)

    def _pixels(self, frames: UInt8[np.ndarray, "T H W 3"],
                size: tuple[int, int]) -> Float[torch.Tensor, "T 3 h w"]:
        c = self.video_config
        return resize_and_normalize(
            torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2), size,
            resample=c.get("resample", 3), do_resize=c.get("do_resize", True),
            do_rescale=c.get("do_rescale", True), rescale_factor=c.get("rescale_factor", 1 / 255),
            do_normalize=c.get("do_normalize", True), image_mean=c["image_mean"],
            image_std=c["image_std"])

    # ------------------------------------------------------------------ prepare
    @torch.no_grad()
    def capture(self, input_ids: Int[torch.Tensor, "1 pos"],
                model_kwargs: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The keyword arguments the HF model's own forward passes to its language model: the
        input embeddings (text embeddings with the video features scattered onto the
        placeholder positions) and, where the family computes them, the position ids."""
        model = self.vision.model
        device = model.get_input_embeddings().weight.device

        def stop(module, args, kwargs):
            raise _Captured(kwargs)

        handle = model.language_model.register_forward_pre_hook(stop, with_kwargs=True)
        inputs = {name: value.to(device, self.dtype) if value.is_floating_point()
                  else value.to(device) for name, value in model_kwargs.items()}
        try:
            model(input_ids=input_ids.to(device), **inputs)
        except _Captured as captured:
            return captured.kwargs
        finally:
            handle.remove()
        raise RuntimeError(f"{type(model).__name__} never called its language model")

    def extra_model_inputs(self, input_ids: Int[torch.Tensor, "1 pos"]) -> dict[str, Any]:
        """Model inputs that depend on the final token ids (none by default)."""
        return {}

    def bind(self, prepared: Prepared, captured: dict[str, Any]) -> None:
        """Attach per-sample state the backbone needs besides the embeddings (none by default)."""

    def prepare(self, sample: Any) -> Prepared:
        answer = getattr(sample, "answer_index", None)
        if answer is None:
            answer = getattr(sample, "answer", None)
        if answer is not None and not isinstance(answer, (int, np.integer)):
            raise ValueError(f"sample answer must be the index of the true option, got "
                             f"{answer!r}")
        answer = None if answer is None else int(answer)
        frames, timestamps = self.frames_of(sample)
        video = self.video_inputs(frames, timestamps)
        options = list(getattr(sample, "options", ()) or ())
        rendered = render_prompt(sample.question, options, template=self.tokenizer,
                                 answer=answer, media=self.placeholder, open_ended=not options)
        media = rendered.media
        text = rendered.text[:media.start] + video.expansion + rendered.text[media.stop:]
        shift = len(video.expansion) - (media.stop - media.start)
        encoding = self.tokenizer(text, add_special_tokens=self.add_special_tokens,
                                  return_offsets_mapping=True)
        offsets = [tuple(int(x) for x in pair) for pair in encoding["offset_mapping"]]
        input_ids = torch.tensor([encoding["input_ids"]], dtype=torch.long)
        self._check_length(input_ids.shape[1])
        if timestamps is None:  # with a file's timestamps the processor would need its metadata
            self.check_against_processor(rendered.text, frames, input_ids)
        video_span = token_span(text, offsets, CharSpan(media.start, media.start
                                                         + len(video.expansion)), "video")
        segments = self._segments(
            input_ids, video, video_span,
            token_span(text, offsets, rendered.question.shifted(shift), "question"),
            [(option, token_span(text, offsets, option.shifted(shift),
                                 f"option ({option.label})")) for option in rendered.options])
        model_inputs = {**video.model_kwargs, **self.extra_model_inputs(input_ids)}
        captured = self.capture(input_ids, model_inputs)
        embeds = captured["inputs_embeds"].detach()
        labels = [option.label for option in rendered.options]
        answer_ids = (answer_token_ids(self.tokenizer, rendered.text, labels,
                                       add_special_tokens=self.add_special_tokens)
                      if labels else torch.zeros(0, dtype=torch.long))
        prepared = Prepared(embeds=embeds, segments=segments, input_ids=input_ids,
                            answer_ids=answer_ids, answer=answer, prompt=rendered.text,
                            frames=frames,
                            meta={"family": self.name, "model_inputs": model_inputs,
                                  **video.meta})
        self.bind(prepared, captured)
        return prepared

    def _check_length(self, n_positions: int) -> None:
        limit = getattr(self.hf_config.text_config, "max_position_embeddings", None)
        if limit is not None and n_positions > limit:
            raise ValueError(f"the prompt has {n_positions} positions, more than the backbone's "
                             f"max_position_embeddings {limit}; use fewer frames (num_frames)")

    def check_against_processor(self, text: str, frames: np.ndarray,
                                input_ids: torch.Tensor) -> None:
        """See :func:`~mapflow_tl.models.common.check_processor_ids`."""
        check_processor_ids(self, text, frames, input_ids)

    def _segments(self, input_ids: Int[torch.Tensor, "1 pos"], video: VideoInputs,
                  video_span: tuple[int, int], question: tuple[int, int],
                  options: list[tuple[Any, tuple[int, int]]]) -> SegmentMap:
        """Frames from the feature positions the model fills, in order; everything else inside
        the video's text (newlines, timestamps, image start/end tokens) as separators."""
        start, stop = video_span
        ids = input_ids[0]
        features = (ids[start:stop] == video.feature_token_id).nonzero()[:, 0] + start
        outside = int((ids == video.feature_token_id).sum()) - len(features)
        if outside or len(features) < sum(video.frame_tokens):
            raise ValueError(
                f"{self.name}: the prompt holds {len(features)} video feature tokens inside the "
                f"video and {outside} outside it, but the frames need {sum(video.frame_tokens)}; "
                f"the question or the chat template must not contain {self.placeholder!r} or "
                f"the feature token itself")
        frames, cursor = [], 0
        for t, (count, grid) in enumerate(zip(video.frame_tokens, video.grids)):
            positions = features[cursor:cursor + count]
            cursor += count
            first, last = int(positions[0]), int(positions[-1])
            if last - first + 1 != count:
                raise ValueError(f"{self.name}: frame {t}'s feature tokens are not contiguous "
                                 f"({first}…{last} for {count} tokens)")
            frames.append(Frame(f"frame_{t}", first, last + 1, index=t, grid=grid))
        inside = set(range(start, stop))
        for frame in frames:
            inside -= set(frame.positions)
        separators, run = [], []
        for position in sorted(inside) + [None]:
            if run and (position is None or position != run[-1] + 1):
                separators.append(Span(f"separator_{len(separators)}", run[0], run[-1] + 1,
                                       "separator"))
                run = []
            if position is not None:
                run.append(position)
        n = int(ids.shape[0])
        return SegmentMap(
            n_positions=n,
            system=Span("system", 0, start, "system") if start else None,
            video=Span("video", start, stop, "video"),
            frames=tuple(frames),
            separators=tuple(separators),
            question=Span("question", *question, "question"),
            options=tuple(Option(f"option_{o.label}", a, b, label=o.label, text=o.text,
                                 is_true=o.is_true) for o, (a, b) in options),
        )


# ---------------------------------------------------------------------------- LLaVA-OneVision
@register_adapter
class LlavaOnevisionAdapter(NativeVideoAdapter):
    """LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``), Qwen2 backbone."""

    model_types = ("llava_onevision",)
    name = "LLaVA-OneVision"
    hf_class_name = "LlavaOnevisionForConditionalGeneration"
    # LlavaOnevisionVideoProcessor's class defaults.
    video_defaults = {"size": {"height": 384, "width": 384}, "resample": 3,
                      "image_mean": [0.48145466, 0.4578275, 0.40821073],
                      "image_std": [0.26862954, 0.26130258, 0.27577711]}
    add_special_tokens = True

    def pooled_grid(self) -> tuple[int, int]:
        """⌈p/2⌉×⌈p/2⌉ tokens per frame, p = image_size // patch_size (``apply_pooling``)."""
        vision = self.hf_config.vision_config
        patches = vision.image_size // vision.patch_size
        return math.ceil(patches / 2), math.ceil(patches / 2)

    def video_inputs(self, frames, timestamps) -> VideoInputs:
        size = self.video_config["size"]
        if "height" not in size:
            raise ValueError(f"{self.path}/video_preprocessor_config.json: size {size} must give "
                             f"height and width")
        pixels = self._pixels(frames, (size["height"], size["width"]))
        height, width = self.pooled_grid()
        n_frames = pixels.shape[0]
        token = self.placeholder
        token_id = self.feature_token_id("video_token_index", "video_token_id")
        return VideoInputs(
            model_kwargs={"pixel_values_videos": pixels[None]},
            expansion=token * (n_frames * height * width + 1),  # +1: the closing image_newline
            feature_token_id=token_id,
            frame_tokens=[height * width] * n_frames,
            grids=[(height, width)] * n_frames,
        )
