"""Build the SynthTV VideoLLM: a word-level tokenizer, a ``LlavaNextVideoProcessor`` with a chat
template, and a tiny ``LlavaNextVideoForConditionalGeneration`` (CLIP vision tower that sees one
frame at a time, average pooling to 2×2 tokens per frame, small Llama backbone).

Prompts follow Map the Flow's multiple-choice format::

    <s> USER: <video>×(T·4)
    Question: what does the red circle do ?
    Options:
    (A) it grows
    (B) it shrinks
    Only give the best option.
    ASSISTANT: Best option:(

and the answer is the next token, a letter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from . import generator as gen

__all__ = [
    "ModelConfig", "SPECIAL_TOKENS", "LETTERS", "CHAT_TEMPLATE", "ANSWER_PREFIX",
    "build_tokenizer", "build_processor", "processor_files", "build_model", "question_text", "prompt_text",
    "encode_item", "normalize_frames", "tokens_per_frame",
]

SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<video>", "<image>")
LETTERS = ("A", "B", "C", "D")
PUNCTUATION = ("(", ")", ":", "?", ".", ",")
TEMPLATE_WORDS = ("USER", "ASSISTANT", "Question", "Options", "Only", "give", "best", "option",
                  "Best", "Answer", "find")
ANSWER_PREFIX = "Best option:("
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'video' %}<video>\n"
    "{% elif content['type'] == 'image' %}<image>\n"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{{ '\\n' }}"
    "{% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{{ '\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ModelConfig:
    """Sizes of the SynthTV VideoLLM. ``pool_stride`` is fixed at 2: the HF processor assumes it."""

    image_size: int = gen.FRAME_SIZE
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_hidden: int = 96
    text_layers: int = 8
    text_heads: int = 4
    text_intermediate: int = 192
    max_positions: int = 512
    tie_embeddings: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tokens_per_frame(config: ModelConfig) -> int:
    side = config.image_size // config.patch_size // 2
    return side * side


def vocabulary() -> list[str]:
    words = list(SPECIAL_TOKENS) + list(PUNCTUATION) + list(TEMPLATE_WORDS) + list(LETTERS)
    for word in gen.ALL_WORDS:
        if word not in words:
            words.append(word)
    return words


def build_tokenizer():
    """A word-level ``PreTrainedTokenizerFast``: every word and punctuation mark is one token;
    ``<s>`` is prepended; ``<video>`` / ``<image>`` are special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = vocabulary()
    vocab = {word: i for i, word in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", extra_special_tokens={"video_token": "<video>", "image_token": "<image>"},
        padding_side="left", model_max_length=ModelConfig.max_positions,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def processor_files(config: ModelConfig | None = None) -> dict[str, Any]:
    """The ``LlavaNextVideoProcessor`` configuration files of a SynthTV checkpoint.

    Written as JSON (the layout ``save_pretrained`` of a ``LlavaNextVideoProcessor`` produces)
    rather than through the processor object because transformers' video processors need
    torchvision, which the CPU environment of this project does not have; ``AutoProcessor``
    reads them wherever torchvision is installed. Frames already at the model's resolution need
    only :func:`normalize_frames`, which is what these settings do to them.
    """
    config = config or ModelConfig()
    size = {"shortest_edge": config.image_size}
    crop = {"height": config.image_size, "width": config.image_size}
    common = {
        "do_resize": True, "size": size, "do_center_crop": True, "crop_size": crop,
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "do_convert_rgb": True,
        "resample": 3,
    }
    return {
        "processor_config.json": {
            "processor_class": "LlavaNextVideoProcessor", "patch_size": config.patch_size,
            "vision_feature_select_strategy": "default", "video_token": "<video>",
            "image_token": "<image>", "num_additional_image_tokens": 1,
        },
        "video_preprocessor_config.json": {
            "video_processor_type": "LlavaNextVideoVideoProcessor",
            "processor_class": "LlavaNextVideoProcessor", "do_sample_frames": False,
            "default_to_square": False, **common,
        },
        "preprocessor_config.json": {
            "image_processor_type": "LlavaNextImageProcessor",
            "processor_class": "LlavaNextVideoProcessor",
            "image_grid_pinpoints": [[config.image_size, config.image_size]], "do_pad": True,
            **common,
        },
    }


def build_processor(path: str):
    """``AutoProcessor.from_pretrained(path)`` — needs torchvision (see :func:`processor_files`)."""
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path)


