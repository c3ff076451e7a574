"""The paper's prompt format and its exact spans, for each tokenizer kind a VideoLLM family uses:
SentencePiece-style BPE (Llama / Vicuna / Mistral), byte-level BPE (Qwen2) and word level
(SynthTV). The tokenizers are trained here on a few sentences; nothing is downloaded.

The builders (``llama_tokenizer`` & co.) are also used by the model-adapter tests."""

from __future__ import annotations

import json

import pytest

from mapflow_tl.models.prompt import (
    ASSISTANT_PREFIX,
    MAPFLOW_STYLE,
    MVBENCH_STYLE,
    VIDEOLLAMA3_STYLE,
    CharSpan,
    answer_token_ids,
    multiple_choice_block,
    render_prompt,
    token_span,
    tokenize_prompt,
)

CORPUS = [
    "Question: What does the person do first? Options: (A) open the door (B) close the door "
    "(C) sit down (D) stand up Only give the best option.",
    "USER: A chat between a curious human and an artificial intelligence assistant. "
    "ASSISTANT: Best option:(A) Best option:(B) Best option:(C)",
    "Which direction is the red ball moving? left right up down toward away",
    "system user assistant You are a helpful assistant.",
] * 10

#: LLaVA / Vicuna conversation format (the llava-hf chat templates, in short).
VICUNA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}"
    "ASSISTANT: {% endif %}{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}{% if item['type'] == 'video' %}<video>\n"
    "{% elif item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}"
    "{{ item['text'] }}{% endif %}{% endfor %}{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

#: ChatML (Qwen2) with the default system prompt.
CHATML_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for item in message['content'] %}{% if item['type'] == 'video' %}<video>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

MEDIA_TOKENS = ["<video>", "<image>"]


def _merges(tokenizer) -> list[tuple[str, str]]:
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
            for m in json.loads(tokenizer.to_str())["model"]["merges"]]


def llama_tokenizer(extra_corpus: tuple[str, ...] = ()):
    """A SentencePiece-style Llama tokenizer (Metaspace "▁", byte fallback for newlines, BOS)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    trained = Tokenizer(models.BPE(unk_token="<unk>"))
    trained.pre_tokenizer = pre_tokenizers.Metaspace()
    trained.train_from_iterator(list(CORPUS) + list(extra_corpus), trainers.BpeTrainer(
        vocab_size=220, special_tokens=["<unk>", "<s>", "</s>"], max_token_length=6,
        show_progress=False))
    vocab = trained.get_vocab()
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    tokenizer = LlamaTokenizer(vocab=vocab, merges=_merges(trained), add_bos_token=True)
    tokenizer.add_special_tokens({"additional_special_tokens": MEDIA_TOKENS})
    tokenizer.chat_template = VICUNA_TEMPLATE
    return tokenizer


def legacy_llama_tokenizer():
    """The tokenizer.json layout of the llava-hf Vicuna checkpoints: no pre-tokenizer, a
    normalizer that prepends "▁" and replaces spaces, byte fallback, a BOS template."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    state = json.loads(llama_tokenizer().backend_tokenizer.to_str())["model"]
    vocab = state["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>",
                                   byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>",
                                        eos_token="</s>", unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": MEDIA_TOKENS})
    tokenizer.chat_template = VICUNA_TEMPLATE
    return tokenizer


def qwen2_tokenizer(extra_corpus: tuple[str, ...] = ()):
    """A byte-level BPE tokenizer with Qwen2's pre-tokenizer and ChatML special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trained.train_from_iterator(list(CORPUS) + list(extra_corpus), trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False))
    tokenizer = Qwen2Tokenizer(vocab=trained.get_vocab(), merges=_merges(trained))
    tokenizer.add_special_tokens({"additional_special_tokens": MEDIA_TOKENS})
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def word_level_tokenizer():
    """A word-level tokenizer like SynthTV's: every word and punctuation run is one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for line in CORPUS + ["option:("]
                    for w in pre_tokenizers.Whitespace().pre_tokenize_str(line) for w in [w[0]]})
    vocab = {"<unk>": 0, "<pad>": 1, "<video>": 2, "<image>": 3}
    for word in words + [":(", "A", "B", "C", "D"]:
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                        pad_token="<pad>")
    tokenizer.add_special_tokens({"additional_special_tokens": MEDIA_TOKENS})
    return tokenizer


