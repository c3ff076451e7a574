"""Effective pathway of Mini-InternVL-4B-Video-FT (Map the Flow, Table 1: 40% of edges kept,
29.6M / 74.6M, TVBench 56.0).

The paper's reference code uses question→last L11–30 for InternVL; the other ranges are those of
the 7B spec (the design notes state no others).
"""

from mapflow_tl.circuits import paper_pathway

NAME = "pathway-mini-internvl-4b"
DESCRIPTION = ("effective pathway of Mini-InternVL-4B-Video-FT: cross-frame L6–15, "
               "video→question L6–20, question→last L11–30 (32 layers)")


def pathway(seg, n_layers):
    return paper_pathway(seg, n_layers, cross_frame=(6, 15), video_to_question=(6, 20),
                         question_to_last=(11, 30), circuit=NAME)
