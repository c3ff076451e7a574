"""Effective pathway for the SynthTV model organism (``synthtv-video-ft``, 8 layers).

The paper's shape (:func:`~mapflow_tl.circuits.paper_pathway`) with ranges read off the model's own
flow curves (``mapflow-tl flow --model synthtv-video-ft --task action_antonym --task
moving_direction --task object_count --limit 40 --window 3 --circuit vql-to-ql --circuit
cross-frame``, fifth session; 1-based layers): cross-frame knockout hurts Object Count only in
windows containing L4 (−24 % relative p(true); Action Antonym and Moving Direction do not use
cross-frame edges at all), video→question matters in L1–2 (antonym, direction) and L3–6 (count),
question→last at L1 and L5–8. Hence cross-frame L3–5, video→question L1–6, question→last L1–8;
video→last and last→last are blocked in every layer.

Measured with ``mapflow-tl prune`` (40 questions per task; 75 % of edges kept): Action Antonym
97.5 % (full 100, random pruning of as many edges per layer 55.0), Moving Direction 100 (full 100,
random 70.0), Object Count 82.5 (full 100, random 70.0). Object Count also reads the video directly
at the last position in L4–8 (video→last −9 to −14 %), which the paper's shape blocks.
"""

from mapflow_tl.circuits import paper_pathway

NAME = "pathway-synthtv"
DESCRIPTION = ("SynthTV pathway, measured on synthtv-video-ft's flow curves: cross-frame L3–5, "
               "video→question L1–6, question→last L1–8 (8 layers)")


def pathway(seg, n_layers):
    return paper_pathway(seg, n_layers, cross_frame=(3, 5), video_to_question=(1, 6),
                         question_to_last=(1, 8), circuit=NAME)
