"""Effective pathway of LLaVA-NeXT-13B-Video-FT (Map the Flow, Table 1: 37% of edges kept,
14.3M / 32.2M, TVBench 54.6).

Ranges of the official script (effective_pathway_analysis.py, 0-based 5–14 / 5–19 / 15–29, here
1-based): cross-frame L6–15, video→question L6–20, question→last L16–30 of 40 layers;
video→video blocked after L20, question→question after L30.
"""

from mapflow_tl.circuits import paper_pathway

NAME = "pathway-llava-next-13b"
DESCRIPTION = ("effective pathway of LLaVA-NeXT-13B-Video-FT: cross-frame 5–14 (L6–15), "
               "video→question 5–19 (L6–20), question→last 15–29 (L16–30) (40 layers; blocks "
               "0-based, the paper's 1-based ranges in brackets)")

#: The official random baseline's ratio for this model, the default of ``prune``'s random
#: pruning: ``--random_block_ratio 0.63`` in the official
#: scripts/analysis/effective_pathway_analysis_llava_next_13b_video_ft.sh:22.
RANDOM_RATIO = 0.63


def pathway(seg, n_layers):
    return paper_pathway(seg, n_layers, cross_frame=(6, 15), video_to_question=(6, 20),
                         question_to_last=(16, 30), circuit=NAME)
