"""The paper's own checkpoint formats: PLLaVA-format LLaVA (LLaVA-NeXT-7B/13B-Video-FT and the
image control, LoRA adapters included) and InternVL-1.5 remote-code format (Mini-InternVL-4B).

Tiny random checkpoints are written in each format with the real key names and config fields
(PLLaVA's pre-4.52 LLaVA layout ``language_model.model.*`` / ``vision_tower.*`` /
``multi_modal_projector.*``; InternVL-1.5's ``vision_model.*`` / ``mlp1.*`` /
``language_model.model.*``) and loaded through ``load_videollm``. The references are computed
here, independently of the loader: for PLLaVA the HF CLIP tower, projector and
``torch.nn.functional.adaptive_avg_pool3d`` of the in-memory model that wrote the checkpoint; for
InternVL-1.5 a re-statement of the remote code's InternViT / pixel shuffle / mlp1 forward (the
module below whose state dict *is* the remote key layout) and HF's ``Phi3ForCausalLM`` run from
``inputs_embeds``. LoRA: peft's own ``merge_and_unload`` against the loader's merge.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_models_llava import (IMAGE_SIZE, OPTIONS, PATCH, QUESTION, _pixel_settings,
                               _scale_text_weights, _text_config, _vision_config)
from test_prompt import llama_tokenizer
from torch import nn

from mapflow_tl.models.prompt import multiple_choice_block
from mapflow_tl.models import VideoSample, load_videollm
from mapflow_tl.models.internvl_chat import INTERNVL_SYSTEM_PROMPT
from mapflow_tl.models.pllava import SYSTEM_PROMPT

TOL = 1e-4
N_FRAMES = 4


def _frames(n: int = N_FRAMES, seed: int = 0, size=(40, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def _sample(frames=None, answer=1) -> VideoSample:
    return VideoSample(video=_frames() if frames is None else frames, question=QUESTION,
                       options=OPTIONS, answer=answer)


def _write_json(path, name, data) -> None:
    (path / name).write_text(json.dumps(data))


def _rename_keys(path, rename) -> None:
    from safetensors.torch import load_file, save_file

    for file in path.glob("*.safetensors"):
        state = load_file(str(file))
        save_file({rename(k): v.contiguous() for k, v in state.items()}, str(file),
                  metadata={"format": "pt"})


# ====================================================================== PLLaVA format
PLLAVA_FIELDS = {"pooling_shape": [2, 2, 2], "num_frames": N_FRAMES,
                 "frame_shape": [IMAGE_SIZE // PATCH] * 2, "use_pooling": True,
                 "pooling_method": "avg"}


def _old_llava_key(key: str) -> str:
    """transformers ≥ 4.52 LLaVA key → the layout PLLaVA's checkpoints were saved in."""
    for new, old in (("model.language_model.", "language_model.model."),
                     ("lm_head.", "language_model.lm_head."),
                     ("model.vision_tower.", "vision_tower."),
                     ("model.multi_modal_projector.", "multi_modal_projector.")):
        if key.startswith(new):
            return old + key[len(new):]
    return key


def _copy_processor_files(source, target) -> None:
    for file in source.iterdir():
        if file.suffix in (".json", ".jinja", ".model") and not file.name.startswith(
                ("model", "adapter")):
            shutil.copy(file, target / file.name)


