"""InternVL-1.5 remote-code checkpoints (``internvl_chat``, ``InternVLChatModel``): the paper's
Mini-InternVL-4B-Video-FT (InternViT-300M at 448 px, pixel shuffle, Phi-3-mini backbone).

Loaded WITHOUT running the checkpoint's remote code: its weights are mapped onto
transformers-native modules that compute the same thing.

- ``vision_model.*`` (InternViT) → ``InternVLVisionModel``: fused ``attn.qkv`` split into q/k/v
  (rows q, k, v), ``attn.proj`` → ``projection_layer``, ``norm1/norm2`` → ``layernorm_before/
  after`` (LayerNorm or RMSNorm), layer scales ``ls1/ls2`` → ``lambda_1/lambda_2``, optional
  q/k RMSNorm (its eps set to the config's), ``class_embedding`` / ``position_embedding`` /
  ``patch_embedding``; no final norm (InternViT has none: ``use_mean_pooling`` gives Identity).
  Features are the hidden states of ``select_layer`` with the CLS token dropped.
- pixel shuffle by ``downsample_ratio`` 0.5 (``ps_version: "v2"``): p×p patches → (p/2)×(p/2)
  tokens of 4× width, 16×16 = 256 per 448 px frame.
- ``mlp1.{0,1,3}`` (LayerNorm → Linear → GELU → Linear) → ``InternVLMultiModalProjector``.
- ``language_model.*`` (Phi-3) → HF ``Phi3ForCausalLM`` → HookedTransformer (fused qkv /
  gate_up split; LongRoPE reproduced with HF's own rotary tables up to
  ``original_max_position_embeddings``, longer prompts refused).

Frames: each resized to 448×448 with PIL bicubic (the remote ``dynamic_preprocess`` with one tile
+ ``build_transform``), scaled to [0, 1], normalised with the ImageNet mean/std.

Prompt (``prompt_format``):

- ``"paper"`` (default): the official Map-the-Flow evaluation of Mini-InternVL-4B-Video-FT
  (``conv_eval_mvbench_phi3`` in tasks/eval/eval_utils.py): the MVBench system prompt as bare
  text, the video in a user turn of its own as one ``<img>…</img>`` whose single
  ``<IMG_CONTEXT>`` stands for all T×256 video tokens, contiguous and frame-major (no
  "FrameN:" text, no separators), and no ``<|end|>``::

      {MVBench system}\\n <|user|>\\n<img>{T×256 video tokens}</img>\\n <|user|>\\nQuestion: …
      (D) … \\nOnly give the best option. <|assistant|>\\nBest option:(

  The video segment is the T×256 context tokens; ``<img>`` and ``</img>`` are text around it.
- ``"chat"``: the InternVL-1.5 ``phi3-chat`` conversation with the video as the remote video
  chat writes it, ``<|system|>\\n{system}<|end|><|user|>\\nFrame1: <img><IMG_CONTEXT>×256</img>
  \\nFrame2: …\\n{question block}<|end|><|assistant|>\\nBest option:(`` ("FrameN: <img>",
  "</img>" and the newlines are separators), system message ``system_prompt`` (InternVL's own by
  default). A ``template`` load option implies this format.

What is refused, each by a ``ValueError`` naming the part: another ``ps_version`` ("v1" keeps
the transposed layout), a ``force_image_size`` other than the tower's ``image_size`` (the position
embeddings would be interpolated), a ``norm_type`` other than layer_norm / rms_norm, an LLM other
than Phi-3 / Llama / Qwen2 (InternLM2), a conversation template other than ``phi3-chat`` unless a
``template`` is given, weights that do not map one to one (missing or unexpected keys).

Load options: ``num_frames`` (default 8), ``prompt_format`` ("paper" or "chat"),
``system_prompt`` (the system message of either format), ``template`` (a chat-template string
replacing the "chat" conversation).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from .adapter import frame_budget, register_adapter
from .backbone import backbone_from_hf
from .loading import check_weights, load_tokenizer, read_weight_files
from .native_adapter import NativeVideoAdapter, VideoInputs
from .prompt import MAPFLOW_STYLE, MVBENCH_STYLE, MVBENCH_SYSTEM_PROMPT

__all__ = ["InternVLChatAdapter", "INTERNVL_SYSTEM_PROMPT", "phi3_chat_template",
           "mvbench_phi3_conversation", "remote_vision_state_dict"]

#: The system message of InternVL-1.5's ``phi3-chat`` conversation template.
INTERNVL_SYSTEM_PROMPT = ("你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫"
                          "InternVL, 是一个有用无害的人工智能助手。")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
_TEXT_MODELS = {"phi3": "Phi3", "llama": "Llama", "qwen2": "Qwen2"}


def phi3_chat_template(system: str) -> str:
    """InternVL-1.5's ``phi3-chat`` conversation (MPT separators) as a chat template; the video
    placeholder ``<video>`` is followed by a newline, as the remote video chat's frame prefix."""
    if any(mark in system for mark in ("{{", "{%", "{#")):
        raise InputError("the system prompt must not contain Jinja delimiters")
    return (
        "<|system|>\n" + system + "<|end|>"
        "{% for message in messages %}{% if message['role'] == 'user' %}<|user|>\n"
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for item in message['content'] %}{% if item['type'] == 'video' %}<video>\n"
        "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
        "<|end|>{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def mvbench_phi3_conversation(system: str = MVBENCH_SYSTEM_PROMPT):
    """The official evaluation's ``conv_eval_mvbench_phi3``: system text, the video alone in a
    user turn (``<img>{media}</img>``), the question turn, the assistant role; separators " "."""

    def render(block: str, media: str | None) -> str:
        text = f"{system}\n <|user|>\n"
        if media is not None:
            text += f"{IMG_START}{media}{IMG_END}\n <|user|>\n"
        return text + f"{block} <|assistant|>\n"

    return render