def word_level_renderer(block: str, media: str | None) -> str:
    return f"USER: {media} {block} ASSISTANT:" if media else f"USER: {block} ASSISTANT:"


QUESTION = "What does the person do first?"
OPTIONS = ["open the door", "close the door", "sit down"]


KINDS = ["sentencepiece", "sentencepiece_legacy", "byte_level", "word_level"]


def _kinds():
    return {
        "sentencepiece": (llama_tokenizer(), None),
        "sentencepiece_legacy": (legacy_llama_tokenizer(), None),
        "byte_level": (qwen2_tokenizer(), None),
        "word_level": (word_level_tokenizer(), word_level_renderer),
    }


@pytest.fixture(scope="module")
def kinds():
    return _kinds()


def _same_text(decoded: str, text: str, kind: str) -> bool:
    if kind == "word_level":  # word-level decoding joins every token with a space
        return "".join(decoded.split()) == "".join(text.split())
    return decoded.strip() == text


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("media", ["<video>", None])
def test_every_span_decodes_back_to_its_text(kinds, kind, media):
    tokenizer, renderer = kinds[kind]
    rendered = render_prompt(QUESTION, OPTIONS, answer=1, media=media,
                             template=renderer or tokenizer)
    assert rendered.text.endswith(ASSISTANT_PREFIX)
    assert rendered.question.of(rendered.text) == QUESTION
    labelled = [f"({label}) {text}" for label, text in zip("ABC", OPTIONS)]
    for option, text, with_label in zip(rendered.options, OPTIONS, labelled):
        assert option.of(rendered.text) == with_label  # the official span: label included
        assert option.text_chars.of(rendered.text) == text == option.text
    assert [o.is_true for o in rendered.options] == [False, True, False]
    coarse = f"Question: {QUESTION}\nOptions:\n" + "\n".join(labelled)
    assert rendered.question_with_options.of(rendered.text) == coarse

    tokens = tokenize_prompt(tokenizer, rendered)
    ids = tokens.input_ids[0].tolist()
    assert ids == tokenizer(rendered.text)["input_ids"]
    start, stop = tokens.question
    assert _same_text(tokenizer.decode(ids[start:stop]), QUESTION, kind)
    assert _same_text(tokenizer.decode(ids[slice(*tokens.question_with_options)]), coarse, kind)
    for (start, stop), text in zip(tokens.option_texts, OPTIONS):
        assert _same_text(tokenizer.decode(ids[start:stop]), text, kind)
    for (start, stop), text in zip(tokens.options, labelled):
        assert _same_text(tokenizer.decode(ids[start:stop]), text, kind)
        # the span is tight: the tokens just before and after carry other text (or only spaces)
        for neighbour in (start - 1, stop):
            outside = tokenizer.decode(ids[neighbour:neighbour + 1])
            assert not outside.strip() or not _same_text(
                tokenizer.decode(ids[min(start, neighbour):max(stop, neighbour + 1)]), text, kind)
    if media is None:
        assert tokens.media is None
    else:
        assert tokenizer.convert_ids_to_tokens(ids[tokens.media]) == media
    assert tokens.last == len(ids) - 1


@pytest.mark.parametrize("kind", KINDS)
def test_answer_tokens_are_the_letters_the_model_emits_after_the_paren(kinds, kind):
    tokenizer, renderer = kinds[kind]
    rendered = render_prompt(QUESTION, OPTIONS, media="<video>", template=renderer or tokenizer)
    answer_ids = answer_token_ids(tokenizer, rendered.text, rendered.labels).tolist()
    prompt_ids = tokenizer(rendered.text)["input_ids"]
    for label, token in zip(rendered.labels, answer_ids):
        assert tokenizer.decode([token]).strip() == label
        assert tokenizer(rendered.text + label)["input_ids"] == prompt_ids + [token]
    if kind.startswith("sentencepiece"):  # "A", not the word-start "▁A"
        assert not any(t.startswith("▁") for t in tokenizer.convert_ids_to_tokens(answer_ids))


