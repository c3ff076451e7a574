"""Effective pathway of LLaVA-NeXT-7B-Video-FT (Map the Flow, Finding 4 and Table 1):
42% of edges kept (10.8M / 25.7M), TVBench 51.2 (−0.3 vs the full model).

Ranges of the official script (effective_pathway_analysis.py, 0-based 5–14 / 5–19 / 15–24, here
1-based): cross-frame L6–15, video→question L6–20, question→last L16–25 of 32 layers;
video→video blocked after L20, question→question after L25. docs/paper_parity.md has the edge
accounting on the paper's layout."""

from mapflow_tl.circuits import paper_pathway

NAME = "pathway-llava-next-7b"
DESCRIPTION = ("effective pathway of LLaVA-NeXT-7B-Video-FT: cross-frame 5–14 (L6–15), "
               "video→question 5–19 (L6–20), question→last 15–24 (L16–25) (32 layers; blocks "
               "0-based, the paper's 1-based ranges in brackets)")

#: The official random baseline's ratio for this model, the default of ``prune``'s random
#: pruning: ``--random_block_ratio 0.58`` in the official
#: scripts/analysis/effective_pathway_analysis_llava_next_7b_video_ft.sh:22.
RANDOM_RATIO = 0.58


def pathway(seg, n_layers):
    return paper_pathway(seg, n_layers, cross_frame=(6, 15), video_to_question=(6, 20),
                         question_to_last=(16, 25), circuit=NAME)