# ---------------------------------------------------------------------- weights
def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    # safetensors shards when there are any, else .bin shards (checkpoints ship one kind).
    for pattern in ("*.safetensors", "*.bin"):
        files = sorted(f for f in path.glob(pattern) if not f.name.startswith("adapter"))
        if files:
            return read_weight_files(files)
    return {}


def remote_vision_state_dict(state: dict[str, torch.Tensor], n_layers: int,
                             hidden: int) -> tuple[dict[str, torch.Tensor], set[str]]:
    """InternViT (``vision_model.*``) weights under ``InternVLVisionModel`` names, and the remote
    keys used."""
    out, used = {}, set()

    def take(src: str, dst: str) -> None:
        if src in state:
            out[dst] = state[src]
            used.add(src)

    take("vision_model.embeddings.class_embedding", "embeddings.cls_token")
    take("vision_model.embeddings.position_embedding", "embeddings.position_embeddings")
    for part in ("weight", "bias"):
        take(f"vision_model.embeddings.patch_embedding.{part}",
             f"embeddings.patch_embeddings.projection.{part}")
    for i in range(n_layers):
        src, dst = f"vision_model.encoder.layers.{i}.", f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            key = f"{src}attn.qkv.{part}"
            if key in state:
                for name, chunk in zip("qkv", state[key].split(hidden, dim=0)):
                    out[f"{dst}attention.{name}_proj.{part}"] = chunk
                used.add(key)
            take(f"{src}attn.proj.{part}", f"{dst}attention.projection_layer.{part}")
            take(f"{src}mlp.fc1.{part}", f"{dst}mlp.fc1.{part}")
            take(f"{src}mlp.fc2.{part}", f"{dst}mlp.fc2.{part}")
            take(f"{src}norm1.{part}", f"{dst}layernorm_before.{part}")
            take(f"{src}norm2.{part}", f"{dst}layernorm_after.{part}")
        take(f"{src}attn.q_norm.weight", f"{dst}attention.q_norm.weight")
        take(f"{src}attn.k_norm.weight", f"{dst}attention.k_norm.weight")
        take(f"{src}ls1", f"{dst}lambda_1")
        take(f"{src}ls2", f"{dst}lambda_2")
    return out, used


