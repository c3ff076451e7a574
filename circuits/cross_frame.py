"""Cross-frame interaction among video tokens (Map the Flow, Finding 1)."""

from mapflow_tl import edges

NAME = "cross-frame"
DESCRIPTION = "video tokens of frame t ≥ 1 attending to earlier frames (Finding 1)"


def curves(seg, n_layers):
    return {"cross-frame": edges.cross_frame(seg)}
