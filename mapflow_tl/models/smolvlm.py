"""SmolVLM2 (``smolvlm``, transformers-native): SigLIP-style tower, pixel shuffle, SmolLM2
(Llama) backbone.

How SmolVLM2 lays a video out (``SmolVLMVideoProcessor`` and
``SmolVLMProcessor.replace_video_token``):

- every frame is resized twice, as the video processor does: its longest edge to ``size``'s
  ``longest_edge`` (aspect kept, the other side rounded up to even), then to the square
  ``max_image_size`` — videos are never split into image tiles, each frame is one global view;
- the tower sees (image_size/patch)² patches per frame; the connector's pixel shuffle (scale s)
  folds s×s patches into one token: H×W = (image_size/patch/s)² tokens per frame, row-major,
  projected to the text width;
- the text is ``You are provided the following series of {n in words} frames from a {H:MM:SS}
  [H:MM:SS] video.\\n`` then, per frame, ``\\nFrame from {mm:ss}:<fake_token_around_image>
  <global-img>`` + H·W ``<image>`` + ``<fake_token_around_image>``, then ``\\n\\n``. The frames
  are the runs of ``<image>`` tokens; intro, timestamps and the image-boundary tokens are
  separators.

The chat template is the one the processor substitutes for conversations with a video
(``processing_smolvlm.DEFAULT_CHAT_TEMPLATE``: ``<|im_start|>User: <video>{text}
<end_of_utterance>\\nAssistant:``), not the checkpoint's own, which knows only images; the paper's
``Best option:(`` follows ``Assistant:`` after a space.

Timestamps: a frames array has no frame rate, and the processor then assumes 24 fps (frame t at
t/24 s, so every frame reads "00:00" and the duration "0:00:00"); frames sampled from a file
carry their own times, and the duration is that of the last sampled frame (the processor, decoding
the file itself, would take the file's duration).
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import torch
from jaxtyping import Float, UInt8

from ..errors import InputError
from .adapter import register_adapter
from .loading import read_json, video_processor_settings
from .native_adapter import NativeVideoAdapter, VideoInputs
from .pixels import resize_and_normalize

__all__ = ["SmolVLMAdapter", "number_words", "video_size"]

#: ``SmolVLMVideoProcessor``'s frame rate for frames without metadata (``replace_video_token``).
UNKNOWN_FPS = 24.0
#: ``SmolVLMVideoProcessor``'s cap on the longest edge of the first resize (``MAX_IMAGE_SIZE``).
MAX_IMAGE_SIZE = 4096
#: PIL's LANCZOS code (SmolVLM's processors' resample).
LANCZOS = 1

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """``n`` in English words as ``num2words`` writes it ("four", "twenty-one"), which the SmolVLM
    processor puts in its video intro; 100 and above need the num2words package."""
    if 0 <= n < 20:
        return _ONES[n]
    if 20 <= n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens - 2] + (f"-{_ONES[ones]}" if ones else "")
    try:
        from num2words import num2words
    except ImportError:
        raise InputError(f"{n} frames: the SmolVLM intro writes the frame count in words; "
                         f"counts of 100 and more need the num2words package "
                         f"(pip install num2words), or use fewer frames") from None
    return num2words(n)


def video_size(height: int, width: int, longest_edge: int) -> tuple[int, int]:
    """The size of ``SmolVLMVideoProcessor``'s first resize: the longest edge to
    ``longest_edge`` (at most 4096), the other side ``int()`` of the aspect ratio, rounded up to
    even."""
    side = min(MAX_IMAGE_SIZE, longest_edge)
    aspect = width / height
    if width >= height:
        width, height = side, int(side / aspect)
        height += height % 2
    else:
        height, width = side, int(side * aspect)
        width += width % 2
    return max(height, 1), max(width, 1)


def _resize_uint8(frames: UInt8[torch.Tensor, "T 3 H W"], size: tuple[int, int],
                  resample: int) -> UInt8[torch.Tensor, "T 3 h w"]:
    """One uint8 → uint8 resize as transformers' torch backend does it (``resize_and_normalize``
    without rescale and normalisation; LANCZOS through torch's kernel, as torchvision ≥ 0.27)."""
    return resize_and_normalize(frames, size, resample=resample, do_rescale=False,
                                do_normalize=False).to(torch.uint8)