def test_answer_token_when_the_letter_merges_with_the_paren():
    # A SentencePiece vocabulary that learned "(A" as one token: "...:(" + "A" re-tokenizes the
    # prompt's last token, but after a prompt ending in "(" the model emits the bare "A".
    tokenizer = llama_tokenizer(extra_corpus=("option:(A option:(B option:(C",) * 50)
    rendered = render_prompt(QUESTION, OPTIONS, media="<video>", template=tokenizer)
    prompt_ids = tokenizer(rendered.text)["input_ids"]
    merged = tokenizer(rendered.text + "A")["input_ids"]
    assert merged[:len(prompt_ids)] != prompt_ids  # the letter merged with "("
    answer_ids = answer_token_ids(tokenizer, rendered.text, rendered.labels).tolist()
    assert tokenizer.convert_ids_to_tokens(answer_ids) == ["A", "B", "C"]


def test_open_ended_variant_has_no_options_and_no_prefix():
    tokenizer = qwen2_tokenizer()
    rendered = render_prompt(QUESTION, template=tokenizer, media="<video>", open_ended=True)
    assert rendered.options == () and rendered.text.endswith("<|im_start|>assistant\n")
    tokens = tokenize_prompt(tokenizer, rendered)
    start, stop = tokens.question
    assert tokenizer.decode(tokens.input_ids[0, start:stop]).strip() == QUESTION


def test_block_format_is_the_papers():
    block = multiple_choice_block("Q?", ["x", "y"], answer=0)
    assert block.text == "Question: Q?\nOptions:\n(A) x\n(B) y\nOnly give the best option."
    assert block.assistant_prefix == "Best option:("
    # the official eval_mvbench conversations: query + " " + "\nOnly give the best option."
    block = multiple_choice_block("Q?", ["x", "y"], style=MVBENCH_STYLE)
    assert block.text == "Question: Q?\nOptions:\n(A) x\n(B) y \nOnly give the best option."
    # VideoLLaMA3's own instruction, every option line ending in a newline, no prefix
    block = multiple_choice_block("Q?", ["x", "y"], style=VIDEOLLAMA3_STYLE)
    assert block.text == ("Question: Q?\nOptions:\n(A) x\n(B) y\nAnswer with the option's letter "
                          "from the given choices directly and only give the best option.")
    assert block.assistant_prefix == ""


def test_prefix_joins_the_generation_prompt_as_the_style_says():
    def renderer(block, media):
        return f"USER: {media}\n USER: {block} ASSISTANT:"

    plain = render_prompt("Q?", ["x", "y"], media="<video>", template=renderer)
    assert plain.text.endswith("(B) y\nOnly give the best option. ASSISTANT: Best option:(")
    official = render_prompt("Q?", ["x", "y"], media="<video>", template=renderer,
                             style=MVBENCH_STYLE)
    assert official.text == ("USER: <video>\n USER: Question: Q?\nOptions:\n(A) x\n(B) y \n"
                             "Only give the best option. ASSISTANT:Best option:(")
    v3 = render_prompt("Q?", ["x", "y"], media="<video>", template=renderer,
                       style=VIDEOLLAMA3_STYLE)
    assert v3.text.endswith("only give the best option. ASSISTANT:")


def official_find_token_range(tokenizer, ids, substring, remove_margin=True):
    """The official span finder, re-stated from its description (official.md §0): decode every
    token on its own, join without separators, drop every space from the substring (unless
    remove_margin is False), take the first occurrence and return the tokens holding its first
    and last characters, [start, stop)."""
    pieces = [tokenizer.decode([i]) for i in ids]
    whole = "".join(pieces)
    if remove_margin:
        substring = substring.replace(" ", "")
    at = whole.index(substring)
    end = at + len(substring)
    start = stop = None
    seen = 0
    for i, piece in enumerate(pieces):
        seen += len(piece)
        if start is None and seen > at:
            start = i
        if stop is None and seen >= end:
            stop = i + 1
            break
    return start, stop


