"""Effective pathway of LLaVA-NeXT-13B-Video-FT (Map the Flow, Table 1: 37% of edges kept,
14.3M / 32.2M, TVBench 54.6).

The paper's reference code moves question→last to L16–30 for the 13B model; the other ranges are
those of the 7B spec (the design notes state no others), with question→question blocked after
question→last ends, as in the 7B spec.
"""

from mapflow_tl.circuits import paper_pathway

NAME = "pathway-llava-next-13b"
DESCRIPTION = ("effective pathway of LLaVA-NeXT-13B-Video-FT: cross-frame L6–15, video→question "
               "L6–20, question→last L16–30 (40 layers)")


def pathway(seg, n_layers):
    return paper_pathway(seg, n_layers, cross_frame=(6, 15), video_to_question=(6, 20),
                         question_to_last=(16, 30), circuit=NAME)
