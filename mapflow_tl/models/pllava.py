"""PLLaVA-format LLaVA checkpoints (``llava`` with PLLaVA's pooling fields): the paper's own
LLaVA-NeXT-7B/13B-Video-FT checkpoints and the image-only LLaVA-NeXT-7B control
(docs/models.md).

Detection: ``config.json`` says ``model_type: "llava"`` and carries any of PLLaVA's fields
(``pooling_shape``, ``num_frames``, ``frame_shape``, ``use_pooling``, ``pooling_method``). A plain
``llava`` config without them is a LLaVA-1.5 image model (one image → 576 tokens, no video path):
it is refused with that reason rather than loaded as something it is not.

Video tokens (PLLaVA's ``PllavaMultiModalProjector``): every frame through the CLIP tower
(``vision_feature_layer``, CLS dropped by the "default" strategy), the projector (linear → GELU →
linear) on every patch, then a 3D adaptive average pool over (T, h, w) to ``pooling_shape``
(8-12-12 in the paper; a load option, e.g. ``(16, 12, 12)``), flattened frame-major with no
image-newline tokens, at the conversation's ``<image>`` placeholder. The frames and pooling are
:class:`~mapflow_tl.models.pooled_adapter.PooledFramesAdapter`'s; ``use_pooling: false`` keeps all
T×p×p patches, ``pooling_method`` other than average is refused, ``frame_shape`` must be the
tower's patch grid.

LoRA: a checkpoint directory with ``adapter_config.json`` (peft format, ``peft_type: "LORA"``)
and ``adapter_model.safetensors`` / ``.bin`` has the adapter merged into the weights at load
time, W += (α/r)·B·A (α/√r with rsLoRA), before the backbone is converted. The base weights are
the directory's own model weights or, when it ships none, ``base_model_name_or_path`` resolved
locally (a directory, relative paths against the checkpoint, or the local HF cache); a missing
base is an error naming it. DoRA, LoRA biases and embedding LoRA are refused.

Prompt: the paper's conversation for these models (PLLaVA's ``conv_eval_mvbench``, MM_ALONE),
exactly as the official evaluation writes it (tasks/eval/eval_utils.py)::

    {system}\\n USER: <image>\\n USER: Question: …\\n(B) … \\nOnly give the best option.
    ASSISTANT:Best option:(       (one line: " ASSISTANT:" follows "option.")

with the system prompt :data:`SYSTEM_PROMPT`: the query and "\\nOnly give the best option." are
joined by a space, "Best option:(" follows "ASSISTANT:" with none (:data:`MVBENCH_STYLE`). The
load option ``prompt_format="mapflow"`` writes mapflow-tl's plain block instead ("…(B) …\\nOnly
give the best option. ASSISTANT: Best option:("); ``template`` replaces the conversation.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from .adapter import register_adapter
from .loading import has_weights, load_hf_model, local_hub_snapshot, read_json, read_weight_files
from .pixels import FramePreprocessor
from .pooled_adapter import DEFAULT_POOLING_SHAPE, PooledFramesAdapter
from .prompt import MAPFLOW_STYLE, MVBENCH_STYLE, MVBENCH_SYSTEM_PROMPT

__all__ = ["PllavaAdapter", "SYSTEM_PROMPT", "pllava_conversation", "PLLAVA_FIELDS",
           "merge_lora", "PROMPT_FORMATS"]

#: ``prompt_format`` load option → how the multiple-choice block is written.
PROMPT_FORMATS = {"paper": MVBENCH_STYLE, "mapflow": MAPFLOW_STYLE}

#: config.json fields that mark the PLLaVA format.
PLLAVA_FIELDS = ("pooling_shape", "num_frames", "frame_shape", "use_pooling", "pooling_method")

#: The paper's system prompt for the PLLaVA-format models (PLLaVA's ``SYSTEM_MVBENCH``).
SYSTEM_PROMPT = MVBENCH_SYSTEM_PROMPT


def pllava_conversation(block: str, media: str | None) -> str:
    """PLLaVA's ``conv_eval_mvbench`` (roles "USER: " / "ASSISTANT:", separator " ", the media in
    a user turn of its own); the assistant prefix is appended by the prompt renderer."""
    text = f"{SYSTEM_PROMPT}\n USER: "
    if media is not None:
        text += f"{media}\n USER: "
    return text + f"{block} ASSISTANT:"


# ---------------------------------------------------------------------- LoRA
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# transformers < 4.52 layout of LlavaForConditionalGeneration (PLLaVA's) → today's.
_OLD_LAYOUT = (("language_model.model.", "model.language_model."),
               ("language_model.lm_head.", "lm_head."),
               ("vision_tower.", "model.vision_tower."),
               ("multi_modal_projector.", "model.multi_modal_projector."))


def _read_adapter_weights(path: Path) -> dict[str, torch.Tensor]:
    for name in _ADAPTER_WEIGHTS:
        if (path / name).is_file():
            return read_weight_files([path / name])
    raise InputError(f"{path} has adapter_config.json but no adapter weights "
                     f"({' or '.join(_ADAPTER_WEIGHTS)})")


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's rank_pattern / alpha_pattern lookup: a key matches a module name ending in it."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def _locate(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """The module an adapter key names, in today's layout or PLLaVA's older one."""
    candidates = [name] + [new + name[len(old):] for old, new in _OLD_LAYOUT
                           if name.startswith(old)]
    for candidate in candidates:
        try:
            return candidate, model.get_submodule(candidate)
        except AttributeError:
            continue
    raise InputError(f"the LoRA adapter names module {name!r}, which the model does not have "
                     f"(nor under {[c for c in candidates[1:]]}); is the adapter for this base?")


@torch.no_grad()
def merge_lora(model: nn.Module, adapter_dir: Path) -> int:
    """Merge a peft LoRA adapter into ``model`` in place: W += scale·(B·A) for every adapted
    linear layer, and copy ``modules_to_save`` weights. Returns the number of merged layers."""
    settings = json.loads((adapter_dir / "adapter_config.json").read_text())
    if str(settings.get("peft_type", "LORA")).upper() != "LORA":
        raise InputError(f"{adapter_dir}/adapter_config.json: peft_type "
                         f"{settings.get('peft_type')!r} is not supported; only LoRA adapters "
                         f"are merged")
    for flag in ("use_dora", "lora_bias"):
        if settings.get(flag):
            raise InputError(f"{adapter_dir}/adapter_config.json: {flag}=true is not supported "
                             f"(only plain LoRA merges as W + scale·B·A)")
    rank, alpha = int(settings.get("r", 8)), float(settings.get("lora_alpha", 8))
    rank_pattern, alpha_pattern = settings.get("rank_pattern") or {}, settings.get(
        "alpha_pattern") or {}
    weights = _read_adapter_weights(adapter_dir)
    prefix = "base_model.model."
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        name = key[len(prefix):] if key.startswith(prefix) else key
        match = re.fullmatch(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", name)
        if match:
            pairs.setdefault(match.group(1), {})[match.group(2)] = tensor
        elif "lora_" in name:
            raise InputError(f"{adapter_dir}: adapter weight {key!r} is not a LoRA A/B matrix of "
                             f"a linear layer (embedding LoRA, DoRA magnitudes and LoRA biases "
                             f"are not supported)")
        else:  # modules_to_save: a full replacement of this parameter
            module_name, _, parameter = name.rpartition(".")
            located, module = _locate(model, module_name)
            target = getattr(module, parameter, None)
            if not isinstance(target, torch.Tensor) or target.shape != tensor.shape:
                raise InputError(f"{adapter_dir}: saved module weight {key!r} does not fit "
                                 f"{located}.{parameter}")
            target.copy_(tensor.to(target.dtype))
    for name, matrices in pairs.items():
        if set(matrices) != {"A", "B"}:
            raise InputError(f"{adapter_dir}: LoRA layer {name!r} lacks its lora_"
                             f"{({'A', 'B'} - set(matrices)).pop()} weight")
        located, module = _locate(model, name)
        if not isinstance(module, nn.Linear):
            raise InputError(f"LoRA on {located} ({type(module).__name__}) is not supported; "
                             f"only linear layers")
        r = int(_pattern_value(rank_pattern, name, rank))
        a = float(_pattern_value(alpha_pattern, name, alpha))
        scale = a / math.sqrt(r) if settings.get("use_rslora") else a / r
        delta = matrices["B"].float() @ matrices["A"].float()
        if settings.get("fan_in_fan_out"):
            delta = delta.T
        if delta.shape != module.weight.shape:
            raise InputError(f"LoRA layer {name!r} gives a {tuple(delta.shape)} update for the "
                             f"{tuple(module.weight.shape)} weight of {located}")
        module.weight.copy_((module.weight.float() + scale * delta).to(module.weight.dtype))
    return len(pairs)


def resolve_base(adapter_dir: Path, base: str | None) -> Path:
    """The local directory of a LoRA adapter's base model: a path (relative ones against the
    adapter directory) or a hub id in the local HF cache. Never downloads."""
    if not base:
        raise InputError(f"{adapter_dir}/adapter_config.json names no base_model_name_or_path and "
                         f"the directory holds no model weights to merge the adapter into")
    for candidate in (Path(base).expanduser(), adapter_dir / base):
        if (candidate / "config.json").is_file():
            return candidate
    cached = local_hub_snapshot(base)
    if cached is not None:
        return cached
    raise InputError(
        f"the LoRA adapter in {adapter_dir} needs its base model {base!r} "
        f"(base_model_name_or_path in adapter_config.json), which is neither a local directory "
        f"nor in the local Hugging Face cache; mapflow-tl never downloads at run time. Download "
        f"it first (`hf download {base}`) or point base_model_name_or_path at its directory.")


# ---------------------------------------------------------------------- the adapter
@register_adapter
class PllavaAdapter(PooledFramesAdapter):
    """PLLaVA-format ``LlavaForConditionalGeneration`` with T-H-W pooling, LoRA merged."""

    model_types = ("llava",)
    name = "PLLaVA-format LLaVA (T-H-W pooled frames)"
    family_options = ("pooling_shape", "prompt_format")

    @classmethod
    def accepts(cls, config: dict[str, Any]) -> bool:
        return config.get("model_type") == "llava"

    def __init__(self, path, config, **kwargs) -> None:
        present = [name for name in PLLAVA_FIELDS if name in config]
        if not present:
            raise InputError(
                f"{path}/config.json: model_type 'llava' without PLLaVA's fields "
                f"{list(PLLAVA_FIELDS)} is a plain LLaVA-1.5 image checkpoint (one image → its "
                f"patch tokens), which mapflow-tl does not load as a video model. The paper's "
                f"PLLaVA-format checkpoints carry pooling_shape etc.; add them to config.json "
                f"(e.g. \"pooling_shape\": [8, 12, 12]) to run it on T-H-W pooled frames.")
        method = str(config.get("pooling_method", "avg")).lower()
        if method not in ("avg", "average", "mean"):
            raise InputError(f"{path}/config.json: pooling_method {method!r} is not supported; "
                             f"only PLLaVA's 3D adaptive average pooling ('avg') is reproduced")
        self.use_pooling = bool(config.get("use_pooling", True))
        if not self.use_pooling and kwargs.get("pooling_shape"):
            raise InputError(f"{path}/config.json says use_pooling: false; a pooling_shape load "
                             f"option would pool anyway")
        prompt_format = kwargs.get("prompt_format", "paper")
        if prompt_format not in PROMPT_FORMATS:
            raise InputError(f"prompt_format {prompt_format!r} is not one of "
                             f"{sorted(PROMPT_FORMATS)}")
        self.prompt_style = PROMPT_FORMATS[prompt_format]
        if not self.use_pooling:
            frames = int(config.get("num_frames") or DEFAULT_POOLING_SHAPE[0])
            kwargs.setdefault("num_frames", frames)
            config = {**config, "pooling_shape": None}
        super().__init__(path, config, **kwargs)
        if not self.use_pooling:
            self.pooling_shape = (self.num_frames, 0, 0)  # filled in with the tower's grid

    def frame_limits(self) -> tuple[int, int | None]:
        if not self.use_pooling:
            return self.num_frames, self.num_frames
        return super().frame_limits()

    def load(self) -> None:
        if self.options.get("template") is None:
            self.options["template"] = pllava_conversation
        super().load()

    def load_model(self):
        from transformers import LlavaForConditionalGeneration

        self.preprocess = FramePreprocessor(self.path, self.preprocessor_file, video=False)
        adapter = (self.path / "adapter_config.json").is_file()
        weights = self.path
        if adapter and not has_weights(self.path, ignore_prefix="adapter_model"):
            settings = read_json(self.path / "adapter_config.json")
            weights = resolve_base(self.path, settings.get("base_model_name_or_path"))
        model = load_hf_model(LlavaForConditionalGeneration, weights, self.dtype,
                              config=self.hf_config)
        self.base_path = weights
        self.merged_lora_layers = merge_lora(model, self.path) if adapter else 0
        self._check_frame_shape(model)
        return model

    def _check_frame_shape(self, model: nn.Module) -> None:
        vision = self.hf_config.vision_config
        side = vision.image_size // vision.patch_size
        shape = self.config.get("frame_shape")
        if shape is not None and tuple(int(x) for x in shape) != (side, side):
            raise InputError(f"{self.path}/config.json: frame_shape {shape} is not the vision "
                             f"tower's {side}×{side} patch grid")
        if not self.use_pooling:
            self.pooling_shape = (self.num_frames, side, side)
