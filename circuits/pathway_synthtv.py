"""Effective pathway for the SynthTV model organism (8 layers).

The LLaVA-NeXT-7B spec's ranges (cross-frame L6–15, video→question L6–20, question→last L16–25 of
32) scaled to the model's depth: a range L_a–L_b of 32 becomes L_(⌊(a−1)·n/32⌋+1)–L_⌈b·n/32⌉,
i.e. L2–4, L2–5 and L4–7 for 8 layers. These ranges are scaled, not measured: re-derive them
from SynthTV's own flow curves (``mapflow-tl flow --model synthtv-video-ft``) once the model
solves its temporal tasks (see the model card).
"""

import math

from mapflow_tl.circuits import paper_pathway

NAME = "pathway-synthtv"
DESCRIPTION = ("SynthTV pathway: the 7B ranges scaled to the model's depth (L2–4 / L2–5 / L4–7 "
               "of 8 layers); scaled, not measured")


def _scaled(first: int, last: int, n_layers: int) -> tuple[int, int]:
    return (first - 1) * n_layers // 32 + 1, math.ceil(last * n_layers / 32)


def pathway(seg, n_layers):
    return paper_pathway(seg, n_layers, cross_frame=_scaled(6, 15, n_layers),
                         video_to_question=_scaled(6, 20, n_layers),
                         question_to_last=_scaled(16, 25, n_layers), circuit=NAME)
