"""Anchor words of a generated answer: the tokens whose generation an open-ended flow traces.

The official open-ended script (byminji/map-the-flow,
``analysis/information_flow_analysis_open_ended.py``) takes the verbs of the answer as spaCy's
``en_core_web_lg`` tags them, finds them among the answer's tokens decoded one at a time (a word
is one token, or two tokens decoded and joined), and traces the generation of the n-th one from
its first token. mapflow-tl offers:

- ``"content"`` (default, no dependency): the first tokens of the answer's content words — a word
  start whose text has a letter and is not a function word (:data:`FUNCTION_WORDS`);
- ``"words"``: the answer's tokens matching a user's word list (SynthTV's temporal words), found
  as the official code finds its verbs;
- ``"verbs"``: the official choice, where spaCy and ``en_core_web_lg`` are installed (never
  downloaded here).

Plain Python over a tokenizer; spaCy is imported only for ``"verbs"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .errors import InputError

__all__ = ["Anchor", "ANCHOR_METHODS", "FUNCTION_WORDS", "find_anchors", "spacy_pipeline",
           "spacy_verbs"]

#: How anchors are chosen (module docstring).
ANCHOR_METHODS = ("content", "words", "verbs")

#: English function words that are not anchors under ``"content"``: articles, pronouns,
#: auxiliaries, prepositions and conjunctions — words that carry the grammar, not the answer.
FUNCTION_WORDS = frozenset("""
a an the this that these those it its they them their there here he she him her his we us our
you your i me my is are was were be been being am do does did has have had will would can could
shall should may might must of to in on at by for with from into onto over under about as and or
but not no so than then also very just only some any each all both either neither while when
where which who whom whose what how why if because
""".split())


@dataclass(frozen=True)
class Anchor:
    """An anchor word of an answer: ``index`` of its first token in the answer (0-based),
    ``n_tokens`` tokens long, decoded ``text``."""

    index: int
    n_tokens: int
    text: str


def _decoded(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token decoded on its own, as the official ``decode_tokens``."""
    return [tokenizer.decode([int(i)]) for i in ids]


def _word_starts(tokenizer: Any, ids: Sequence[int]) -> list[bool]:
    """Whether each token begins a word: the text the answer decodes to has whitespace (or
    nothing) right before the token's own text. Decoding prefixes reads the tokenizer's own
    spacing (SentencePiece "▁", byte-level "Ġ", word-level joins) without naming it."""
    starts, before = [], ""
    for position in range(len(ids)):
        upto = tokenizer.decode([int(i) for i in ids[:position + 1]])
        starts.append(not before.strip() or upto[len(before):][:1].isspace()
                      or before[-1:].isspace() or not before[-1:].isalnum())
        before = upto
    return starts


def _match_words(tokenizer: Any, ids: Sequence[int], words: Iterable[str]) -> list[Anchor]:
    """The official matching: a token decoded on its own that is one of ``words`` is an anchor;
    otherwise the token and the next, decoded on their own and joined, may be one. Whitespace
    around a decoded token is ignored (a byte-level token " left" matches "left"; the official
    code compares the raw decoded text, which for SentencePiece tokenizers has none)."""
    bag = {str(word).strip() for word in words if str(word).strip()}
    decoded = [text.strip() for text in _decoded(tokenizer, ids)]
    anchors, position = [], 0
    while position < len(ids):
        if decoded[position] in bag:
            anchors.append(Anchor(position, 1, decoded[position]))
            position += 1
            continue
        if position + 1 < len(ids):
            merged = decoded[position] + decoded[position + 1]
            if merged in bag:
                anchors.append(Anchor(position, 2, merged))
                position += 2
                continue
        position += 1
    return anchors


_SPACY_MODELS: dict[str, Any] = {}


def spacy_pipeline(model: str = "en_core_web_lg") -> Any:
    """spaCy's ``model`` pipeline, loaded once per process (the official script loads it for
    every sample, OE:236: the same tags, slower). Needs spaCy and the model installed; nothing
    is downloaded: without them, a one-line error says how to install them."""
    if model in _SPACY_MODELS:
        return _SPACY_MODELS[model]
    try:
        import spacy
    except ImportError:
        raise InputError("anchors 'verbs' need spaCy: pip install spacy, then python -m spacy "
                         f"download {model}; or use anchors 'content' or 'words'") from None
    try:
        _SPACY_MODELS[model] = spacy.load(model)
    except OSError:
        raise InputError(f"anchors 'verbs' need spaCy's {model!r} model: python -m spacy "
                         f"download {model}; or use anchors 'content' or 'words'") from None
    return _SPACY_MODELS[model]


def spacy_verbs(text: str, model: str = "en_core_web_lg") -> list[str]:
    """The verbs spaCy's ``model`` tags in ``text`` (part of speech ``VERB``), sorted and
    unique — the official bag of verbs (OE:236-251)."""
    return sorted({token.text for token in spacy_pipeline(model)(text) if token.pos_ == "VERB"})


def find_anchors(tokenizer: Any, ids: Sequence[int], method: str = "content", *,
                 words: Sequence[str] | None = None, text: str | None = None) -> list[Anchor]:
    """The anchors of an answer's token ids ``ids``, in order (module docstring): ``method``
    ``"content"`` (first tokens of content words), ``"words"`` (``words`` matched as the
    official code matches its verbs) or ``"verbs"`` (spaCy's verbs of ``text``, the decoded
    answer, matched the same way)."""
    ids = [int(i) for i in ids]
    if method not in ANCHOR_METHODS:
        raise InputError(f"anchor method {method!r} is not one of {ANCHOR_METHODS}")
    if method == "words":
        if not words:
            raise InputError("anchors 'words' need a word list (--anchor-words left ... right)")
        return _match_words(tokenizer, ids, words)
    if method == "verbs":
        text = tokenizer.decode(ids, skip_special_tokens=True) if text is None else text
        return _match_words(tokenizer, ids, spacy_verbs(text))
    decoded = _decoded(tokenizer, ids)
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    return [Anchor(position, 1, decoded[position].strip())
            for position, start in enumerate(_word_starts(tokenizer, ids))
            if start and ids[position] not in special
            and any(c.isalpha() for c in decoded[position])
            and decoded[position].strip().lower() not in FUNCTION_WORDS]
