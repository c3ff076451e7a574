"""Keyword lists for the video-token lens (Map the Flow, Finding 2) and their reduction to the
token the lens can show.

The paper counts, per layer, video positions whose top-1 lens token is a spatial word (objects,
colours) or a temporal word (verbs of change, before/after). The official lists are for TVBench's
Action Sequence task (official ``analysis/logit_lens_analysis.py:24-38``, identical in
``analysis/visualize_logit_lens_vocab_frequency.py:25-39``), shipped here exactly, in order, with
their duplicate ('glass' twice). SynthTV's lists come from its generator.

Matching as the official code does: each keyword is reduced to its **first sub-token**
(``decode(tokenize(word)[0])``, e.g. "tidy" → "tid" on LLaMA's tokenizer), the reduced list is
deduplicated, and a position counts when its decoded top-1 token **equals** a reduced keyword,
case-sensitively (surrounding whitespace ignored: decoding one SentencePiece token drops its "▁",
a byte-level BPE keeps the space).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from .errors import InputError

__all__ = ["ACTION_SEQUENCE_SPATIAL", "ACTION_SEQUENCE_TEMPORAL", "KEYWORD_LISTS",
           "keyword_lists", "first_subtoken", "reduce_keywords"]

#: Official Action Sequence spatial keywords (logit_lens_analysis.py:24-31), 'glass' twice.
ACTION_SEQUENCE_SPATIAL: tuple[str, ...] = (
    "bag", "bed", "blanket", "book", "box", "cabinet", "camera", "clothes", "cup", "glass",
    "bottle", "dish", "door", "floor", "food", "glass", "laptop", "paper", "person", "phone",
    "sandwich", "table",
)
#: Official Action Sequence temporal keywords (logit_lens_analysis.py:32-38).
ACTION_SEQUENCE_TEMPORAL: tuple[str, ...] = (
    "eat", "close", "do", "down", "drink", "hold", "on", "open", "put", "sit", "throw", "tidy",
    "take", "up",
)

#: Named keyword lists for ``mapflow-tl lens --keywords NAME``.
KEYWORD_LISTS = ("action-sequence", "synthtv")


def keyword_lists(name_or_file: str | None = None) -> tuple[list[str], list[str]]:
    """(spatial, temporal) keywords: a name of :data:`KEYWORD_LISTS` (default ``synthtv``) or a
    JSON file ``{"spatial": [...], "temporal": [...]}``."""
    name = name_or_file or "synthtv"
    if name == "action-sequence":
        return list(ACTION_SEQUENCE_SPATIAL), list(ACTION_SEQUENCE_TEMPORAL)
    if name == "synthtv":
        from .synthtv import generator

        return list(generator.SPATIAL_WORDS), list(generator.TEMPORAL_WORDS)
    path = Path(name)
    if not path.suffix == ".json":
        raise InputError(f"keywords {name!r}: choose one of {KEYWORD_LISTS} or a JSON file "
                         f'{{"spatial": [...], "temporal": [...]}}')
    try:
        words = json.loads(path.read_text())
        spatial, temporal = words["spatial"], words["temporal"]
        if not all(isinstance(w, str) and w.strip() for w in [*spatial, *temporal]):
            raise TypeError("every keyword must be a non-empty string")
        return list(spatial), list(temporal)
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise InputError(f"keywords {name}: expected a JSON file "
                         f'{{"spatial": [...], "temporal": [...]}} ({error})') from None


def first_subtoken(tokenizer: Any, word: str) -> str:
    """The decoded first sub-token of ``word`` (official keyword reduction), whitespace
    stripped."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InputError(f"keyword {word!r} tokenizes to nothing")
    reduced = tokenizer.decode([ids[0]]).strip()
    if not reduced:
        # A lone word-start piece ("▁") first: the word's text starts at the next one.
        reduced = tokenizer.decode([ids[1]]).strip() if len(ids) > 1 else ""
    if not reduced:
        raise InputError(f"keyword {word!r}: its first sub-token decodes to nothing")
    return reduced


def reduce_keywords(tokenizer: Any, words: Sequence[str]) -> dict[str, list[str]]:
    """``{first sub-token: [the keywords that reduce to it]}``, sorted by sub-token (the
    official list is deduplicated with ``set`` and sorted)."""
    reduced: dict[str, list[str]] = {}
    for word in words:
        entry = reduced.setdefault(first_subtoken(tokenizer, word), [])
        if word not in entry:
            entry.append(word)
    return dict(sorted(reduced.items()))
