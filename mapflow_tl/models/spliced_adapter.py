"""The base of families whose video tokens replace one placeholder token of the prompt
(LLaVA-NeXT-Video, Video-LLaVA, LLaVA-NeXT and PLLaVA on pooled frames, ...).

A family subclasses :class:`SplicedVideoAdapter` and provides only

- ``hf_class_name`` (the transformers class of the full model) and ``preprocessor_file`` (the
  checkpoint's frame-preprocessing settings), or its own ``load_model()`` when loading needs more
  (the HF model's text decoder must sit at the usual ``model.language_model`` + ``lm_head``);
- ``video_tokens(frames)``: frames → :class:`~mapflow_tl.models.splicing.VideoTokens` (features
  in sequence order and the layout of frames and separators), computed by the HF model's own
  vision code;
- a few class attributes: the media placeholder (``"<video>"``), its token id config key, the
  frame-count limits.

Prompt rendering, tokenization with exact spans, answer tokens, splicing and the SegmentMap are
written once, here and in the modules it imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from jaxtyping import UInt8
from torch import nn

from ..errors import InputError
from .adapter import (FamilyAdapter, answer_index, check_context_length, check_num_frames_options,
                      frame_sampler_option, sample_frame_sampler)
from .backbone import backbone_from_hf
from .frames import load_frames_and_context
from .loading import check_processor_ids, check_weights, load_hf_model, load_tokenizer
from .pixels import FramePreprocessor
from .prompt import MAPFLOW_STYLE, PromptStyle, answer_token_ids, render_prompt, tokenize_prompt
from .splicing import VideoTokens, splice_video
from .templates import TokenizerWithTemplate, load_chat_template, vicuna_conversation
from .videollm import Prepared, VideoSample, as_video_sample

__all__ = ["SplicedVideoAdapter"]


class SplicedVideoAdapter(FamilyAdapter):
    """An adapter whose video tokens replace one placeholder token (see the module docstring).

    Load options common to these families: ``num_frames`` (frames sampled from a video file;
    default the family's), ``template`` (a chat-template string or a conversation renderer
    ``(block, media) -> text`` overriding the checkpoint's).
    """

    #: ``transformers`` class of the full model (``...ForConditionalGeneration``), loaded by the
    #: default :meth:`load_model`.
    hf_class_name: ClassVar[str] = ""
    #: The checkpoint's file with the frame preprocessing settings (sizes, mean, std).
    preprocessor_file: ClassVar[str] = "video_preprocessor_config.json"
    #: The placeholder the chat template emits for the video.
    media_token: ClassVar[str] = "<video>"
    #: The type of the media item in the chat message (``{"type": "video"}``).
    media_type: ClassVar[str] = "video"
    #: Config attribute holding the placeholder's token id (expanded into the video positions).
    media_token_id_key: ClassVar[str] = "video_token_id"
    #: Frames sampled from a video file when the load options do not say, and how.
    default_num_frames: ClassVar[int] = 8
    default_frame_sampler: ClassVar[str] = "midpoints"
    #: Whether the checkpoint's HF processor handles videos (then, where torchvision is
    #: installed, its token ids are checked against ours on every prepare).
    has_video_processor: ClassVar[bool] = True
    #: Load options this family accepts besides the common ones.
    family_options: ClassVar[tuple[str, ...]] = ()
    #: How the multiple-choice block is written (:class:`~mapflow_tl.models.prompt.PromptStyle`).
    prompt_style: PromptStyle = MAPFLOW_STYLE

    def __init__(self, path: Path, config: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(path, config, **kwargs)
        self.num_frames = check_num_frames_options(
            self, {"num_frames", "template", *self.family_options}, self.default_num_frames)
        self.frame_sampler = frame_sampler_option(self, self.default_frame_sampler)

    # -- what a family provides ------------------------------------------------------------
    def load_model(self) -> nn.Module:
        """Set ``self.preprocess`` and load and return the HF model (``hf_class_name``)."""
        import transformers

        self.preprocess = FramePreprocessor(self.path, self.preprocessor_file,
                                            video=self.has_video_processor)
        return load_hf_model(getattr(transformers, self.hf_class_name), self.path, self.dtype)

    def video_tokens(self, frames: UInt8[np.ndarray, "T H W 3"]) -> VideoTokens:
        """Frames → the video's features in sequence order and their layout."""
        raise NotImplementedError

    def frame_limits(self) -> tuple[int, int | None]:
        """(min, max) frame count the model accepts (max None: any)."""
        return 1, None

    def video_token_count(self, n_frames: int) -> int | None:
        """How many positions ``n_frames`` frames take, known before the vision tower runs, so
        that a too-long prompt is refused first (None: unknown until the tower has run)."""
        return None

    def check_against_processor(self, text: str, frames: np.ndarray,
                                input_ids: torch.Tensor) -> None:
        """See :func:`~mapflow_tl.models.loading.check_processor_ids`."""
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
        self.backbone = self._backbone(model)
        # The text decoder now lives in the backbone (a converted copy, or — on the bridge —
        # the same modules, which the bridge keeps): drop the HF model's references to it.
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
        self.template = (TokenizerWithTemplate(self.tokenizer, template)
                         if isinstance(template, str) else template)
        self.processor = getattr(self, "processor", None)
        token_id = getattr(hf_config, self.media_token_id_key, None)
        if token_id is None or self.tokenizer.convert_tokens_to_ids(self.media_token) != token_id:
            raise InputError(
                f"{self.path}: the tokenizer's {self.media_token!r} token id "
                f"{self.tokenizer.convert_tokens_to_ids(self.media_token)} differs from the "
                f"config's {self.media_token_id_key} {token_id}")
        self.media_token_id = int(token_id)

    def _backbone(self, hf_model: nn.Module):
        """The HookedTransformer of the text decoder (``model.language_model``) and LM head (None
        when the embeddings are tied)."""
        tied = bool(getattr(hf_model.config, "tie_word_embeddings", False)
                    or getattr(self.text_config, "tie_word_embeddings", False))
        lm_head = None if tied else hf_model.lm_head
        return backbone_from_hf(hf_model.model.language_model, lm_head, self.text_config,
                                backend=self.backend, dtype=self.dtype, device=self.device,
                                n_devices=self.n_devices)

    def prepare(self, sample: VideoSample | Any) -> Prepared:
        sample = as_video_sample(sample)
        question, options, answer = sample.question, tuple(sample.options), answer_index(sample)
        minimum, maximum = self.frame_limits()
        sampler = sample_frame_sampler(self, sample)
        frames, _, context = load_frames_and_context(
            sample, num_frames=self.num_frames, min_frames=minimum, max_frames=maximum,
            sampler=sampler)
        rendered = render_prompt(question, options, template=self.template, answer=answer,
                                 media=self.media_token, media_type=self.media_type,
                                 open_ended=not options, style=self.prompt_style,
                                 assistant_prefix=None if options else sample.answer_prompt,
                                 context=context)
        tokens = tokenize_prompt(self.tokenizer, rendered, add_special_tokens=True)
        answer_ids = (answer_token_ids(self.tokenizer, rendered.text, rendered.labels)
                      if options else torch.zeros(0, dtype=torch.long))
        # The placeholder becomes the video's positions, whose number the frame count and grid
        # fix: refuse a too-long prompt before the vision tower spends memory on the frames.
        n_video = self.video_token_count(len(frames))
        if n_video is not None:
            check_context_length(tokens.input_ids.shape[1] - 1 + n_video, self.text_config,
                                 n_frames=len(frames), video_positions=self.video_token_count,
                                 from_file=isinstance(sample.video, (str, Path)))
        with torch.no_grad():
            video = self.video_tokens(frames)
        if n_video is not None and video.features.shape[0] != n_video:
            raise RuntimeError(f"{self.name}: {len(frames)} frames gave {video.features.shape[0]} "
                               f"video tokens, video_token_count said {n_video}; please report "
                               f"this with the checkpoint name")
        input_ids, embeds, segments = splice_video(
            tokens, video, video_token_id=self.media_token_id,
            embed=lambda ids: self.backbone.embed(ids.to(self.backbone.cfg.device)))
        check_context_length(segments.n_positions, self.text_config)
        self.check_against_processor(rendered.text, frames, input_ids)
        return Prepared(embeds=embeds, segments=segments, input_ids=input_ids,
                        answer_ids=answer_ids, answer=answer, prompt=rendered.text,
                        frames=frames, meta={"family": self.name, **video.meta,
                                             "prompt_style": self.prompt_style.name,
                                             "frame_sampler": sampler,
                                             **({} if context is None else
                                                {"subtitles": context})})

    def pixel_values(self, frames: np.ndarray) -> torch.Tensor:
        """Frames → pixels on the vision device in the vision dtype."""
        pixels = self.preprocess(frames)
        return pixels.to(self.vision_device, self.dtype)
