"""Effective pathway for the SynthTV model organism (``synthtv-video-ft``, 8 layers).

The paper's shape (:func:`~mapflow_tl.circuits.paper_pathway`) with ranges read off the model's own
flow curves (``mapflow-tl flow --model synthtv-video-ft --task action_antonym --task
moving_direction --limit 40 --window 3 --circuit vql-to-ql --circuit cross-frame``, fifth
session): cross-frame knockout hurts only in windows covering layer 3 (1-based; −26 to −28 %
relative p(true)), video→question in windows covering L3–L4, question→last at L1 and at L5–L7.
Hence cross-frame L2–4, video→question L2–5, question→last L1–7 (contiguous, as the paper's
shape has it); video→last and last→last are blocked in every layer.

Measured with ``mapflow-tl prune`` (40 questions per task): 61 % of edges kept; Action Antonym
75.0 % (full 100, random pruning of as many edges 27.5), Moving Direction 85.0 % (full 97.5,
random 27.5). The model also reads the video directly at the last position around L4 (video→last
−8 %), which the paper's shape blocks; keeping it there gives 87.5 / 85.0 % (docs/synthtv.md).
"""

from mapflow_tl.circuits import paper_pathway

NAME = "pathway-synthtv"
DESCRIPTION = ("SynthTV pathway, measured on synthtv-video-ft's flow curves: cross-frame L2–4, "
               "video→question L2–5, question→last L1–7 (8 layers)")


def pathway(seg, n_layers):
    return paper_pathway(seg, n_layers, cross_frame=(2, 4), video_to_question=(2, 5),
                         question_to_last=(1, 7), circuit=NAME)
