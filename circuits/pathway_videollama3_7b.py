"""Effective pathway of VideoLLaMA3-7B (Map the Flow, Table 1: 58% of edges kept,
11.4M / 19.9M, TVBench 57.2).

Ranges of the official script (effective_pathway_analysis_videollama3.py, 0-based 0–14 / 5–19 /
20–27, here 1-based): cross-frame kept in L1–15, video→question in L6–20, question→last in
L21–28 of the 28-layer Qwen2.5 backbone; video→last and last→last blocked everywhere,
video→video blocked after L20, question→question never blocked (question→last runs to the last
layer). Cross-frame edges use the frames' extents (their "Time …s:" text and "," included), as
the official code does; docs/paper_parity.md has the edge accounting on the paper's layout.
"""

from mapflow_tl.circuits import paper_pathway

NAME = "pathway-videollama3-7b"
DESCRIPTION = ("effective pathway of VideoLLaMA3-7B: cross-frame 0–14 (L1–15), video→question "
               "5–19 (L6–20), question→last 20–27 (L21–28) (28 layers, official script; blocks "
               "0-based, the paper's 1-based ranges in brackets)")

#: The official random baseline's ratio for this model, the default of ``prune``'s random
#: pruning: ``--random_block_ratio 0.42`` in the official
#: scripts/analysis/effective_pathway_analysis_videollama3.sh:28.
RANDOM_RATIO = 0.42


def pathway(seg, n_layers):
    return paper_pathway(seg, n_layers, cross_frame=(1, 15), video_to_question=(6, 20),
                         question_to_last=(21, 28), circuit=NAME)