def _load_exact(module: nn.Module, state: dict[str, torch.Tensor], what: str,
                allow_missing: tuple[str, ...] = ()) -> None:
    result = module.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in result.missing_keys if k not in allow_missing]
    if missing or result.unexpected_keys:
        raise InputError(f"the {what} weights do not map one to one onto the native modules: "
                         f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")


# ---------------------------------------------------------------------- the adapter
@register_adapter
class InternVLChatAdapter(NativeVideoAdapter):
    """InternVL-1.5 remote-code format (``InternVLChatModel``), loaded onto native modules."""

    model_types = ("internvl_chat",)
    name = "InternVL-1.5 (remote-code format)"
    placeholder_default = "<video>"

    def __init__(self, path: Path, config: dict[str, Any], **kwargs: Any) -> None:
        default_format = "chat" if kwargs.get("template") is not None else "paper"
        self.prompt_format = kwargs.pop("prompt_format", default_format)
        if self.prompt_format not in ("paper", "chat"):
            raise InputError(f"prompt_format {self.prompt_format!r} is not one of 'paper', 'chat'")
        if self.prompt_format == "paper" and kwargs.get("template") is not None:
            raise InputError("the template load option replaces the 'chat' conversation; it "
                             "cannot be combined with prompt_format='paper'")
        self.system_prompt = kwargs.pop("system_prompt", MVBENCH_SYSTEM_PROMPT
                                        if self.prompt_format == "paper"
                                        else INTERNVL_SYSTEM_PROMPT)
        self.prompt_style = MVBENCH_STYLE if self.prompt_format == "paper" else MAPFLOW_STYLE
        super().__init__(path, config, **kwargs)

    def _refuse(self, part: str, why: str) -> ValueError:
        return ValueError(f"{self.path}: cannot reproduce the InternVL-1.5 {part} without its "
                          f"remote code: {why}; refusing to load it approximately")

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        config = self.config
        if "InternVLChatModel" not in (config.get("architectures") or ["InternVLChatModel"]):
            raise self._refuse("architecture", f"architectures {config.get('architectures')} "
                                               f"is not InternVLChatModel")
        llm, vit = dict(config.get("llm_config") or {}), dict(config.get("vision_config") or {})
        if not llm or not vit:
            raise InputError(f"{self.path}/config.json: an InternVL-1.5 config needs llm_config "
                             f"and vision_config")
        ps_version = config.get("ps_version", "v1")
        if ps_version != "v2":
            raise self._refuse("pixel shuffle", f"ps_version {ps_version!r} (only 'v2', which "
                                                f"transposes back to row-major, is reproduced)")
        self.downsample_ratio = float(config.get("downsample_ratio", 0.5))
        image_size, patch = int(vit.get("image_size", 448)), int(vit.get("patch_size", 14))
        forced = config.get("force_image_size") or image_size
        if int(forced) != image_size:
            raise self._refuse("image size", f"force_image_size {forced} differs from the "
                                             f"tower's image_size {image_size}")
        side = image_size // patch
        out_side = int(side * self.downsample_ratio)
        if out_side / self.downsample_ratio != side:
            raise self._refuse("pixel shuffle", f"{side}×{side} patches do not divide by "
                                                f"downsample_ratio {self.downsample_ratio}")
        self.image_size, self.grid = image_size, (out_side, out_side)
        self.select_layer = int(config.get("select_layer", -1))
        template_name = config.get("template", "phi3-chat")
        if self.options.get("template") is None and template_name != "phi3-chat":
            raise self._refuse("conversation", f"template {template_name!r} is not built in "
                                               f"(phi3-chat is); pass template='...' (a chat "
                                               f"template string with a <video> placeholder)")
        check_weights(self.path)
        state = _read_weights(self.path)
        self.tokenizer = load_tokenizer(self.path)
        self.tokenizer.chat_template = (self.options.get("template")
                                        or phi3_chat_template(self.system_prompt))
        self._paper_conversation = mvbench_phi3_conversation(self.system_prompt)
        self.placeholder = self.placeholder_default
        self.video_config = {}
        vision, projector = self._vision(vit, llm, state)
        self.backbone, self.text_config = self._backbone(llm, state)
        self.hf_config = SimpleNamespace(text_config=self.text_config)
        leftover = [k for k in state if not k.startswith(("vision_model.", "mlp1.",
                                                          "language_model."))]
        if leftover:
            raise self._refuse("weights", f"unmapped weights {leftover[:5]}")
        device = self.device if self.n_devices == 1 else self.backbone.cfg.device
        self.vision = nn.ModuleDict({"vision_tower": vision, "multi_modal_projector": projector})
        self.vision.to(device).eval()
        self.vision_device = torch.device(device)
        self.context_id = self._token_id(IMG_CONTEXT)
        self._token_id(IMG_START), self._token_id(IMG_END)
        self.processor = None

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise InputError(f"{self.path}: the tokenizer has no {token!r} token; InternVL-1.5 "
                             f"checkpoints add <img>, </img> and <IMG_CONTEXT>")
        return int(token_id)

    def _vision(self, vit: dict[str, Any], llm: dict[str, Any],
                state: dict[str, torch.Tensor]) -> tuple[nn.Module, nn.Module]:
        from transformers import InternVLVisionConfig, InternVLVisionModel
        from transformers.models.internvl.modeling_internvl import InternVLMultiModalProjector

        norm_type = vit.get("norm_type", "rms_norm")
        if norm_type not in ("layer_norm", "rms_norm"):
            raise self._refuse("vision tower", f"norm_type {norm_type!r}")
        hidden, n_layers = int(vit["hidden_size"]), int(vit["num_hidden_layers"])
        eps = float(vit.get("layer_norm_eps", 1e-6))
        config = InternVLVisionConfig(
            hidden_size=hidden, num_hidden_layers=n_layers,
            num_attention_heads=int(vit["num_attention_heads"]),
            intermediate_size=int(vit["intermediate_size"]), hidden_act=vit.get("hidden_act",
                                                                               "gelu"),
            attention_bias=bool(vit.get("qkv_bias", False)),
            use_qk_norm=bool(vit.get("qk_normalization", False)), norm_type=norm_type,
            layer_norm_eps=eps, image_size=self.image_size, patch_size=int(vit["patch_size"]),
            num_channels=int(vit.get("num_channels", 3)), use_mask_token=False,
            use_absolute_position_embeddings=True, use_mean_pooling=True,
            attention_dropout=0.0, projection_dropout=0.0, hidden_dropout_prob=0.0)
        config._attn_implementation = "eager"
        with torch.device("meta"):
            tower = InternVLVisionModel(config)
        mapped, used = remote_vision_state_dict(state, n_layers, hidden)
        remaining = [k for k in state if k.startswith("vision_model.") and k not in used]
        if remaining:
            raise self._refuse("vision tower", f"InternViT weights with no native counterpart "
                                               f"{remaining[:5]}")
        _load_exact(tower, {k: v.to(self.dtype) for k, v in mapped.items()}, "InternViT")
        for layer in tower.encoder.layer:  # the native q/k RMSNorm defaults to eps 1e-6
            for norm in (layer.attention.q_norm, layer.attention.k_norm):
                if hasattr(norm, "variance_epsilon"):
                    norm.variance_epsilon = eps
        factor = int(round(1 / self.downsample_ratio)) ** 2
        with torch.device("meta"):
            projector = InternVLMultiModalProjector(SimpleNamespace(
                vision_config=SimpleNamespace(hidden_size=hidden),
                text_config=SimpleNamespace(hidden_size=int(llm["hidden_size"])),
                downsample_ratio=self.downsample_ratio, projector_hidden_act="gelu"))
        names = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}
        mlp1 = {}
        for key, value in state.items():
            if key.startswith("mlp1."):
                index, _, part = key[len("mlp1."):].partition(".")
                if index not in names:
                    raise self._refuse("projector", f"mlp1 layer {key!r} (expected LayerNorm, "
                                                    f"Linear, GELU, Linear)")
                mlp1[f"{names[index]}.{part}"] = value.to(self.dtype)
        if mlp1.get("linear_1.weight") is not None and \
                mlp1["linear_1.weight"].shape[1] != hidden * factor:
            raise self._refuse("projector", "mlp1 input width is not the pixel-shuffled width")
        _load_exact(projector, mlp1, "mlp1 projector")
        return tower, projector

    def _backbone(self, llm: dict[str, Any], state: dict[str, torch.Tensor]):
        import transformers

        model_type = llm.get("model_type")
        if model_type not in _TEXT_MODELS:
            raise self._refuse("language model", f"llm_config model_type {model_type!r} has no "
                                                 f"supported backbone (Phi-3, Llama, Qwen2)")
        prefix = _TEXT_MODELS[model_type]
        llm = {k: v for k, v in llm.items()
               if k not in ("attn_implementation", "_attn_implementation", "auto_map",
                            "architectures")}
        scaling = llm.get("rope_scaling")
        if isinstance(scaling, dict) and "original_max_position_embeddings" in llm:
            # transformers 4.x read Phi-3's LongRoPE context from the top level.
            scaling.setdefault("original_max_position_embeddings",
                               llm["original_max_position_embeddings"])
        try:
            config = getattr(transformers, f"{prefix}Config").from_dict(llm)
        except (KeyError, ValueError, TypeError) as error:
            raise self._refuse("language model config", str(error)) from None
        config._attn_implementation = "eager"
        model_class = getattr(transformers, f"{prefix}ForCausalLM")
        with torch.device("meta"):
            model = model_class(config)
        text_state = {k[len("language_model."):]: v.to(self.dtype) for k, v in state.items()
                      if k.startswith("language_model.")}
        tied = bool(getattr(config, "tie_word_embeddings", False))
        _load_exact(model, text_state, f"{prefix} language model",
                    allow_missing=("lm_head.weight",) if tied else ())
        rotary = type(model.model.rotary_emb)(config)  # its buffers were built on meta
        model.model.rotary_emb = rotary
        backbone = backbone_from_hf(model.model, None if tied else model.lm_head, config,
                                    backend=self.backend, dtype=self.dtype, device=self.device,
                                    n_devices=self.n_devices)
        return backbone, config

    # ------------------------------------------------------------------ video
    def video_inputs(self, frames, timestamps) -> VideoInputs:
        from PIL import Image

        size = self.image_size
        resized = np.stack([np.asarray(Image.fromarray(frame).resize((size, size),
                                                                    Image.BICUBIC))
                            for frame in frames])
        pixels = torch.from_numpy(resized).permute(0, 3, 1, 2).float() / 255.0
        mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        std = torch.tensor(IMAGENET_STD)[:, None, None]
        pixels = (pixels - mean) / std
        height, width = self.grid
        if self.prompt_format == "paper":  # one <img>…</img> around all frames' tokens
            expansion = IMG_CONTEXT * (height * width * len(frames))
        else:
            expansion = "\n".join(f"Frame{t + 1}: {IMG_START}{IMG_CONTEXT * (height * width)}"
                                  f"{IMG_END}" for t in range(len(frames)))
        return VideoInputs(model_kwargs={"pixel_values": pixels}, expansion=expansion,
                           feature_token_id=self.context_id,
                           frame_tokens=[height * width] * len(frames),
                           grids=[self.grid] * len(frames))

    def conversation(self):
        """The official evaluation conversation ("paper") or the phi3-chat template ("chat")."""
        return self._paper_conversation if self.prompt_format == "paper" else self.tokenizer

    def pixel_shuffle(self, features: torch.Tensor) -> torch.Tensor:
        """InternVL's pixel shuffle (``ps_version`` v2) of ``[n, w, h, c]`` features."""
        n, w, h, c = features.shape
        r = self.downsample_ratio
        x = features.reshape(n, w, int(h * r), int(c / r)).permute(0, 2, 1, 3)
        x = x.reshape(n, int(h * r), int(w * r), int(c / (r * r)))
        return x.permute(0, 2, 1, 3).contiguous()

    @torch.no_grad()
    def video_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[T, 3, S, S]`` pixels → ``[T, H·W, d_model]`` projected tokens."""
        tower = self.vision["vision_tower"]
        hidden = tower.embeddings(pixels.to(self.vision_device, self.dtype))
        states = [hidden]
        for layer in tower.encoder.layer:
            states.append(layer(states[-1]))
        selected = states[self.select_layer][:, 1:]
        side = int(round(selected.shape[1] ** 0.5))
        shuffled = self.pixel_shuffle(selected.reshape(selected.shape[0], side, side, -1))
        shuffled = shuffled.reshape(shuffled.shape[0], -1, shuffled.shape[-1])
        return self.vision["multi_modal_projector"](shuffled)

    @torch.no_grad()
    def capture(self, input_ids, model_kwargs) -> dict[str, Any]:
        """What the remote ``InternVLChatModel.forward`` builds: token embeddings with the
        ``<IMG_CONTEXT>`` rows replaced by the frames' tokens in order."""
        device = self.backbone.cfg.device
        embeds = self.backbone.embed(input_ids.to(device)).clone()
        features = self.video_features(model_kwargs["pixel_values"])
        features = features.reshape(-1, features.shape[-1]).to(embeds.device, embeds.dtype)
        positions = (input_ids[0] == self.context_id).nonzero()[:, 0].to(embeds.device)
        if positions.numel() != features.shape[0]:
            raise InputError(f"{self.name}: {positions.numel()} <IMG_CONTEXT> tokens for "
                             f"{features.shape[0]} video tokens")
        embeds[0, positions] = features
        return {"inputs_embeds": embeds}

    def check_against_processor(self, text, frames, input_ids) -> None:
        """No HF processor exists for the remote-code format; the expansion is built here."""

    def check_length(self, n_positions: int, n_frames: int | None = None,
                     video_positions=None, from_file: bool = True) -> None:
        limit = self.backbone.cfg.n_ctx
        if n_positions > limit:
            raise InputError(
                f"the prompt has {n_positions} positions, more than the {limit} this backbone "
                f"reproduces exactly (its sliding window, LongRoPE's original context or "
                f"max_position_embeddings): "
                f"{frame_budget(n_positions, limit, n_frames, video_positions, from_file)}")