def build_pllava(path, **fields):
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    tokenizer = llama_tokenizer()
    config = LlavaConfig(
        vision_config=_vision_config(), text_config=_text_config(tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=16)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    _scale_text_weights(model)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    _write_json(path, "preprocessor_config.json", {"image_processor_type": "CLIPImageProcessor",
                                                   **_pixel_settings()})
    _rename_keys(path, _old_llava_key)
    saved = json.loads((path / "config.json").read_text())
    saved.update({**PLLAVA_FIELDS, **fields})
    _write_json(path, "config.json", saved)
    return path, model


@torch.no_grad()
def pllava_reference(model, pixels, pooling_shape):
    """PLLaVA's video tokens from the HF modules: CLIP hidden states[-2] without CLS, the
    projector, a 3D adaptive average pool over (T, h, w), frame-major."""
    hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    projected = model.model.multi_modal_projector(hidden)  # [T, 16, d]
    t, n, d = projected.shape
    side = int(n ** 0.5)
    video = projected.reshape(t, side, side, d).permute(3, 0, 1, 2)[None]
    pooled = F.adaptive_avg_pool3d(video, tuple(pooling_shape))[0]
    return pooled.permute(1, 2, 3, 0).reshape(-1, d)


@torch.no_grad()
def pllava_reference_logits(model, x, video_tokens):
    embeds = model.get_input_embeddings()(x.input_ids).clone()
    positions = (x.input_ids[0] == model.config.image_token_id).nonzero()[:, 0]
    embeds[0, positions] = video_tokens
    return model.model.language_model(inputs_embeds=embeds).last_hidden_state @ \
        model.lm_head.weight.T


@pytest.fixture(scope="module")
def pllava(tmp_path_factory):
    return build_pllava(tmp_path_factory.mktemp("pllava"))


def test_pllava_video_tokens_and_logits_equal_the_hf_modules(pllava):
    path, model = pllava
    vlm = load_videollm(path)
    assert vlm.adapter.name.startswith("PLLaVA") and vlm.adapter.merged_lora_layers == 0
    x = vlm.prepare(_sample())
    seg = x.segments
    reference = pllava_reference(model, x.meta["pixel_values"], (2, 2, 2))
    ours = x.embeds[0, seg.video.start:seg.video.stop]
    assert (ours - reference).abs().max() <= TOL
    assert [(f.index, f.grid, len(f)) for f in seg.frames] == [(0, (2, 2), 4), (1, (2, 2), 4)]
    logits = vlm(x)
    assert (logits - pllava_reference_logits(model, x, reference)).abs().max() <= TOL


def test_pllava_prompt_is_the_papers_conversation(pllava):
    vlm = load_videollm(pllava[0])
    x = vlm.prepare(_sample(answer=2))
    # the official eval_mvbench conversation, both spaces: "… \nOnly give the best option." and
    # " ASSISTANT:Best option:(" (official tasks/eval/eval_utils.py, repr in docs/paper_parity.md)
    options = "".join(f"\n({label}) {text}" for label, text in zip("ABC", OPTIONS))
    assert x.prompt == (f"{OFFICIAL_SYSTEM} USER: <image>\n USER: Question: {QUESTION}\nOptions:"
                        f"{options} \nOnly give the best option. ASSISTANT:Best option:(")
    seg, ids, decode = x.segments, x.input_ids[0], vlm.tokenizer.decode
    assert decode(ids[seg.question.start:seg.question.stop]).strip() == QUESTION
    labelled = [f"({label}) {text}" for label, text in zip("ABC", OPTIONS)]
    assert [decode(ids[o.start:o.stop]).strip() for o in seg.options] == labelled
    assert [decode(ids[o.start:o.stop]).strip() for o in seg.option_texts] == OPTIONS
    # ours stays available: the plain block, "ASSISTANT: Best option:("
    plain = load_videollm(pllava[0], prompt_format="mapflow").prepare(_sample(answer=2))
    block = multiple_choice_block(QUESTION, OPTIONS).text
    assert plain.prompt == (f"{OFFICIAL_SYSTEM} USER: <image>\n USER: {block} ASSISTANT: "
                            f"Best option:(")
    assert seg.true_option.text == "sit down" and seg.last.start == x.n_positions - 1
    assert vlm.tokenizer.convert_ids_to_tokens(x.answer_ids.tolist()) == ["A", "B", "C"]


def test_pllava_pooling_shape_is_a_load_option(pllava):
    path, model = pllava
    vlm = load_videollm(path, pooling_shape=(4, 1, 2))
    x = vlm.prepare(_sample())
    assert [(f.index, f.grid) for f in x.segments.frames] == [(t, (1, 2)) for t in range(4)]
    reference = pllava_reference(model, x.meta["pixel_values"], (4, 1, 2))
    assert (vlm(x) - pllava_reference_logits(model, x, reference)).abs().max() <= TOL


def test_pllava_without_pooling_keeps_every_patch(tmp_path):
    path, model = build_pllava(tmp_path, use_pooling=False, pooling_shape=None)
    vlm = load_videollm(path)
    x = vlm.prepare(_sample())
    assert [f.grid for f in x.segments.frames] == [(4, 4)] * N_FRAMES
    reference = pllava_reference(model, x.meta["pixel_values"], (N_FRAMES, 4, 4))
    assert (vlm(x) - pllava_reference_logits(model, x, reference)).abs().max() <= TOL


# ---------------------------------------------------------------------- LoRA
@pytest.fixture(scope="module")
def lora(pllava, tmp_path_factory):
    peft = pytest.importorskip("peft")
    from transformers import LlavaForConditionalGeneration

    base_path, _ = pllava
    base = LlavaForConditionalGeneration.from_pretrained(base_path).eval()
    torch.manual_seed(3)
    config = peft.LoraConfig(r=4, lora_alpha=16, init_lora_weights=False,
                             target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"])
    peft_model = peft.get_peft_model(base, config)
    with torch.no_grad():  # LoRA B matrices large enough to change the logits visibly
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.1)
    adapter = tmp_path_factory.mktemp("pllava_lora")
    peft_model.save_pretrained(adapter)
    settings = json.loads((adapter / "adapter_config.json").read_text())
    settings["base_model_name_or_path"] = str(base_path)
    _write_json(adapter, "adapter_config.json", settings)
    _copy_processor_files(base_path, adapter)
    merged = peft_model.merge_and_unload().eval()
    return adapter, merged


def test_lora_adapter_is_merged_as_peft_merges_it(lora, pllava):
    adapter, merged = lora
    assert not list(adapter.glob("model*.safetensors"))  # the adapter alone: base from config
    vlm = load_videollm(adapter)
    assert vlm.adapter.merged_lora_layers > 0 and vlm.adapter.base_path == pllava[0]
    x = vlm.prepare(_sample())
    reference = pllava_reference(merged, x.meta["pixel_values"], (2, 2, 2))
    logits = vlm(x)
    assert (logits - pllava_reference_logits(merged, x, reference)).abs().max() <= TOL
    base_logits = load_videollm(pllava[0])(x)
    assert (logits - base_logits).abs().max() > 1e-2, "the adapter should change the model"


def test_lora_adapter_with_pllava_module_names(lora, tmp_path):
    """An adapter trained on PLLaVA's own model names its modules in the old layout."""
    adapter, merged = lora
    shutil.copytree(adapter, tmp_path, dirs_exist_ok=True)
    prefix = "base_model.model."
    _rename_keys(tmp_path, lambda k: prefix + _old_llava_key(k[len(prefix):]))
    vlm = load_videollm(tmp_path)
    x = vlm.prepare(_sample())
    reference = pllava_reference(merged, x.meta["pixel_values"], (2, 2, 2))
    assert (vlm(x) - pllava_reference_logits(merged, x, reference)).abs().max() <= TOL


def test_lora_adapter_without_its_base_names_the_base(lora, tmp_path):
    adapter, _ = lora
    shutil.copytree(adapter, tmp_path, dirs_exist_ok=True)
    settings = json.loads((tmp_path / "adapter_config.json").read_text())
    settings["base_model_name_or_path"] = "mapflow-tl-tests/no-such-base"
    _write_json(tmp_path, "adapter_config.json", settings)
    with pytest.raises(ValueError, match=r"base model 'mapflow-tl-tests/no-such-base'.*hf "
                                         r"download"):
        load_videollm(tmp_path)


def test_plain_llava_and_other_pooling_are_refused(pllava, tmp_path):
    config = json.loads((pllava[0] / "config.json").read_text())
    plain = {k: v for k, v in config.items() if k not in PLLAVA_FIELDS}
    _write_json(tmp_path, "config.json", plain)
    with pytest.raises(ValueError, match="plain LLaVA-1.5 image checkpoint"):
        load_videollm(tmp_path)
    _write_json(tmp_path, "config.json", {**config, "pooling_method": "max"})
    with pytest.raises(ValueError, match="pooling_method 'max' is not supported"):
        load_videollm(tmp_path)


# ====================================================================== InternVL-1.5 format
VIT = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
           image_size=32, patch_size=8, num_channels=3, hidden_act="gelu", qkv_bias=True,
           layer_norm_eps=1e-6, initializer_factor=0.1, drop_path_rate=0.0,
           model_type="intern_vit_6b", architectures=["InternVisionModel"])
