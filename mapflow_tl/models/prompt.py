"""The paper's prompt format, rendered through a model family's chat template, with exact spans.

Map the Flow (§2, "Input layout") asks every model the same multiple-choice block::

    Question: {question}
    Options:
    (A) {option 0}
    (B) {option 1}
    Only give the best option.

as the user turn (after the video), and starts the assistant turn with ``Best option:(`` so that the
next token is the answer letter. The open-ended variant (VCGBench) is the question alone with no
assistant prefix. A :class:`PromptStyle` says how one model's official evaluation writes it: the
PLLaVA / InternVL conversation joins the instruction with ``" \n"`` and the prefix with no space
(:data:`MVBENCH_STYLE`), VideoLLaMA3 uses its own instruction and no prefix
(:data:`VIDEOLLAMA3_STYLE`); :data:`MAPFLOW_STYLE` is the plain block above.

Spans (as the official Map-the-Flow code delimits them, docs/paper_parity.md): the non-option
question is the question text; each option is "(A) text", label included (its text alone is kept
too); the coarse question runs from "Question:" through the end of the last option. Under
VideoLLaMA3's style the question and every option also take their trailing newline, as the
official VideoLLaMA3 code's spans do.

Spans are exact by construction, never found by searching decoded token strings:

1. :func:`render_prompt` builds the user block itself, so it knows the character offsets of the
   question and of every option text inside the block; it renders the conversation through the
   family's chat template and locates the block in the rendered text (it must appear there
   verbatim, exactly once), which shifts those offsets into the prompt.
2. :func:`tokenize_prompt` tokenizes the prompt with a fast tokenizer's offset mapping and turns
   every character span into the token positions that cover it. A token may stick out of a span
   only by whitespace (SentencePiece's "▁Red", byte-level BPE's "?\\n"); a token that mixes text of
   the span with text outside it makes the span impossible to locate exactly, which is a
   ``ValueError`` naming the span.
3. :func:`answer_token_ids` finds each option letter's token as the model would emit it after the
   prompt's final "(": tokenize ``prompt + letter`` and take the one token appended.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch
from jaxtyping import Int

from ..errors import InputError

__all__ = [
    "QUESTION_PREFIX",
    "OPTIONS_HEADER",
    "INSTRUCTION",
    "ASSISTANT_PREFIX",
    "VIDEOLLAMA3_INSTRUCTION",
    "MVBENCH_SYSTEM_PROMPT",
    "PromptStyle",
    "MAPFLOW_STYLE",
    "MVBENCH_STYLE",
    "VIDEOLLAMA3_STYLE",
    "option_label",
    "with_context",
    "CharSpan",
    "OptionChars",
    "PromptBlock",
    "RenderedPrompt",
    "PromptTokens",
    "multiple_choice_block",
    "open_ended_block",
    "render_prompt",
    "tokenize_prompt",
    "token_span",
    "prompt_spans",
    "answer_token_ids",
]

QUESTION_PREFIX = "Question: "
OPTIONS_HEADER = "Options:"
INSTRUCTION = "Only give the best option."
#: The paper's assistant prefix: the next token after "(" is the answer letter.
ASSISTANT_PREFIX = "Best option:("
#: The system prompt of the official MVBench / TVBench evaluation conversations (PLLaVA's
#: ``SYSTEM_MVBENCH``, used for the LLaVA-NeXT-Video-FT and Mini-InternVL models), without the
#: newline the conversations put after it.
MVBENCH_SYSTEM_PROMPT = ("Carefully watch the video and pay attention to the cause and sequence of "
                         "events, the detail and movement of objects, and the action and pose of "
                         "persons. Based on your observations, select the best option that "
                         "accurately addresses the question.")
#: VideoLLaMA3's own multiple-choice instruction, which the official VideoLLaMA3 runs use instead
#: of "Only give the best option." (VideoLLaMA3 evaluation/benchmarks/tvbench.py, tomato.py).
VIDEOLLAMA3_INSTRUCTION = ("Answer with the option's letter from the given choices directly and "
                           "only give the best option.")


@dataclass(frozen=True)
class PromptStyle:
    """How one model's evaluation writes the multiple-choice block around the question.

    - ``instruction`` follows the last option after ``before_instruction``;
    - ``assistant_prefix`` is appended after the generation prompt, joined by ``before_prefix``
      (None: one space unless the generation prompt ends in whitespace);
    - ``newline_in_spans``: the question's and every option's span take the newline that follows
      them (VideoLLaMA3's official spans).
    """

    name: str
    instruction: str = INSTRUCTION
    before_instruction: str = "\n"
    assistant_prefix: str = ASSISTANT_PREFIX
    before_prefix: str | None = None
    newline_in_spans: bool = False


#: The plain block: "...\n(B) text\nOnly give the best option." and " Best option:(".
MAPFLOW_STYLE = PromptStyle("mapflow")
#: PLLaVA's ``eval_mvbench`` conversations (LLaVA-NeXT-Video-FT, Mini-InternVL): the query and the
#: post prompt "\nOnly give the best option." are joined by a space, and the answer prompt
#: "Best option:(" follows the "ASSISTANT:" role with no space (official tasks/eval/eval_utils.py).
MVBENCH_STYLE = PromptStyle("mvbench", before_instruction=" \n", before_prefix="")
#: The official VideoLLaMA3 runs: VideoLLaMA3's own instruction, no assistant prefix, spans with
#: their trailing newline.
VIDEOLLAMA3_STYLE = PromptStyle("videollama3", instruction=VIDEOLLAMA3_INSTRUCTION,
                                assistant_prefix="", before_prefix="", newline_in_spans=True)


def option_label(index: int) -> str:
    """The letter of option ``index``: A, B, C, ..."""
    if not 0 <= index < 26:
        raise InputError(f"option index {index} has no letter label (at most 26 options)")
    return chr(ord("A") + index)


@dataclass(frozen=True)
class CharSpan:
    """Characters ``[start, stop)`` of a prompt text."""

    start: int
    stop: int

    def shifted(self, offset: int) -> "CharSpan":
        return CharSpan(self.start + offset, self.stop + offset)

    def of(self, text: str) -> str:
        return text[self.start:self.stop]


@dataclass(frozen=True)
class OptionChars(CharSpan):
    """The characters of one option: ``[start, stop)`` is "(A) text" (label included),
    ``[text_start, text_stop)`` the text alone."""

    label: str = ""
    text: str = ""
    is_true: bool = False
    text_start: int = 0
    text_stop: int = 0

    def shifted(self, offset: int) -> "OptionChars":
        return replace(self, start=self.start + offset, stop=self.stop + offset,
                       text_start=self.text_start + offset, text_stop=self.text_stop + offset)

    @property
    def text_chars(self) -> CharSpan:
        return CharSpan(self.text_start, self.text_stop)


@dataclass(frozen=True)
class PromptBlock:
    """The user text of one question and the character spans inside it."""

    text: str
    question: CharSpan
    options: tuple[OptionChars, ...] = ()
    assistant_prefix: str = ""
    question_with_options: CharSpan | None = None
    style: PromptStyle = MAPFLOW_STYLE


@dataclass(frozen=True)
class RenderedPrompt:
    """A full prompt (chat template applied, assistant prefix appended) with character spans.

    ``media`` is the span of the video (or image) placeholder the template inserted, if any; the
    adapter replaces its token by the video tokens. ``answer`` is the index of the true option.
    ``question_with_options`` is the coarse question ("Question:" through the last option).
    """

    text: str
    question: CharSpan
    options: tuple[OptionChars, ...] = ()
    media: CharSpan | None = None
    answer: int | None = None
    question_with_options: CharSpan | None = None
    style: PromptStyle = MAPFLOW_STYLE

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(option.label for option in self.options)


@dataclass(frozen=True)
class PromptTokens:
    """A tokenized prompt with token spans ``(start, stop)`` (positions, half-open).

    ``media`` is the position of the single placeholder token, if the prompt has one; all positions
    refer to ``input_ids`` as tokenized here, before any placeholder expansion.
    """

    input_ids: Int[torch.Tensor, "1 pos"]
    offsets: tuple[tuple[int, int], ...]
    question: tuple[int, int]
    options: tuple[tuple[int, int], ...] = ()
    media: int | None = None
    rendered: RenderedPrompt | None = field(default=None, repr=False)
    option_texts: tuple[tuple[int, int], ...] = ()
    question_with_options: tuple[int, int] | None = None

    @property
    def n_positions(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def last(self) -> int:
        return self.n_positions - 1


# ---------------------------------------------------------------------- the user block
def _check_text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{what} must be a non-empty string, got {value!r}")
    if value != value.strip():
        raise InputError(f"{what} {value!r} has leading or trailing whitespace; strip it first "
                         f"(its span would otherwise depend on the tokenizer)")
    return value


def multiple_choice_block(
    question: str, options: Sequence[str], *, answer: int | None = None,
    style: PromptStyle = MAPFLOW_STYLE,
) -> PromptBlock:
    """The paper's multiple-choice user block with the character spans of question and options.

    ``Question: {question}\nOptions:\n(A) {opt}\n(B) {opt}{before_instruction}{instruction}``
    (``style``, default :data:`MAPFLOW_STYLE`: ``"\n"`` and "Only give the best option.") with
    the style's assistant prefix (``Best option:(``). Option spans cover "(A) text"; the coarse
    question covers "Question:" through the last option.
    """
    question = _check_text(question, "question")
    options = list(options)
    if len(options) < 2:
        raise InputError(f"a multiple-choice prompt needs at least 2 options, got {options!r}")
    if answer is not None and not (isinstance(answer, int) and 0 <= answer < len(options)):
        raise InputError(f"answer {answer!r} is not an index into the {len(options)} options")
    # A span that takes its trailing newline (VideoLLaMA3) ends one character later.
    newline = 1 if style.newline_in_spans else 0
    text = QUESTION_PREFIX
    question_span = CharSpan(len(text), len(text) + len(question) + newline)
    text += question + "\n" + OPTIONS_HEADER
    spans = []
    for index, option in enumerate(options):
        option = _check_text(option, f"option {index}")
        if "\n" in option:
            raise InputError(f"option {index} {option!r} contains a newline; options are one line")
        label = option_label(index)
        text += "\n"
        start = len(text)
        text += f"({label}) "
        spans.append(OptionChars(start, len(text) + len(option) + newline, label=label,
                                 text=option, is_true=(index == answer), text_start=len(text),
                                 text_stop=len(text) + len(option)))
        text += option
    if newline and not style.before_instruction.startswith("\n"):
        raise InputError(f"prompt style {style.name!r}: spans with their trailing newline need an "
                         f"instruction that starts on a new line")
    text += style.before_instruction + style.instruction
    coarse = CharSpan(0, spans[-1].stop)
    return PromptBlock(text, question_span, tuple(spans), style.assistant_prefix, coarse, style)


def open_ended_block(question: str) -> PromptBlock:
    """The open-ended variant: the question alone, no options, no assistant prefix."""
    question = _check_text(question, "question")
    return PromptBlock(question, CharSpan(0, len(question)))


def with_context(block: PromptBlock, context: str) -> PromptBlock:
    """``block`` with ``context`` and a newline before it, its spans moved along: Video-MME's
    official subtitle prompt (lmms-eval ``videomme_doc_to_text_subtitle``) is
    ``"This video's subtitles are listed below: \n" + lines + "\n" + question``."""
    if not isinstance(context, str):
        raise InputError(f"context must be a string, got {type(context).__name__}")
    shift = len(context) + 1
    coarse = block.question_with_options
    return replace(block, text=context + "\n" + block.text,
                   question=block.question.shifted(shift),
                   options=tuple(option.shifted(shift) for option in block.options),
                   question_with_options=None if coarse is None else coarse.shifted(shift))


# ---------------------------------------------------------------------- chat templates
#: A conversation renderer: (user text, media placeholder or None) -> (prompt text that ends where
#: the assistant's answer begins). Families without an HF chat template supply one.
Renderer = Callable[[str, "str | None"], str]


def _render_with_template(template_owner: Any, block_text: str, media: str | None,
                          media_type: str) -> str:
    """Render one user turn, trying processor-style list content first and tokenizer-style
    string content (``"{media}\n{block}"``) when the template does not render the list (it
    raises, or the block / placeholder does not come out verbatim)."""
    parts: list[dict[str, str]] = [{"type": "text", "text": block_text}]
    if media is not None:
        parts.insert(0, {"type": media_type})
    string_content = block_text if media is None else f"{media}\n{block_text}"
    errors = []
    for content in (parts, string_content):
        try:
            text = template_owner.apply_chat_template(
                [{"role": "user", "content": content}], tokenize=False,
                add_generation_prompt=True)
        except Exception as error:  # noqa: BLE001 - reported below if no form renders
            errors.append(str(error))
            continue
        if block_text in text and (media is None or media in text):
            return text
        errors.append(f"rendered {text!r}")
    what = "question block" + (f" and the placeholder {media!r}" if media else "")
    raise InputError(
        f"the chat template of {type(template_owner).__name__} does not render the {what} "
        f"verbatim ({'; '.join(errors)}); pass a conversation renderer (template=callable) or a "
        f"checkpoint with a chat template")


def _unique(text: str, needle: str, what: str, start: int = 0) -> int:
    first = text.find(needle, start)
    if first < 0:
        raise InputError(
            f"the {what} does not appear verbatim in the rendered prompt (the chat template "
            f"changed it); its spans cannot be located exactly. Rendered prompt: {text!r}")
    if text.find(needle, first + 1) >= 0:
        raise InputError(f"the {what} appears more than once in the rendered prompt, so its "
                         f"position is ambiguous: {text!r}")
    return first


def render_prompt(
    question: str,
    options: Sequence[str] = (),
    *,
    template: Any,
    answer: int | None = None,
    media: str | None = None,
    media_type: str = "video",
    open_ended: bool = False,
    assistant_prefix: str | None = None,
    style: PromptStyle = MAPFLOW_STYLE,
    context: str | None = None,
) -> RenderedPrompt:
    """Render the paper's prompt through a family's chat template, keeping exact char spans.

    ``template`` is an object with ``apply_chat_template`` (an HF processor or tokenizer; the user
    turn is ``[{"type": media_type}, {"type": "text", ...}]``, falling back to string content
    ``"{media}\\n{block}"`` for tokenizer-only templates) or a :data:`Renderer` callable
    ``(block_text, media) -> text``. ``media`` is the placeholder string the template emits for
    the video (``"<video>"``, ``"<image>"``); it must appear exactly once before the block, or
    not at all when ``media`` is None. The rendered text ends with the generation prompt; the
    ``style``'s assistant prefix (``Best option:(``; ``assistant_prefix`` overrides it) is
    appended after it, joined by the style's ``before_prefix`` (default: one space when the
    generation prompt does not end in whitespace, as in ``ASSISTANT: Best option:(``).
    ``context`` (a benchmark's subtitles, :func:`with_context`) starts the user block, on its own
    line(s) before "Question:"; it is in no span.
    """
    block = open_ended_block(question) if open_ended else multiple_choice_block(
        question, options, answer=answer, style=style)
    if context is not None:
        block = with_context(block, context)
    if callable(template) and not hasattr(template, "apply_chat_template"):
        text = template(block.text, media)
        if not isinstance(text, str):
            raise InputError(f"the conversation renderer returned {type(text).__name__}, "
                             f"expected the prompt string")
    else:
        text = _render_with_template(template, block.text, media, media_type)
    block_start = _unique(text, block.text, "question block")
    media_span = None
    if media is not None:
        media_start = _unique(text, media, f"media placeholder {media!r}")
        if media_start > block_start:
            raise InputError(f"the media placeholder {media!r} comes after the question block; "
                             f"the video must precede the question")
        media_span = CharSpan(media_start, media_start + len(media))
    prefix = block.assistant_prefix if assistant_prefix is None else assistant_prefix
    if prefix:
        if style.before_prefix is not None:
            text += style.before_prefix + prefix
        else:
            text += (prefix if not text or text[-1].isspace() else " " + prefix)
    coarse = block.question_with_options
    return RenderedPrompt(
        text=text,
        question=block.question.shifted(block_start),
        options=tuple(option.shifted(block_start) for option in block.options),
        media=media_span,
        answer=None if open_ended else answer,
        question_with_options=None if coarse is None else coarse.shifted(block_start),
        style=style,
    )


# ---------------------------------------------------------------------- token spans
def token_span(text: str, offsets: Sequence[tuple[int, int]], span: CharSpan,
               what: str, *, trailing_whitespace: bool = False) -> tuple[int, int]:
    """Token positions ``(start, stop)`` covering the characters of ``span`` exactly.

    A token may reach outside the span only over whitespace; a token mixing the span's text with
    other text, a character of the span no token covers, or an empty span raise ``ValueError``.
    Tokens that hold only whitespace of the span's edges are left out, except, with
    ``trailing_whitespace``, those at its end (VideoLLaMA3's spans that end in a newline token).
    """
    inside = [i for i, (a, b) in enumerate(offsets)
              if b > a and a < span.stop and b > span.start
              and text[max(a, span.start):min(b, span.stop)].strip()]
    if not inside:
        raise InputError(f"{what} {span.of(text)!r} (characters [{span.start}, {span.stop})) is "
                         f"covered by no token")
    first, last = inside[0], inside[-1]
    if trailing_whitespace:
        while (last + 1 < len(offsets) and offsets[last][1] < span.stop
               and offsets[last + 1][1] > offsets[last + 1][0]
               and offsets[last + 1][0] < span.stop):
            last += 1
    a, b = offsets[first][0], offsets[last][1]
    if a < span.start and text[a:span.start].strip():
        raise InputError(
            f"{what} cannot be located exactly: token {first} {text[a:offsets[first][1]]!r} "
            f"straddles its start (text {span.of(text)!r})")
    if b > span.stop and text[span.stop:b].strip():
        raise InputError(
            f"{what} cannot be located exactly: token {last} {text[offsets[last][0]:b]!r} "
            f"straddles its end (text {span.of(text)!r})")
    covered = set()
    for i in range(first, last + 1):
        covered.update(range(*offsets[i]))
    missing = [c for c in range(span.start, span.stop)
               if c not in covered and not text[c].isspace()]
    if missing:
        raise InputError(f"{what} cannot be located exactly: character {missing[0]} "
                         f"{text[missing[0]]!r} is covered by no token")
    return first, last + 1


def _offsets(tokenizer: Any, text: str, add_special_tokens: bool):
    if not getattr(tokenizer, "is_fast", True):
        raise InputError(f"{type(tokenizer).__name__} is a slow tokenizer without offset "
                         f"mappings; load the fast tokenizer (use_fast=True)")
    encoding = tokenizer(text, add_special_tokens=add_special_tokens,
                         return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    offsets = [tuple(int(x) for x in pair) for pair in encoding["offset_mapping"]]
    return ids, offsets


def tokenize_prompt(
    tokenizer: Any, rendered: RenderedPrompt, *, add_special_tokens: bool = True
) -> PromptTokens:
    """Tokenize a rendered prompt and map its character spans to exact token spans.

    The media placeholder must be a single token (a special token of the tokenizer).
    ``add_special_tokens`` as the family's processor tokenizes (LLaVA: True, adds BOS).
    """
    text = rendered.text
    ids, offsets = _offsets(tokenizer, text, add_special_tokens)
    question, options, option_texts, coarse = prompt_spans(text, offsets, rendered)
    media = None
    if rendered.media is not None:
        hits = [i for i, (a, b) in enumerate(offsets)
                if a == rendered.media.start and b == rendered.media.stop]
        if len(hits) != 1:
            raise InputError(
                f"the media placeholder {rendered.media.of(text)!r} is not one token of "
                f"{type(tokenizer).__name__}; add it as a special token")
        media = hits[0]
    return PromptTokens(torch.tensor([ids], dtype=torch.long), tuple(offsets), question, options,
                        media, rendered, option_texts, coarse)


def prompt_spans(text: str, offsets: Sequence[tuple[int, int]], rendered: RenderedPrompt,
                 shift: int = 0):
    """The token spans of a rendered prompt's question, options ("(A) text"), option texts and
    coarse question, in a tokenization of ``text`` (``rendered.text`` with its character spans
    moved by ``shift``: an adapter that expands the placeholder into text first)."""
    tail = rendered.style.newline_in_spans
    question = token_span(text, offsets, rendered.question.shifted(shift), "question",
                          trailing_whitespace=tail)
    options = tuple(token_span(text, offsets, option.shifted(shift), f"option ({option.label})",
                               trailing_whitespace=tail) for option in rendered.options)
    option_texts = tuple(token_span(text, offsets, option.text_chars.shifted(shift),
                                    f"option ({option.label}) text")
                         for option in rendered.options)
    coarse = None
    if rendered.question_with_options is not None:
        coarse = token_span(text, offsets, rendered.question_with_options.shifted(shift),
                            "question with options", trailing_whitespace=tail)
    return question, options, option_texts, coarse


def answer_token_ids(
    tokenizer: Any, prompt: str, labels: Sequence[str], *, add_special_tokens: bool = True
) -> Int[torch.Tensor, " n_options"]:
    """The token id of each option letter as the model emits it right after ``prompt``.

    ``prompt + letter`` is tokenized; when it starts with the prompt's own tokens and adds exactly
    one, that token is the answer (``"A"`` after "(" for SentencePiece, not ``"▁A"``). When the
    letter merges with the prompt's last token (a byte-level BPE with a ``"(A"`` token), the model
    still continues the prompt's tokens, so the letter's bare vocabulary token is used; it must
    exist and decode to the letter. A letter the tokenizer encodes as its unknown token, or as a
    token that decodes to something else, is an :class:`~mapflow_tl.errors.InputError` naming the
    letter and the tokenizer (its probability would be that of ``<unk>``, and several options
    would share it).
    """
    prompt_ids, _ = _offsets(tokenizer, prompt, add_special_tokens)
    name = f"{type(tokenizer).__name__} {getattr(tokenizer, 'name_or_path', '')!s}".strip()
    answer_ids = []
    for label in labels:
        ids, _ = _offsets(tokenizer, prompt + label, add_special_tokens)
        if ids[:len(prompt_ids)] == prompt_ids and len(ids) == len(prompt_ids) + 1:
            token = int(ids[-1])
            decoded = tokenizer.decode([token]).strip()
            if token == getattr(tokenizer, "unk_token_id", None) or decoded != label:
                raise InputError(
                    f"option letter {label!r} is not a token of the tokenizer {name} (it "
                    f"encodes as {decoded!r}), so its answer cannot be scored; this model can "
                    f"answer only questions whose option letters it has: use fewer options")
            answer_ids.append(token)
            continue
        token = _bare_token(tokenizer, label)
        if token is None:
            raise InputError(
                f"option letter {label!r} after {prompt[-20:]!r} is not a single token of the "
                f"tokenizer {name}, so its probability cannot be read from one logit")
        answer_ids.append(token)
    return torch.tensor(answer_ids, dtype=torch.long)


def _bare_token(tokenizer: Any, label: str) -> int | None:
    """The vocabulary token of ``label`` with no word-start marker, or None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    pieces = backend.model.tokenize(label)
    if len(pieces) != 1:
        return None
    token = pieces[0].id
    if tokenizer.decode([token]).strip() != label:
        return None
    return int(token)
