"""The base of the transformers-native families (LLaVA-OneVision, VideoLLaMA3, InternVL,
Qwen2-VL / Qwen2.5-VL, and InternVL-1.5 mapped onto native modules): each of them only says how
frames become the HF model's video inputs (:class:`VideoInputs`) and which text the HF processor
puts where the prompt's video placeholder was; :class:`NativeVideoAdapter` does the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from jaxtyping import Float, Int, UInt8
from torch import nn

from ..errors import InputError
from ..segments import Frame, Option, SegmentMap, Span
from .adapter import (FamilyAdapter, answer_index, check_context_length, check_num_frames_options,
                      frame_sampler_option, sample_frame_sampler)
from .backbone import backbone_from_hf, keeps_hf_decoder
from .frames import load_frames_and_context
from .loading import check_processor_ids, load_hf_model, load_tokenizer, read_json
from .pixels import resize_and_normalize
from .prompt import (MAPFLOW_STYLE, CharSpan, PromptStyle, answer_token_ids, prompt_spans,
                     render_prompt, token_span)
from .templates import load_chat_template
from .videollm import Prepared, VideoSample, as_video_sample

__all__ = ["VideoInputs", "NativeVideoAdapter", "continue_text_positions"]


def continue_text_positions(position_ids: Int[torch.Tensor, "3 1 pos"],
                            n_new: int) -> Int[torch.Tensor, "3 1 pos_plus_new"]:
    """3D rotary position ids (M-RoPE) of a prompt followed by ``n_new`` text tokens, as the HF
    Qwen2-VL / Qwen2.5-VL / Qwen3-VL / GLM-4.1V models give them while generating: appended
    token ``j`` (0-based) sits at ``max(position_ids) + 1 + j`` on all three axes (their
    ``rope_deltas = max + 1 − n`` added to the cache position ``n + j``). The maximum is over
    the whole prompt and all axes, so it is the last prompt token's position + 1 unless the
    video's temporal positions reach further than the text after it."""
    if position_ids.dim() != 3 or position_ids.shape[0] != 3 or n_new < 0:
        raise InputError(f"position ids must be [3, 1, pos] and n_new >= 0, got "
                         f"{tuple(position_ids.shape)} and {n_new}")
    start = int(position_ids.max()) + 1
    new = torch.arange(start, start + n_new, dtype=position_ids.dtype,
                       device=position_ids.device)
    return torch.cat([position_ids, new.view(1, 1, -1).expand(3, position_ids.shape[1], -1)],
                     dim=-1)

#: Frames sampled from a video file when the ``num_frames`` load option does not say.
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
      ``meta["kept_coords"][t]`` lists the (h, w) of each kept token);
    - ``source_frames[t]``: the input frames token frame t covers, when a token frame covers
      several (a temporal patch); None when each token frame is one input frame.
    """

    model_kwargs: dict[str, torch.Tensor]
    expansion: str
    feature_token_id: int
    frame_tokens: list[int]
    grids: list[tuple[int, int] | None]
    meta: dict[str, Any] = field(default_factory=dict)
    source_frames: list[tuple[int, ...]] | None = None


class _Captured(Exception):
    """Raised from inside the HF forward to hand back the language model's keyword arguments."""

    def __init__(self, kwargs: dict[str, Any]) -> None:
        super().__init__("captured")
        self.kwargs = kwargs


