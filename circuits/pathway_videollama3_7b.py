"""Effective pathway of VideoLLaMA3-7B (Map the Flow, Table 1: 58% of edges kept,
11.4M / 19.9M, TVBench 57.2).

The design notes give no VideoLLaMA3-specific ranges, so this circuit uses the 7B spec's
(L6–15, L6–20, L16–25) on the 28-layer Qwen2.5 backbone; compare its retained fraction with the
paper's 58% before relying on it.
"""

from mapflow_tl.circuits import paper_pathway

NAME = "pathway-videollama3-7b"
DESCRIPTION = ("effective pathway for VideoLLaMA3-7B: the 7B ranges L6–15 / L6–20 / L16–25 on 28 "
               "layers (ranges not stated by the paper's notes)")


def pathway(seg, n_layers):
    return paper_pathway(seg, n_layers, cross_frame=(6, 15), video_to_question=(6, 20),
                         question_to_last=(16, 25), circuit=NAME)
