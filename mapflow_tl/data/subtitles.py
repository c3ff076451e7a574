"""Subtitles of long-video benchmarks, read from their published files and chosen for the
frames a model sees, as each benchmark's official evaluation chooses them.

- Video-MME (``subtitle/<videoID>.srt``; lmms-eval ``lmms_eval/tasks/videomme/utils.py``,
  ``videomme_doc_to_text_subtitle``): a cue is kept when a sampled frame index ``f`` satisfies
  ``int(start * fps) <= f < int(end * fps)``; its text is what the cue wraps in
  ``<font color="white" size=".72c">…</font>`` (a cue without that wrapper is left out, as in the
  official regex); the kept lines, one per line, follow "This video's subtitles are listed
  below: \\n". A video without a subtitle file gets "No subtitles available".
- LongVideoBench (``subtitles/<subtitle_path>``, a JSON list of ``{"start", "end", "line"}``
  with "HH:MM:SS.mmm" times or ``{"timestamp": [start, end], "text"}``; official
  ``insert_subtitles_into_frames``): times are shifted by the entry's
  ``starting_timestamp_for_subtitles``; a cue shorter than 1 s is widened to 1 s around its
  middle; a cue is kept when a sampled frame time lies strictly inside it. The official code
  interleaves the kept lines between the frames; mapflow-tl puts them, in order, before the
  question (:meth:`Subtitles.context`; docs/paper_parity.md).

Subtitles are off by default (``load_dataset(subtitles=True)``, ``--subtitles``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import DataError

__all__ = ["Cue", "Subtitles", "read_srt", "read_longvideobench_subtitles",
           "VIDEOMME_SUBTITLE_HEADER", "VIDEOMME_NO_SUBTITLES"]

#: The official Video-MME subtitle prompt's first line (lmms-eval), its trailing space included.
VIDEOMME_SUBTITLE_HEADER = "This video's subtitles are listed below: \n"
#: What the official Video-MME prompt says for a video without a subtitle file.
VIDEOMME_NO_SUBTITLES = "No subtitles available"
_FONT = re.compile(r'<font color="white" size=".72c">(.*?)</font>')
_SRT_TIME = re.compile(r"^(\d+):(\d\d):(\d\d),(\d{1,3})$")


@dataclass(frozen=True)
class Cue:
    """One subtitle: ``start``/``end`` in seconds from the start of the video, its ``text``."""

    start: float
    end: float
    text: str


def _srt_seconds(value: str, path: Path, block: int) -> float:
    match = _SRT_TIME.match(value.strip())
    if match is None:
        raise DataError(f"{path}: subtitle block {block}: time {value.strip()!r} is not "
                        f"HH:MM:SS,mmm; fix or re-download the subtitle file", path=path,
                        field="subtitles")
    h, m, s, ms = match.groups()
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def read_srt(path: str | Path) -> list[Cue]:
    """The cues of an .srt file as the official Video-MME code reads them: blocks separated by a
    blank line, each ``index / "start --> end" / text lines`` (text lines joined by a space).
    Raises a one-line :class:`DataError` naming the file and block for a block it cannot read."""
    path = Path(path)
    try:
        content = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: subtitle file not found", path=path,
                        field="subtitles") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the subtitle file ({error}); it must be UTF-8 "
                        f"text: re-download it", path=path, field="subtitles") from None
    cues = []
    for block, section in enumerate(content.replace("\r\n", "\n").split("\n\n"), start=1):
        if not section.strip():
            continue
        lines = section.strip("\n").split("\n")
        if len(lines) < 3 or " --> " not in lines[1]:
            raise DataError(f"{path}: subtitle block {block} is not 'index / start --> end / "
                            f"text': {section.strip()[:60]!r}; fix or re-download the file",
                            path=path, field="subtitles")
        start, end = lines[1].split(" --> ", 1)
        cues.append(Cue(_srt_seconds(start, path, block), _srt_seconds(end, path, block),
                        " ".join(lines[2:])))
    return cues


def _hms_seconds(value: object, path: Path, index: int) -> float:
    parts = str(value).split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        return int(parts[0]) * 3600 + int(parts[1]) * 60 + float(parts[2])
    except ValueError:
        raise DataError(f"{path}: subtitle entry {index}: time {value!r} is not HH:MM:SS.mmm; "
                        f"fix or re-download the file", path=path, field="subtitles") from None


def read_longvideobench_subtitles(path: str | Path, duration: float) -> list[Cue]:
    """The cues of a LongVideoBench subtitle JSON file, times in the file's own clock: entries
    ``{"start", "end", "line"}`` ("HH:MM:SS.mmm") or ``{"timestamp": [start, end], "text"}``
    (an end that is not a number — the official code tests ``isinstance(end, float)`` —
    becomes ``duration``)."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: subtitle file not found", path=path,
                        field="subtitles") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: cannot read the subtitle JSON ({error}); re-download it",
                        path=path, field="subtitles") from None
    if not isinstance(entries, list):
        raise DataError(f"{path}: expected a JSON list of subtitles, got "
                        f"{type(entries).__name__}", path=path, field="subtitles")
    cues = []
    for index, entry in enumerate(entries):
        if isinstance(entry, dict) and "timestamp" in entry and "text" in entry:
            stamp = entry["timestamp"]
            if not (isinstance(stamp, (list, tuple)) and len(stamp) == 2
                    and isinstance(stamp[0], (int, float))):
                raise DataError(f"{path}: subtitle entry {index}: timestamp {stamp!r} is not "
                                f"[start, end]", path=path, field="subtitles")
            end = stamp[1] if isinstance(stamp[1], float) else float(duration)
            cues.append(Cue(float(stamp[0]), end, str(entry["text"])))
        elif isinstance(entry, dict) and {"start", "end", "line"} <= set(entry):
            cues.append(Cue(_hms_seconds(entry["start"], path, index),
                            _hms_seconds(entry["end"], path, index), str(entry["line"])))
        else:
            raise DataError(f"{path}: subtitle entry {index} has neither start/end/line nor "
                            f"timestamp/text: {str(entry)[:60]}", path=path, field="subtitles")
    return cues