def build_model(config: ModelConfig | None = None, tokenizer=None, seed: int = 0):
    """A freshly initialised ``LlavaNextVideoForConditionalGeneration`` (seeded)."""
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaNextVideoConfig,
                              LlavaNextVideoForConditionalGeneration)

    config = config or ModelConfig()
    tokenizer = tokenizer or build_tokenizer()
    vision = CLIPVisionConfig(
        hidden_size=config.vision_hidden, intermediate_size=4 * config.vision_hidden,
        num_hidden_layers=config.vision_layers, num_attention_heads=config.vision_heads,
        image_size=config.image_size, patch_size=config.patch_size,
        projection_dim=config.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=config.text_hidden,
        intermediate_size=config.text_intermediate, num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads, num_key_value_heads=config.text_heads,
        max_position_embeddings=config.max_positions, rms_norm_eps=1e-6,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=config.tie_embeddings,
    )
    side = config.image_size // config.patch_size
    full = LlavaNextVideoConfig(
        vision_config=vision, text_config=text,
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1, vision_feature_select_strategy="default",
        spatial_pool_mode="average", spatial_pool_stride=2,
        image_grid_pinpoints=[[config.image_size, config.image_size]],
        image_seq_length=side * side, video_seq_length=tokens_per_frame(config) * gen.N_FRAMES,
        tie_word_embeddings=config.tie_embeddings,
    )
    torch.manual_seed(seed)
    model = LlavaNextVideoForConditionalGeneration(full)
    return model.eval()


# ----------------------------------------------------------------------------------- prompts
def question_text(question: str, candidates: Sequence[str]) -> str:
    """The paper's multiple-choice user text (no chat template)."""
    lines = [f"Question: {question}", "Options:"]
    lines += [f"({LETTERS[i]}) {c}" for i, c in enumerate(candidates)]
    lines.append("Only give the best option.")
    return "\n".join(lines)


def messages(question: str, candidates: Sequence[str]) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video"},
                                         {"type": "text", "text": question_text(question,
                                                                                candidates)}]}]


def prompt_text(question: str, candidates: Sequence[str]) -> str:
    """The full prompt with the chat template and the assistant prefix ``Best option:(``,
    with a single ``<video>`` placeholder (the processor expands it)."""
    body = "USER: <video>\n" + question_text(question, candidates) + "\n"
    return body + "ASSISTANT: " + ANSWER_PREFIX


def text_prompt_text(question: str, candidates: Sequence[str]) -> str:
    """A text-only multiple-choice prompt (no video): the language-pretraining data."""
    return "USER: " + question_text(question, candidates) + "\n" + "ASSISTANT: " + ANSWER_PREFIX


def open_ended_prompt_text(question: str) -> str:
    """The open-ended variant used in training: no options, the same assistant prefix, and the
    answer's words as the continuation — so the position that must name a letter in the
    multiple-choice prompt has learnt to name the answer itself."""
    return "USER: <video>\n" + f"Question: {question}\n" + "ASSISTANT: " + ANSWER_PREFIX


def normalize_frames(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., H, W, 3]`` frames → CLIP-normalised float ``[..., 3, H, W]`` — what the
    video processor does for frames already at the model's resolution (resize and crop are
    no-ops)."""
    x = torch.as_tensor(frames).float().div(255.0)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return (x.movedim(-1, -3) - mean) / std


def encode_item(item: gen.Item, tokenizer, config: ModelConfig,
                open_ended: bool = False) -> dict[str, Any]:
    """Token ids and answer id of one item, exactly as the processor would tokenize it."""
    n_video = tokens_per_frame(config) * len(item.states)
    text = (open_ended_prompt_text(item.question) if open_ended
            else prompt_text(item.question, item.candidates))
    text = text.replace("<video>", "<video>" * n_video)
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    return {
        "input_ids": ids,
        "answer_id": tokenizer.convert_tokens_to_ids(LETTERS[item.answer_index]),
        "n_options": len(item.candidates),
        "task": item.task,
    }