class NativeVideoAdapter(FamilyAdapter):
    """A family whose whole model is a transformers class: the HF model computes the video
    features and splices them into the input embeddings exactly as in its own forward (captured
    just before its language model runs, with the position ids it computed); the text decoder
    becomes the HookedTransformer.

    Unlike :class:`~mapflow_tl.models.spliced_adapter.SplicedVideoAdapter`, the placeholder's
    expansion may mix text with the video tokens (timestamps, "Frame1: <img>"): the expansion
    text is tokenized with the prompt, and the frames are the runs of feature tokens inside it.

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
    #: How the multiple-choice block is written (:class:`~mapflow_tl.models.prompt.PromptStyle`).
    prompt_style: PromptStyle = MAPFLOW_STYLE
    #: Whether each frame's extent takes the text before it (the official VideoLLaMA3 frames).
    frame_extents: bool = False
    #: How frames are sampled from a video file by default ("midpoints" or "linspace").
    default_frame_sampler: ClassVar[str] = "midpoints"
    #: Load options this family accepts besides the common ones.
    family_options: ClassVar[tuple[str, ...]] = ()
    #: Attribute of the HF ``model.model`` that holds the text decoder (SmolVLM: "text_model").
    text_model_attribute: ClassVar[str] = "language_model"

    def __init__(self, path: Path, config: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(path, config, **kwargs)
        self.num_frames = check_num_frames_options(
            self, {"num_frames", "template", *self.family_options}, DEFAULT_NUM_FRAMES)
        self.frame_sampler = frame_sampler_option(self, self.default_frame_sampler)

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        import transformers

        hf_model = self.load_hf_model(getattr(transformers, self.hf_class_name))
        self.tokenizer = load_tokenizer(self.path)
        template = self.options.get("template") or load_chat_template(self.path, self.tokenizer)
        if not isinstance(template, str):
            raise InputError(f"{self.path} has no chat template (chat_template.jinja, "
                             f"chat_template.json or the tokenizer's); pass template='...'")
        self.tokenizer.chat_template = template
        self.placeholder = (getattr(self.tokenizer, self.placeholder_attribute, None)
                            or self.placeholder_default)
        self.video_config = self.read_video_config()
        self.hf_config = hf_model.config
        language_model = getattr(hf_model.model, self.text_model_attribute)
        # A tied lm_head shares the embedding's weight, so passing it is right either way.
        self.backbone = backbone_from_hf(
            language_model, hf_model.lm_head, hf_model.config.text_config,
            backend=self.backend, dtype=self.dtype, device=self.device,
            n_devices=self.n_devices, positions=self.positions)
        # A converted backbone owns a copy of the decoder now: keep embeddings, rotary, vision
        # tower, projector (a bridge runs the HF decoder itself, which stays where it is).
        if not keeps_hf_decoder(self.backbone):
            language_model.layers = nn.ModuleList()
        hf_model.lm_head = nn.Identity()
        first_device = self.device if self.n_devices == 1 else self.backbone.cfg.device
        self.vision = hf_model.to(first_device).eval()
        self.processor = None  # loaded on first use where torchvision exists (check below)

    def load_hf_model(self, model_class: type) -> nn.Module:
        """The full HF model from the checkpoint directory (a remote-code format overrides this
        to map its weights onto ``model_class``)."""
        return load_hf_model(model_class, self.path, self.dtype)

    def read_video_config(self) -> dict[str, Any]:
        """The video processor's settings: ``video_defaults`` overridden by
        video_preprocessor_config.json."""
        return {**self.video_defaults, **read_json(self.path / "video_preprocessor_config.json")}

    # ------------------------------------------------------------------ video
    def video_inputs(self, frames: UInt8[np.ndarray, "T H W 3"],
                     timestamps: np.ndarray | None) -> VideoInputs:
        """Frames → the HF model's video inputs and the processor's placeholder expansion."""
        raise NotImplementedError

    def conversation(self) -> Any:
        """What renders the conversation: the tokenizer (its chat template) by default."""
        return self.tokenizer

    def feature_token_id(self, *config_fields: str) -> int:
        """The token id the HF model scatters video features onto (from its config), checked
        against the tokenizer's placeholder."""
        token_id = next((getattr(self.hf_config, f) for f in config_fields
                         if getattr(self.hf_config, f, None) is not None), None)
        placeholder_id = self.tokenizer.convert_tokens_to_ids(self.placeholder)
        if token_id is None or token_id != placeholder_id:
            raise InputError(
                f"{self.path}: the model's video token id ({'/'.join(config_fields)} = "
                f"{token_id}) is not the tokenizer's placeholder {self.placeholder!r} "
                f"(id {placeholder_id}); config.json and the tokenizer do not belong together")
        return int(token_id)

    def fixed_size(self) -> tuple[int, int]:
        """The (height, width) every frame is resized to, from the video processor config's
        ``size`` (for processors that resize to one fixed size)."""
        size = self.video_config["size"]
        if "height" not in size:
            raise InputError(f"{self.path}/video_preprocessor_config.json: size {size} must give "
                             f"height and width")
        return size["height"], size["width"]

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

        handle = getattr(model, self.text_model_attribute).register_forward_pre_hook(
            stop, with_kwargs=True)
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

    def bind_rotary_positions(self, prepared: Prepared, captured: dict[str, Any],
                              additions: dict[int, tuple[torch.Tensor, torch.Tensor]]
                              | None = None) -> None:
        """:meth:`bind` of an M-RoPE family (``positions = "per_sample"``): the 3D position ids
        the HF model computed for this prompt, recorded in ``prepared.meta["position_ids"]`` and
        registered with the backbone's :class:`~mapflow_tl.models.backbone.RotaryPositions`
        (``self.rotary``) for these embeddings, with any residual ``additions`` (layer →
        positions, features; Qwen3-VL's DeepStack)."""
        position_ids = captured.get("position_ids")
        if position_ids is None:
            raise RuntimeError(f"{self.hf_class_name} computed no 3D position ids for this prompt")
        if position_ids.shape[0] == 4:  # text positions prepended for packed sequences
            position_ids = position_ids[1:]
        prepared.meta["position_ids"] = position_ids.detach().cpu()
        self.rotary.register(prepared.embeds, position_ids, additions)

    def bind_appended(self, prompt: Prepared, embeds: torch.Tensor,
                      input_ids: torch.Tensor | None = None) -> dict[str, Any]:
        """:meth:`FamilyAdapter.bind_appended`. Under per-sample 3D positions (M-RoPE) the
        appended text tokens get :func:`continue_text_positions` of the prompt's (the positions
        HF's generation gives them: ``rope_deltas``) and keep the prompt's residual additions
        (DeepStack: at visual positions only, so none for the appended tokens); ``meta`` gets
        the longer ``position_ids`` and, with ``input_ids``, the model inputs computed from them
        (Qwen's token types)."""
        updates: dict[str, Any] = {}
        if input_ids is not None:
            updates["model_inputs"] = {**prompt.meta.get("model_inputs", {}),
                                       **self.extra_model_inputs(input_ids)}
        if self.positions != "per_sample":
            return updates
        n_new = embeds.shape[1] - prompt.n_positions
        position_ids = continue_text_positions(prompt.meta["position_ids"], n_new)
        self.rotary.register(embeds, position_ids, self.rotary.additions_of(prompt.embeds))
        updates["position_ids"] = position_ids
        return updates

    def unbind(self, embeds: torch.Tensor) -> None:
        if self.positions == "per_sample":
            self.rotary.forget(embeds)

    def prepare(self, sample: VideoSample | Any) -> Prepared:
        sample = as_video_sample(sample)
        answer = answer_index(sample)
        sampler = sample_frame_sampler(self, sample)
        frames, timestamps, context = load_frames_and_context(
            sample, num_frames=self.num_frames, sampler=sampler)
        video = self.video_inputs(frames, timestamps)
        options = list(sample.options)
        rendered = render_prompt(sample.question, options, template=self.conversation(),
                                 answer=answer, media=self.placeholder, open_ended=not options,
                                 assistant_prefix=None if options else sample.answer_prompt,
                                 style=self.prompt_style, context=context)
        media = rendered.media
        text = rendered.text[:media.start] + video.expansion + rendered.text[media.stop:]
        shift = len(video.expansion) - (media.stop - media.start)
        encoding = self.tokenizer(text, add_special_tokens=self.add_special_tokens,
                                  return_offsets_mapping=True)
        offsets = [tuple(int(x) for x in pair) for pair in encoding["offset_mapping"]]
        input_ids = torch.tensor([encoding["input_ids"]], dtype=torch.long)
        video_span = token_span(text, offsets, CharSpan(media.start, media.start
                                                         + len(video.expansion)), "video")
        n_video = video_span[1] - video_span[0]
        self.check_length(input_ids.shape[1], n_frames=len(frames),
                          video_positions=lambda k: n_video if k == len(frames) else None,
                          from_file=isinstance(sample.video, (str, Path)))
        if timestamps is None:  # with a file's timestamps the processor would need its metadata
            self.check_against_processor(rendered.text, frames, input_ids)
        question, option_spans, option_texts, coarse = prompt_spans(text, offsets, rendered,
                                                                    shift)
        segments = self._segments(input_ids, video, video_span, question,
                                  list(zip(rendered.options, option_spans, option_texts)),
                                  coarse)
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
                                  "prompt_style": self.prompt_style.name,
                                  **video.meta, "frame_sampler": sampler,
                                  **({} if context is None else {"subtitles": context})})
        self.bind(prepared, captured)
        return prepared

    def check_length(self, n_positions: int, n_frames: int | None = None,
                     video_positions=None, from_file: bool = True) -> None:
        """Refuse a prompt longer than the backbone reproduces (see
        :func:`~mapflow_tl.models.adapter.check_context_length`; ``n_frames`` and
        ``video_positions`` name the frames in the error)."""
        check_context_length(n_positions, self.hf_config.text_config, n_frames=n_frames,
                             video_positions=video_positions, from_file=from_file)

    def check_against_processor(self, text: str, frames: np.ndarray,
                                input_ids: torch.Tensor) -> None:
        """See :func:`~mapflow_tl.models.loading.check_processor_ids`."""
        check_processor_ids(self, text, frames, input_ids)

    def _segments(self, input_ids: Int[torch.Tensor, "1 pos"], video: VideoInputs,
                  video_span: tuple[int, int], question: tuple[int, int],
                  options: list[tuple[Any, tuple[int, int], tuple[int, int]]],
                  question_with_options: tuple[int, int] | None = None) -> SegmentMap:
        """Frames from the feature positions the model fills, in order; everything else inside
        the video's text (newlines, timestamps, image start/end tokens) as separators. With
        :attr:`frame_extents`, each frame's extent runs from the end of the previous frame's
        tokens (the video's start for frame 0) to the end of its own, so that the text between
        frames belongs to the frame after it, as the official VideoLLaMA3 code cuts them."""
        start, stop = video_span
        ids = input_ids[0]
        features = (ids[start:stop] == video.feature_token_id).nonzero()[:, 0] + start
        outside = int((ids == video.feature_token_id).sum()) - len(features)
        if outside or len(features) < sum(video.frame_tokens):
            raise InputError(
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
                raise InputError(f"{self.name}: frame {t}'s feature tokens are not contiguous "
                                 f"({first}…{last} for {count} tokens)")
            extent = {}
            if self.frame_extents:
                extent = dict(extent_start=frames[-1].stop if frames else start,
                              extent_stop=last + 1 if t < len(video.frame_tokens) - 1 else stop)
            if video.source_frames is not None:
                extent["source_frames"] = tuple(video.source_frames[t])
            frames.append(Frame(f"frame_{t}", first, last + 1, index=t, grid=grid, **extent))
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
                                 is_true=o.is_true, text_start=ta, text_stop=tb)
                          for o, (a, b), (ta, tb) in options),
            question_with_options=(None if question_with_options is None else
                                   Span("question_with_options", *question_with_options, "text")),
        )
