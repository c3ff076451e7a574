"""Layer selection: which layers an intervention acts in.

Plain Python (no torch), so the command line can offer the window styles without loading a model.
Layers are 0-based block indices throughout the library; the paper writes 1-based, inclusive
ranges ("L6–15"), which :func:`layer_range` converts.
"""

from __future__ import annotations

import warnings

from .errors import InputError

__all__ = ["WINDOW_STYLES", "check_layer", "window", "layer_range", "early_to_middle_layers",
           "default_window_size", "window_rule", "covers_every_layer", "attention_map_layers",
           "integration_layers"]

WINDOW_STYLES = ("center", "inverse", "top_down", "bottom_up")


def check_layer(layer: object, n_layers: int, what: str = "layer") -> int:
    """``layer`` itself when it is an int in ``[0, n_layers)``; otherwise a ValueError naming it."""
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise InputError(f"{what} must be an int, got {layer!r}")
    if not 0 <= layer < n_layers:
        raise InputError(f"{what} {layer} is outside [0, {n_layers}) of a {n_layers}-layer model")
    return layer


def window(center: int, *, n_layers: int, k: int | None = None,
           style: str = "center") -> list[int]:
    """The layers knocked out for one point of a layer sweep (Map the Flow §2, "Window").

    ``k`` defaults to the official 9, scaled to the depth only below 18 layers
    (:func:`default_window_size`). A centred window that covers every layer of the model blocks
    the same layers at every centre, so a sweep over it is flat: that draws a warning with the
    fix.

    - ``center``: the k layers centred on ``center``, clipped to the model:
      ``max(0, center - k//2) … min(n_layers - 1, center + (k - 1)//2)`` (k = 9: l−4 … l+4);
    - ``inverse``: every layer except that centred window;
    - ``top_down``: ``center … n_layers - 1``;
    - ``bottom_up``: ``0 … center``.
    """
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers <= 0:
        raise InputError(f"n_layers must be a positive int, got {n_layers!r}")
    check_layer(center, n_layers, "window center")
    if k is None:
        k = default_window_size(n_layers)
    if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
        raise InputError(f"window size k must be a positive int, got {k!r}")
    if style not in WINDOW_STYLES:
        raise InputError(f"unknown window style {style!r}; choose one of {WINDOW_STYLES}")
    lo, hi = max(0, center - k // 2), min(n_layers - 1, center + (k - 1) // 2)
    if style == "center":
        layers = list(range(lo, hi + 1))
        if covers_every_layer(k, n_layers):
            warnings.warn(f"a window of k={k} layers covers all {n_layers} layers of the model, "
                          f"so every window centre knocks out the same layers; use "
                          f"k={default_window_size(n_layers)} (the default for this depth) or "
                          f"fewer", stacklevel=2)
    elif style == "inverse":
        layers = [layer for layer in range(n_layers) if not lo <= layer <= hi]
    elif style == "top_down":
        layers = list(range(center, n_layers))
    else:
        layers = list(range(0, center + 1))
    if not layers:
        raise InputError(
            f"window center={center}, k={k}, style={style!r} covers no layer of a "
            f"{n_layers}-layer model"
        )
    return layers


def covers_every_layer(k: int, n_layers: int) -> bool:
    """Whether a centred window of ``k`` layers blocks every layer of an ``n_layers``-deep model
    at every centre — a flat sweep, whatever the pathway."""
    return k >= n_layers > 1


def layer_range(first: int, last: int, n_layers: int | None = None, *,
                circuit: str = "") -> range:
    """0-based layers for the paper's 1-based, inclusive "L{first}–{last}" (``layer_range(6,
    15)`` = ``range(5, 15)``), checked against the model's depth when ``n_layers`` is given."""
    for name, value in (("first", first), ("last", last)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"layer_range {name} must be an int (1-based, as the paper writes "
                             f"L6–15), got {value!r}")
    if not 1 <= first <= last:
        raise InputError(f"{circuit or 'circuit'}: layers L{first}–{last} are not a range of the "
                         f"paper's 1-based layers (layers count from 1, first <= last)")
    if n_layers is not None and last > n_layers:
        raise InputError(f"{circuit or 'circuit'}: layers L{first}–{last} (1-based) do not fit a "
                         f"{n_layers}-layer model")
    return range(first - 1, last)


def early_to_middle_layers(n_layers: int) -> list[int]:
    """The paper's early-to-middle block for cross-frame knockout (Finding 1): layers 1–16 of 32
    (1-based), i.e. the first half of the model, scaled to its depth (0-based indices)."""
    return list(range(0, max(1, n_layers // 2)))


def integration_layers(n_layers: int) -> dict[str, list[int]]:
    """The mid-late layers where the paper's 7B effective pathway keeps each integration path
    (Finding 4: video → question in L6–20, question → last in L16–25 of 32, 1-based), scaled to
    the depth: 0-based ``[⌊5L/32⌋, ⌈20L/32⌉)`` and ``[⌊15L/32⌋, ⌈25L/32⌉)``. The failure
    diagnosis compares a wrong sample's knockout curves with the correct samples' here."""
    def scaled(first: int, stop: int) -> list[int]:
        lower, upper = first * n_layers // 32, -(-stop * n_layers // 32)
        return list(range(min(lower, n_layers - 1), max(min(upper, n_layers), lower + 1)))

    return {"video → question": scaled(5, 20), "question → last": scaled(15, 25)}


#: Below this depth the official k = 9 no longer fits the model (at 8 layers it would cover every
#: layer, a flat sweep): the window is then the paper's 9 of 32 layers scaled to the depth.
OFFICIAL_WINDOW, OFFICIAL_WINDOW_MIN_LAYERS = 9, 18


def attention_map_layers(n_layers: int) -> list[int]:
    """The layers the official attention figure shows: 0-based 10 … 19 of 32, labelled 11–20
    (analysis/attention_visualization.py:501-506), scaled to ``n_layers`` (28 layers: 9 … 17;
    8 layers: 3 … 4)."""
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers <= 0:
        raise InputError(f"n_layers must be a positive int, got {n_layers!r}")
    first = (10 * n_layers + 16) // 32
    stop = max(first + 1, (20 * n_layers + 16) // 32)
    return list(range(min(first, n_layers - 1), min(stop, n_layers)))


def default_window_size(n_layers: int) -> int:
    """The knockout window for a model of this depth: the official k = 9 on every model with at
    least 18 layers (information_flow_analysis.py:66 ``--window 9`` on LLaVA-NeXT-7B/13B,
    Mini-InternVL-4B; information_flow_analysis_videollama3.py:119 ``window = 9``); below 18
    layers the paper's 9 of 32 (28 %) scaled to ``n_layers`` and rounded to the nearest odd
    number, so the window stays centred (17 layers: 5; 8: 3; 4: 1)."""
    if n_layers >= OFFICIAL_WINDOW_MIN_LAYERS:
        return OFFICIAL_WINDOW
    scaled = 9 * n_layers / 32
    return max(1, 2 * round((scaled - 1) / 2) + 1)


def window_rule(n_layers: int, k: int | None = None) -> str:
    """How a run's window size was chosen, as run.json and the report header state it: ``k``
    given by the user, or the default for ``n_layers`` and why."""
    if k is not None:
        return f"k = {k} (--window)"
    if n_layers >= OFFICIAL_WINDOW_MIN_LAYERS:
        return (f"k = {OFFICIAL_WINDOW} (official, every model with >= "
                f"{OFFICIAL_WINDOW_MIN_LAYERS} layers)")
    return (f"k = {default_window_size(n_layers)} (the paper's 9 of 32 layers scaled to "
            f"{n_layers} layers, below {OFFICIAL_WINDOW_MIN_LAYERS})")