@pytest.mark.parametrize("kind", ["sentencepiece", "sentencepiece_legacy"])
def test_spans_equal_the_official_finder_on_the_mvbench_prompt(kinds, kind):
    # LLaVA / InternVL path: option "(A) text" without newline, coarse question = the example's
    # "question" field rstripped, non-option question = the raw question (official.md §1, §2)
    tokenizer, _ = kinds[kind]
    rendered = render_prompt(QUESTION, OPTIONS, answer=1, media="<video>", template=tokenizer,
                             style=MVBENCH_STYLE)
    tokens = tokenize_prompt(tokenizer, rendered)
    ids = tokens.input_ids[0].tolist()
    options = [f"({label}) {text}" for label, text in zip("ABC", OPTIONS)]
    example_question = (f"Question: {QUESTION}\nOptions:\n"
                        + "".join(option + "\n" for option in options)).rstrip()
    assert tokens.question == official_find_token_range(tokenizer, ids, QUESTION)
    assert tokens.question_with_options == official_find_token_range(tokenizer, ids,
                                                                     example_question)
    for span, option in zip(tokens.options, options):
        assert span == official_find_token_range(tokenizer, ids, option)


def test_spans_equal_the_official_finder_on_the_videollama3_prompt(kinds):
    # VideoLLaMA3 path (Qwen2 byte-level BPE, remove_margin=False): the question and each option
    # with their trailing newline; the coarse question from "Question" to the last option's end
    tokenizer, _ = kinds["byte_level"]
    rendered = render_prompt(QUESTION, OPTIONS, answer=1, media="<video>", template=tokenizer,
                             style=VIDEOLLAMA3_STYLE)
    assert rendered.text.endswith("<|im_start|>assistant\n")
    tokens = tokenize_prompt(tokenizer, rendered)
    ids = tokens.input_ids[0].tolist()
    find = lambda text: official_find_token_range(tokenizer, ids, text, remove_margin=False)
    assert tokens.question == find(QUESTION + "\n")
    options = [find(f"({label}) {text}\n") for label, text in zip("ABC", OPTIONS)]
    assert list(tokens.options) == options
    assert tokens.question_with_options == (find("Question:")[0], max(s for _, s in options))


def test_template_that_changes_the_question_is_an_error():
    def shouting(block, media):
        return f"USER: {media} {block.upper()} ASSISTANT:"

    with pytest.raises(ValueError, match="question block does not appear verbatim"):
        render_prompt(QUESTION, OPTIONS, media="<video>", template=shouting)
    with pytest.raises(ValueError, match="media placeholder"):
        render_prompt(QUESTION, OPTIONS, media="<video>", template=lambda b, m: f"{b} ASSISTANT:")


def test_straddling_token_is_an_error_naming_the_span():
    text = "Question: red ball?"
    # one token "ball?" would be fine; a token "l?Q" mixing span and outside text is not
    offsets = [(0, 9), (9, 13), (14, 16), (16, 19)]
    with pytest.raises(ValueError, match="question cannot be located exactly"):
        token_span(text, offsets, CharSpan(10, 17), "question")
    assert token_span(text, [(0, 9), (9, 13), (13, 19)], CharSpan(10, 19), "question") == (1, 3)


def test_bad_inputs_are_named():
    tokenizer = llama_tokenizer()
    with pytest.raises(ValueError, match="at least 2 options"):
        render_prompt(QUESTION, ["only one"], template=tokenizer)
    with pytest.raises(ValueError, match="answer 3"):
        render_prompt(QUESTION, OPTIONS, answer=3, template=tokenizer)
    with pytest.raises(ValueError, match="whitespace"):
        render_prompt(" padded question ", OPTIONS, template=tokenizer)
    rendered = render_prompt(QUESTION, OPTIONS, media="<clip>", template=word_level_renderer)
    with pytest.raises(ValueError, match="not one token"):
        tokenize_prompt(tokenizer, rendered)