INTERNVL_TOKENS = ["<img>", "</img>", "<IMG_CONTEXT>", "<|system|>", "<|end|>", "<|user|>",
                   "<|assistant|>"]


class RemoteRMSNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(size)), eps

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class RemoteViTLayer(nn.Module):
    """One InternViT block as the remote code computes it (fused qkv, layer scales)."""

    def __init__(self, c):
        super().__init__()
        d, self.heads = c["hidden_size"], c["num_attention_heads"]
        norm = (lambda: nn.LayerNorm(d, eps=c["layer_norm_eps"])) \
            if c["norm_type"] == "layer_norm" else (lambda: RemoteRMSNorm(d, c["layer_norm_eps"]))
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(d, 3 * d, bias=c["qkv_bias"])
        self.attn.proj = nn.Linear(d, d)
        if c["qk_normalization"]:
            self.attn.q_norm = RemoteRMSNorm(d, c["layer_norm_eps"])
            self.attn.k_norm = RemoteRMSNorm(d, c["layer_norm_eps"])
        self.qk_norm = c["qk_normalization"]
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(d, c["intermediate_size"]), nn.Linear(
            c["intermediate_size"], d)
        self.norm1, self.norm2 = norm(), norm()
        self.ls1 = nn.Parameter(c["initializer_factor"] * torch.ones(d))
        self.ls2 = nn.Parameter(c["initializer_factor"] * torch.ones(d))

    def attention(self, x):
        b, n, d = x.shape
        q, k, v = self.attn.qkv(x).reshape(b, n, 3, self.heads, d // self.heads) \
            .permute(2, 0, 3, 1, 4).unbind(0)
        if self.qk_norm:
            q = self.attn.q_norm(q.transpose(1, 2).flatten(-2)).view(b, n, self.heads, -1) \
                .transpose(1, 2)
            k = self.attn.k_norm(k.transpose(1, 2).flatten(-2)).view(b, n, self.heads, -1) \
                .transpose(1, 2)
        weights = ((q * (d // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        return self.attn.proj((weights @ v).transpose(1, 2).reshape(b, n, d))

    def forward(self, x):
        x = x + self.attention(self.norm1(x)) * self.ls1
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x)))) * self.ls2