@register_adapter
class SmolVLMAdapter(NativeVideoAdapter):
    """SmolVLM2 (``SmolVLMForConditionalGeneration``), SmolLM2 (Llama) backbone."""

    model_types = ("smolvlm",)
    name = "SmolVLM2"
    hf_class_name = "SmolVLMForConditionalGeneration"
    text_model_attribute = "text_model"
    # SmolVLMVideoProcessor's class defaults (IMAGENET_STANDARD mean / std, LANCZOS).
    video_defaults = {"size": {"longest_edge": 4 * 364}, "max_image_size": {"longest_edge": 364},
                      "resample": LANCZOS, "image_mean": [0.5, 0.5, 0.5],
                      "image_std": [0.5, 0.5, 0.5], "do_resize": True, "do_rescale": True,
                      "rescale_factor": 1 / 255, "do_normalize": True}

    def load(self) -> None:
        from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

        # The processor renders a conversation with a video through its own template (the
        # checkpoints' template has no video entry); a template option still wins.
        self.options = {**self.options,
                        "template": self.options.get("template") or DEFAULT_CHAT_TEMPLATE}
        super().load()
        settings = video_processor_settings(self.path)
        if "video_sampling" in settings and "size" not in settings:
            # SmolVLMVideoProcessor.__init__: the file's "size" wins, else the sampling's
            settings["size"] = settings["video_sampling"]["video_size"]
        self.video_config = c = {**self.video_defaults, **settings}
        vision = self.hf_config.vision_config
        patches = vision.image_size // vision.patch_size
        scale = self.hf_config.scale_factor
        if patches % scale:
            raise InputError(f"{self.path}: {patches}×{patches} patches per frame do not fold "
                             f"into {scale}×{scale} blocks (vision_config.image_size / "
                             f"patch_size and scale_factor in config.json)")
        self.grid = (patches // scale, patches // scale)
        square = c["max_image_size"]["longest_edge"]
        if square != vision.image_size:
            raise InputError(f"{self.path}: the video processor resizes frames to {square}×"
                             f"{square} (max_image_size) but the vision tower takes "
                             f"{vision.image_size}×{vision.image_size}; the processor and "
                             f"config.json do not belong together")
        seq_len = read_json(self.path / "processor_config.json").get("image_seq_len")
        if seq_len is not None and seq_len != self.grid[0] * self.grid[1]:
            raise InputError(f"{self.path}/processor_config.json: image_seq_len {seq_len} is not "
                             f"the model's {self.grid[0]}×{self.grid[1]} tokens per frame")
        self.image_token = getattr(self.tokenizer, "image_token", None) or "<image>"
        self.fake_image_token = (getattr(self.tokenizer, "fake_image_token", None)
                                 or "<fake_token_around_image>")
        self.global_image_token = (getattr(self.tokenizer, "global_image_token", None)
                                   or "<global-img>")
        image_token_id = self.hf_config.image_token_id
        if self.tokenizer.convert_tokens_to_ids(self.image_token) != image_token_id:
            raise InputError(f"{self.path}: config.json's image_token_id {image_token_id} is not "
                             f"the tokenizer's {self.image_token!r}; config.json and the "
                             f"tokenizer do not belong together")

    def check_against_processor(self, text, frames, input_ids) -> None:
        """The HF processor also needs num2words for its intro; without it, no cross-check."""
        try:
            import num2words  # noqa: F401
        except ImportError:
            return
        super().check_against_processor(text, frames, input_ids)

    def pixels(self, frames: UInt8[np.ndarray, "T H W 3"]) -> Float[torch.Tensor, "T 3 s s"]:
        """Frames → the normalised ``max_image_size`` squares the tower takes, as
        ``SmolVLMVideoProcessor`` makes them (two uint8 resizes, then rescale and normalise)."""
        c = self.video_config
        video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        resample = c.get("resample", LANCZOS)
        if c.get("do_resize", True):
            size = c["size"]
            first = (video_size(*video.shape[-2:], size["longest_edge"]) if "longest_edge" in size
                     else (size["height"], size["width"]))
            video = _resize_uint8(video, first, resample)
            square = c["max_image_size"]["longest_edge"]
            video = _resize_uint8(video, (square, square), resample)
        return resize_and_normalize(
            video, tuple(video.shape[-2:]), do_resize=False, do_rescale=c.get("do_rescale", True),
            rescale_factor=c.get("rescale_factor", 1 / 255),
            do_normalize=c.get("do_normalize", True), image_mean=c["image_mean"],
            image_std=c["image_std"])

    def expansion(self, timestamps: np.ndarray) -> str:
        """``replace_video_token``'s text for frames at ``timestamps`` (seconds)."""
        duration = timedelta(seconds=int(timestamps[-1]))
        text = (f"You are provided the following series of {number_words(len(timestamps))} "
                f"frames from a {duration} [H:MM:SS] video.\n")
        image = (self.fake_image_token + self.global_image_token
                 + self.image_token * (self.grid[0] * self.grid[1]) + self.fake_image_token)
        for second in timestamps:
            minutes, seconds = int(second // 60), int(second % 60)
            text += f"\nFrame from {minutes:02d}:{seconds:02d}:" + image
        return text + "\n\n"

    def video_inputs(self, frames, timestamps) -> VideoInputs:
        n_frames = len(frames)
        if timestamps is None:  # the processor's frames without metadata: 24 fps
            timestamps = np.arange(n_frames, dtype=np.float64) / UNKNOWN_FPS
        if len(timestamps) != n_frames:
            raise InputError(f"{len(timestamps)} timestamps for {n_frames} frames")
        pixels = self.pixels(frames)
        mask = torch.ones(1, n_frames, *pixels.shape[-2:], dtype=torch.long)
        return VideoInputs(
            model_kwargs={"pixel_values": pixels[None], "pixel_attention_mask": mask},
            expansion=self.expansion(timestamps),
            feature_token_id=int(self.hf_config.image_token_id),
            frame_tokens=[self.grid[0] * self.grid[1]] * n_frames,
            grids=[self.grid] * n_frames,
            meta={"timestamps": [float(t) for t in timestamps]},
        )
