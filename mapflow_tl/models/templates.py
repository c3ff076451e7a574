"""Chat templates: the checkpoint's own (processor or tokenizer), a string given as a load
option, or LLaVA's Vicuna conversation for checkpoints that ship none. The paper's prompt block
that goes inside them is :mod:`mapflow_tl.models.prompt`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from .loading import read_json

__all__ = ["load_chat_template", "vicuna_conversation", "TokenizerWithTemplate"]


def load_chat_template(path: Path, tokenizer: Any) -> str | None:
    """The chat template: the processor's (``chat_template.jinja`` / ``chat_template.json``) or
    the tokenizer's, or None."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    as_json = path / "chat_template.json"
    if as_json.is_file():
        try:
            return read_json(as_json)["chat_template"]
        except KeyError as error:
            raise InputError(f"{as_json} is not a chat template file: {error}") from None
    return getattr(tokenizer, "chat_template", None) or None


def vicuna_conversation(block: str, media: str | None) -> str:
    """LLaVA's Vicuna v1 conversation (used when a checkpoint ships no chat template)."""
    return f"USER: {media}\n{block} ASSISTANT:" if media else f"USER: {block} ASSISTANT:"


class TokenizerWithTemplate:
    """A tokenizer that renders with a given chat template instead of its own, for
    :func:`~mapflow_tl.models.prompt.render_prompt` (the tokenizer itself stays unchanged)."""

    def __init__(self, tokenizer: Any, template: str) -> None:
        self.tokenizer, self.template = tokenizer, template

    def apply_chat_template(self, conversation, **kwargs):
        return self.tokenizer.apply_chat_template(conversation, chat_template=self.template,
                                                  **kwargs)