@dataclass(frozen=True)
class Subtitles:
    """A sample's subtitle track and the rule that picks its lines for sampled frames.

    ``style`` is "videomme" (an .srt file; ``path`` None: the video has none) or
    "longvideobench" (a JSON file; ``offset`` = the entry's ``starting_timestamp_for_subtitles``,
    ``duration`` its length in seconds).
    """

    style: str
    path: Path | None
    offset: float = 0.0
    duration: float | None = None

    def lines(self, indices: Sequence[int], fps: float) -> list[str]:
        """The subtitle lines the official evaluation keeps for frames at 0-based ``indices``
        [T] of a video at ``fps`` (module docstring), in the file's order."""
        if self.path is None:
            return []
        indices = np.asarray(indices, dtype=np.int64)
        if self.style == "videomme":
            kept = []
            for cue in read_srt(self.path):
                first, stop = int(cue.start * fps), int(cue.end * fps)
                if np.any((indices >= first) & (indices < stop)):
                    match = _FONT.search(cue.text)
                    if match is not None:
                        kept.append(match.group(1))
            return kept
        if self.style == "longvideobench":
            times = indices.astype(np.float64) / fps
            kept = []
            duration = self.duration if self.duration is not None else float("inf")
            for cue in read_longvideobench_subtitles(self.path, duration):
                start, end = cue.start - self.offset, cue.end - self.offset
                if end - start < 1:
                    middle = (start + end) / 2
                    start, end = middle - 0.5, middle + 0.5
                if np.any((times > start) & (times < end)):
                    kept.append(cue.text)
            return kept
        raise DataError(f"unknown subtitle style {self.style!r}", field="subtitles")

    def context(self, indices: Sequence[int], fps: float) -> str:
        """The text put before the question for frames at ``indices`` (0-based) of a video at
        ``fps``: Video-MME's official block (header, lines or "No subtitles available") or
        LongVideoBench's kept lines, one per line (not interleaved: docs/paper_parity.md)."""
        lines = self.lines(indices, fps)
        if self.style == "videomme":
            return VIDEOMME_SUBTITLE_HEADER + ("\n".join(lines) if self.path is not None
                                               else VIDEOMME_NO_SUBTITLES)
        return "\n".join(lines)