class RemoteInternVLChat(nn.Module):
    """The parameters and forward of the remote ``InternVLChatModel`` (names included)."""

    def __init__(self, vit, language_model, select_layer=-1, ratio=0.5):
        super().__init__()
        d, self.select_layer, self.ratio = vit["hidden_size"], select_layer, ratio
        side = vit["image_size"] // vit["patch_size"]
        self.vision_model = nn.Module()
        emb = self.vision_model.embeddings = nn.Module()
        emb.class_embedding = nn.Parameter(torch.randn(1, 1, d))
        emb.patch_embedding = nn.Conv2d(3, d, vit["patch_size"], vit["patch_size"])
        emb.position_embedding = nn.Parameter(torch.randn(1, side * side + 1, d))
        self.vision_model.encoder = nn.Module()
        self.vision_model.encoder.layers = nn.ModuleList(
            RemoteViTLayer(vit) for _ in range(vit["num_hidden_layers"]))
        width, llm = d * int(1 / ratio) ** 2, language_model.config.hidden_size
        self.mlp1 = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, llm), nn.GELU(),
                                  nn.Linear(llm, llm))
        self.language_model = language_model

    def pixel_shuffle(self, x):
        n, w, h, c = x.size()
        x = x.view(n, w, int(h * self.ratio), int(c / self.ratio)).permute(0, 2, 1, 3)
        x = x.contiguous().view(n, int(h * self.ratio), int(w * self.ratio),
                                int(c / (self.ratio * self.ratio)))
        return x.permute(0, 2, 1, 3).contiguous()  # ps_version v2

    @torch.no_grad()
    def extract_feature(self, pixels):
        emb = self.vision_model.embeddings
        patches = emb.patch_embedding(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([emb.class_embedding.expand(len(pixels), 1, -1), patches], 1)
        states = [x + emb.position_embedding]
        for layer in self.vision_model.encoder.layers:
            states.append(layer(states[-1]))
        x = states[self.select_layer][:, 1:]
        side = int(x.shape[1] ** 0.5)
        x = self.pixel_shuffle(x.reshape(len(x), side, side, -1))
        return self.mlp1(x.reshape(len(x), -1, x.shape[-1]))


def _phi3_config(tokenizer, rope: str):
    from transformers import Phi3Config

    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96,
                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                  tie_word_embeddings=False)
    if rope == "longrope":  # Phi-3-mini-128k's layout: "su" factors, top-level original context
        factors = dict(type="su", short_factor=[1.0 + 0.05 * i for i in range(8)],
                       long_factor=[4.0 + i for i in range(8)],
                       original_max_position_embeddings=512)
        config = Phi3Config(**common, max_position_embeddings=4096, sliding_window=262144,
                            rope_scaling=dict(factors), original_max_position_embeddings=512)
        assert config.rope_parameters["original_max_position_embeddings"] == 512
        return config, {"rope_scaling": {k: v for k, v in factors.items()
                                         if k != "original_max_position_embeddings"},
                        "original_max_position_embeddings": 512}
    config = Phi3Config(**common, max_position_embeddings=1024, sliding_window=None,
                        partial_rotary_factor=0.5)
    return config, {}