def test_string_only_chat_template_gets_string_content():
    # a tokenizer template that only knows string content (renders a list as its repr)
    tokenizer = llama_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}USER: {{ m['content'] }} {% endfor %}"
                               "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    rendered = render_prompt(QUESTION, OPTIONS, media="<video>", template=tokenizer)
    assert rendered.text.startswith("USER: <video>\nQuestion: ")
    assert rendered.text.endswith("ASSISTANT: Best option:(")
    tokens = tokenize_prompt(tokenizer, rendered)
    assert tokenizer.convert_ids_to_tokens(int(tokens.input_ids[0, tokens.media])) == "<video>"


def test_template_without_the_placeholder_is_an_error():
    tokenizer = qwen2_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}{% for c in m['content'] %}"
                               "{{ c.get('text', '') }}{% endfor %}{% endfor %}")
    with pytest.raises(ValueError, match="does not render the question block and the placeholder"):
        render_prompt(QUESTION, OPTIONS, media="<video>", template=tokenizer)


# ------------------------------------------------------------- every family's prompt, pinned
SYSTEM = ("Carefully watch the video and pay attention to the cause and sequence of events, the "
          "detail and movement of objects, and the action and pose of persons. Based on your "
          "observations, select the best option that accurately addresses the question.")
BLOCK = "Question: Q?\nOptions:\n(A) x\n(B) y\nOnly give the best option."
MVBENCH_BLOCK = "Question: Q?\nOptions:\n(A) x\n(B) y \nOnly give the best option."
V3_BLOCK = ("Question: Q?\nOptions:\n(A) x\n(B) y\nAnswer with the option's letter from the given "
            "choices directly and only give the best option.")


def _family_prompts():
    """(family, renderer, style, media, the prompt written out by hand, byte for byte)."""
    from mapflow_tl.models.internvl_chat import mvbench_phi3_conversation, phi3_chat_template
    from mapflow_tl.models.pllava import pllava_conversation
    from mapflow_tl.models.templates import TokenizerWithTemplate, vicuna_conversation

    phi3 = TokenizerWithTemplate(qwen2_tokenizer(), phi3_chat_template("Be brief."))
    chatml = qwen2_tokenizer()
    return [
        # LLaVA's Vicuna v1 conversation: a newline (not a space) after the video placeholder
        ("vicuna", vicuna_conversation, MAPFLOW_STYLE, "<video>",
         f"USER: <video>\n{BLOCK} ASSISTANT: Best option:("),
        ("vicuna, no video", vicuna_conversation, MAPFLOW_STYLE, None,
         f"USER: {BLOCK} ASSISTANT: Best option:("),
        ("pllava paper", pllava_conversation, MVBENCH_STYLE, "<image>",
         f"{SYSTEM}\n USER: <image>\n USER: {MVBENCH_BLOCK} ASSISTANT:Best option:("),
        ("pllava mapflow", pllava_conversation, MAPFLOW_STYLE, "<image>",
         f"{SYSTEM}\n USER: <image>\n USER: {BLOCK} ASSISTANT: Best option:("),
        ("internvl paper", mvbench_phi3_conversation(), MVBENCH_STYLE, "<video>",
         f"{SYSTEM}\n <|user|>\n<img><video></img>\n <|user|>\n{MVBENCH_BLOCK} "
         f"<|assistant|>\nBest option:("),
        ("internvl phi3 template", phi3, MAPFLOW_STYLE, "<video>",
         f"<|system|>\nBe brief.<|end|><|user|>\n<video>\n{BLOCK}<|end|><|assistant|>\n"
         f"Best option:("),
        ("qwen chatml", chatml, MAPFLOW_STYLE, "<video>",
         f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
         f"<video>{BLOCK}<|im_end|>\n<|im_start|>assistant\nBest option:("),
        ("videollama3", chatml, VIDEOLLAMA3_STYLE, "<video>",
         f"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
         f"<video>{V3_BLOCK}<|im_end|>\n<|im_start|>assistant\n"),
    ]


def test_every_familys_prompt_byte_for_byte():
    """Each family's conversation around the paper's block, compared with the whole prompt
    written out by hand (the official conversations: roles, separators, the newline after the
    media placeholder, the space — or none — before "Best option:(")."""
    for family, renderer, style, media, expected in _family_prompts():
        rendered = render_prompt("Q?", ["x", "y"], answer=1, media=media, template=renderer,
                                 style=style)
        assert rendered.text == expected, family
