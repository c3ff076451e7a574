"""Effective pathway of Mini-InternVL-4B-Video-FT (Map the Flow, Table 1: 40% of edges kept,
29.6M / 74.6M, TVBench 56.0).

Ranges of the official script (effective_pathway_analysis.py, 0-based 5–14 / 5–19 / 10–29, here
1-based): cross-frame L6–15, video→question L6–20, question→last L11–30 of 32 layers;
video→video blocked after L20, question→question after L30.
"""

from mapflow_tl.circuits import paper_pathway

NAME = "pathway-mini-internvl-4b"
DESCRIPTION = ("effective pathway of Mini-InternVL-4B-Video-FT: cross-frame 5–14 (L6–15), "
               "video→question 5–19 (L6–20), question→last 10–29 (L11–30) (32 layers; blocks "
               "0-based, the paper's 1-based ranges in brackets)")

#: The official random baseline's ratio for this model, the default of ``prune``'s random
#: pruning: ``--random_block_ratio 0.6`` in the official
#: scripts/analysis/effective_pathway_analysis_mini_internvl_4b_video_ft.sh:22.
RANDOM_RATIO = 0.6


def pathway(seg, n_layers):
    return paper_pathway(seg, n_layers, cross_frame=(6, 15), video_to_question=(6, 20),
                         question_to_last=(11, 30), circuit=NAME)