def build_internvl_chat(path, *, rope="longrope", norm_type="layer_norm", qk_norm=False,
                        select_layer=-1):
    from safetensors.torch import save_file
    from transformers import Phi3ForCausalLM

    tokenizer = llama_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<video>", "<image>"]
                                  + INTERNVL_TOKENS})
    text_config, legacy = _phi3_config(tokenizer, rope)
    text_config._attn_implementation = "eager"
    torch.manual_seed(0)
    vit = {**VIT, "norm_type": norm_type, "qk_normalization": qk_norm}
    remote = RemoteInternVLChat(vit, Phi3ForCausalLM(text_config), select_layer).eval()
    with torch.no_grad():
        for name, parameter in remote.named_parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0, 0.2)
            else:
                parameter.add_(0.1 * torch.randn_like(parameter))
    save_file({k: v.contiguous() for k, v in remote.state_dict().items()},
              str(path / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(path)
    llm = text_config.to_dict()
    llm.pop("rope_parameters", None)
    llm.update(legacy, architectures=["Phi3ForCausalLM"], attn_implementation="eager")
    _write_json(path, "config.json", {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat",
        "auto_map": {"AutoModel": "modeling_internvl_chat.InternVLChatModel"},
        "downsample_ratio": 0.5, "dynamic_image_size": True, "force_image_size": 32,
        "max_dynamic_patch": 12, "min_dynamic_patch": 1, "ps_version": "v2",
        "select_layer": select_layer, "template": "phi3-chat", "use_thumbnail": True,
        "llm_config": llm, "vision_config": vit})
    return path, remote


def internvl_pixels(frames, size=32):
    """The remote ``build_transform`` on a one-tile ``dynamic_preprocess``: PIL bicubic resize,
    to [0, 1], ImageNet mean/std."""
    from PIL import Image

    out = []
    for frame in frames:
        image = np.asarray(Image.fromarray(frame).resize((size, size), Image.BICUBIC))
        tensor = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255
        mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
        out.append((tensor - mean) / std)
    return torch.stack(out)


INTERNVL_VARIANTS = {
    "longrope_layernorm": {},
    "partial_rotary_rmsnorm_qknorm": dict(rope="default", norm_type="rms_norm", qk_norm=True,
                                          select_layer=-2),
}


@pytest.fixture(scope="module")
def internvl(tmp_path_factory):
    return {name: build_internvl_chat(tmp_path_factory.mktemp(name), **kwargs)
            for name, kwargs in INTERNVL_VARIANTS.items()}


#: SYSTEM_MVBENCH of the official tasks/eval/eval_utils.py, with its trailing newline.
OFFICIAL_SYSTEM = ("Carefully watch the video and pay attention to the cause and sequence of "
                   "events, the detail and movement of objects, and the action and pose of "
                   "persons. Based on your observations, select the best option that accurately "
                   "addresses the question.\n")


@pytest.mark.parametrize("variant", list(INTERNVL_VARIANTS))
def test_internvl_chat_paper_layout_is_the_official_evaluation(variant, internvl):
    # conv_eval_mvbench_phi3: system + " " + "<|user|>\n" + "<img><IMG_CONTEXT></img>\n" + " " +
    # "<|user|>\n" + query + " " + "\nOnly give the best option." + " " + "<|assistant|>\n" +
    # "Best option:(", the single <IMG_CONTEXT> standing for every frame's tokens in order
    path, remote = internvl[variant]
    vlm = load_videollm(path)
    x = vlm.prepare(_sample(answer=2))
    tokenizer = vlm.tokenizer
    options = "".join(f"\n({label}) {text}" for label, text in zip("ABC", OPTIONS))
    query = (f"{OFFICIAL_SYSTEM} <|user|>\n<img>{'<IMG_CONTEXT>' * 4 * N_FRAMES}</img>\n "
             f"<|user|>\nQuestion: {QUESTION}\nOptions:{options} \nOnly give the best option. "
             f"<|assistant|>\nBest option:(")
    ids = torch.tensor([tokenizer(query)["input_ids"]])
    assert torch.equal(x.input_ids, ids)
    context = (ids[0] == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")).nonzero()[:, 0]
    seg = x.segments
    assert list(seg.video.positions) == context.tolist()  # <img>, </img> outside the video
    assert context.tolist() == list(range(context[0], context[0] + 4 * N_FRAMES))
    assert [(f.index, f.start, f.grid) for f in seg.frames] == [
        (t, int(context[0]) + 4 * t, (2, 2)) for t in range(N_FRAMES)]
    assert seg.separators == ()
    features = remote.extract_feature(internvl_pixels(x.frames)).reshape(-1, 64)
    with torch.no_grad():
        embeds = remote.language_model.get_input_embeddings()(ids).clone()
        embeds[0, context] = features
        reference = remote.language_model(inputs_embeds=embeds).logits
    assert (vlm(x) - reference).abs().max() <= TOL
    decode = tokenizer.decode
    assert decode(ids[0, seg.question.start:seg.question.stop]).strip() == QUESTION
    labelled = [f"({label}) {text}" for label, text in zip("ABC", OPTIONS)]
    assert [decode(ids[0, o.start:o.stop]).strip() for o in seg.options] == labelled
    coarse = seg.question_with_options
    assert decode(ids[0, coarse.start:coarse.stop]).strip() == (
        f"Question: {QUESTION}\nOptions:{options}")


@pytest.mark.parametrize("variant", list(INTERNVL_VARIANTS))
def test_internvl_chat_tokens_and_logits_equal_the_remote_computation(variant, internvl):
    path, remote = internvl[variant]
    vlm = load_videollm(path, prompt_format="chat")
    x = vlm.prepare(_sample())
    tokenizer = vlm.tokenizer
    video = "\n".join(f"Frame{t + 1}: <img>{'<IMG_CONTEXT>' * 4}</img>" for t in range(N_FRAMES))
    block = multiple_choice_block(QUESTION, OPTIONS).text
    query = (f"<|system|>\n{INTERNVL_SYSTEM_PROMPT}<|end|><|user|>\n{video}\n{block}<|end|>"
             f"<|assistant|>\nBest option:(")
    ids = torch.tensor([tokenizer(query)["input_ids"]])
    assert torch.equal(x.input_ids, ids)
    features = remote.extract_feature(internvl_pixels(x.frames)).reshape(-1, 64)
    context = (ids[0] == tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")).nonzero()[:, 0]
    assert (x.embeds[0, context] - features).abs().max() <= TOL
    seg = x.segments
    assert [(f.index, f.grid) for f in seg.frames] == [(t, (2, 2)) for t in range(N_FRAMES)]
    assert sum((list(f.positions) for f in seg.frames), []) == context.tolist()
    assert all(not f.overlaps(s) for f in seg.frames for s in seg.separators)
    with torch.no_grad():
        embeds = remote.language_model.get_input_embeddings()(ids).clone()
        embeds[0, context] = features
        reference = remote.language_model(inputs_embeds=embeds).logits
    assert (vlm(x) - reference).abs().max() <= TOL
    decode = tokenizer.decode
    assert decode(ids[0, seg.question.start:seg.question.stop]).strip() == QUESTION
    assert [decode(ids[0, o.start:o.stop]).strip() for o in seg.option_texts] == OPTIONS


def _edited(internvl, tmp_path, edit):
    source = internvl["longrope_layernorm"][0]
    shutil.copytree(source, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    edit(config)
    _write_json(tmp_path, "config.json", config)
    return tmp_path


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(ps_version="v1"), "pixel shuffle.*ps_version 'v1'"),
    (lambda c: c.update(force_image_size=64), "image size.*force_image_size 64"),
    (lambda c: c["llm_config"].update(model_type="internlm2"), "language model.*internlm2"),
    (lambda c: c.update(template="internlm2-chat"), "conversation.*internlm2-chat"),
    (lambda c: c["vision_config"].update(norm_type="batch_norm"), "vision tower.*batch_norm"),
])
def test_internvl_chat_parts_that_cannot_be_reproduced_are_refused(internvl, tmp_path, edit,
                                                                   message):
    with pytest.raises(ValueError, match=message):
        load_videollm(_edited(internvl, tmp_path, edit))


def test_internvl_chat_prompt_beyond_longrope_short_context_is_refused(internvl, tmp_path):
    path = _edited(internvl, tmp_path,
                   lambda c: c["llm_config"].update(original_max_position_embeddings=64))
    vlm = load_videollm(path)
    assert vlm.backbone.cfg.n_ctx == 64
    with pytest.raises(ValueError, match="more than the 64 this backbone reproduces"):
        vlm.prepare(_sample())
