"""Splicing a video into a prompt that holds one placeholder token: the video's tokens and their
layout (:class:`VideoTokens`) replace the placeholder, and the SegmentMap follows by construction
(system, frames with their grids, separators, question, options, last)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from jaxtyping import Float, Int

from ..errors import InputError
from ..segments import Frame, Option, SegmentMap, Span
from .prompt import PromptTokens, RenderedPrompt

__all__ = ["VideoTokens", "splice_video", "frame_layout", "square_grid"]


@dataclass
class VideoTokens:
    """A video's tokens in sequence order and what they are.

    ``features[i]`` is the embedding of the i-th video position. ``layout`` lists, in order, the
    pieces the positions are made of: ``("frame", t, (H, W))`` for the H·W tokens of frame t
    (row-major), ``("frame", t, n)`` for n tokens of frame t without a spatial grid, and
    ``("separator", name, n)`` for n tokens between frames that belong to no frame.
    """

    features: Float[torch.Tensor, "n_video d_model"]
    layout: list[tuple[str, Any, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        total = sum(_piece_length(piece) for piece in self.layout)
        if total != self.features.shape[0]:
            raise ValueError(f"video layout covers {total} positions but there are "
                             f"{self.features.shape[0]} video features")

    @property
    def grids(self) -> list[tuple[int, int] | None]:
        return [piece[2] if isinstance(piece[2], tuple) else None
                for piece in self.layout if piece[0] == "frame"]


def _piece_length(piece: tuple[str, Any, Any]) -> int:
    size = piece[2]
    return int(size[0] * size[1]) if isinstance(size, tuple) else int(size)


def splice_video(
    tokens: PromptTokens,
    video: VideoTokens,
    *,
    video_token_id: int,
    embed: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[Int[torch.Tensor, "1 pos"], Float[torch.Tensor, "1 pos d_model"], SegmentMap]:
    """Replace the prompt's placeholder token by the video's positions.

    Returns the expanded input ids (the placeholder repeated, as the HF processors do), the
    embeddings (text tokens through ``embed``, video positions set to ``video.features``) and the
    SegmentMap: ``system`` = everything before the video, frames with their grids, separators,
    question, options ("(A) text", with their text spans), the coarse question and last, all
    shifted by the video's length.
    """
    if tokens.media is None:
        raise InputError("the prompt has no video placeholder to splice the video into")
    ids = tokens.input_ids[0]
    at, n_video = tokens.media, video.features.shape[0]
    expanded = torch.cat([ids[:at], torch.full((n_video,), video_token_id, dtype=ids.dtype),
                          ids[at + 1:]])[None]
    text_ids = expanded.clone()
    text_ids[0, at:at + n_video] = ids[at]  # any valid id; these rows are overwritten
    embeds = embed(text_ids)
    features = video.features.to(embeds.device, embeds.dtype)
    embeds = torch.cat([embeds[:, :at], features[None], embeds[:, at + n_video:]], dim=1)

    shift = n_video - 1

    def moved(span: tuple[int, int]) -> tuple[int, int]:
        start, stop = span
        if start <= at < stop:
            raise ValueError("a text span contains the video placeholder")
        return (start + shift, stop + shift) if start > at else (start, stop)

    frames, separators, cursor = [], [], at
    for kind, key, size in video.layout:
        length = _piece_length((kind, key, size))
        if kind == "frame":
            frames.append(Frame(f"frame_{key}", cursor, cursor + length, index=int(key),
                                grid=size if isinstance(size, tuple) else None))
        elif kind == "separator":
            separators.append(Span(str(key), cursor, cursor + length, "separator"))
        else:
            raise ValueError(f"unknown video layout piece {kind!r}")
        cursor += length
    rendered: RenderedPrompt | None = tokens.rendered
    options = []
    for index, span in enumerate(tokens.options):
        start, stop = moved(span)
        chars = rendered.options[index] if rendered is not None else None
        text_span = {}
        if index < len(tokens.option_texts):
            text_start, text_stop = moved(tokens.option_texts[index])
            text_span = dict(text_start=text_start, text_stop=text_stop)
        options.append(Option(f"option_{chars.label if chars else index}", start, stop,
                              label=chars.label if chars else str(index),
                              text=chars.text if chars else "",
                              is_true=bool(chars.is_true) if chars else False, **text_span))
    q_start, q_stop = moved(tokens.question)
    coarse = None
    if tokens.question_with_options is not None:
        coarse = Span("question_with_options", *moved(tokens.question_with_options), "text")
    n_positions = expanded.shape[1]
    segments = SegmentMap(
        n_positions=n_positions,
        system=Span("system", 0, at, "system") if at > 0 else None,
        video=Span("video", at, at + n_video, "video"),
        frames=tuple(frames),
        separators=tuple(separators),
        question=Span("question", q_start, q_stop, "question"),
        options=tuple(options),
        question_with_options=coarse,
    )
    return expanded, embeds, segments


def frame_layout(n_frames: int, grid: tuple[int, int]) -> list[tuple[str, Any, Any]]:
    """The layout of ``n_frames`` frames of one grid each, no separators."""
    return [("frame", t, grid) for t in range(n_frames)]


def square_grid(n_tokens: int, what: str) -> tuple[int, int]:
    """(s, s) for a square number of tokens per frame."""
    side = int(round(n_tokens ** 0.5))
    if side * side != n_tokens:
        raise InputError(f"{what}: {n_tokens} tokens per frame is not a square grid")
    return side, side
