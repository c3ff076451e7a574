"""Effective pathway of LLaVA-NeXT-7B-Video-FT (Map the Flow, Finding 4 and Table 1):
42% of edges kept (10.8M / 25.7M), TVBench 51.2 (−0.3 vs the full model)."""

from mapflow_tl.circuits import paper_pathway

NAME = "pathway-llava-next-7b"
DESCRIPTION = ("effective pathway of LLaVA-NeXT-7B-Video-FT: cross-frame L6–15, video→question "
               "L6–20, question→last L16–25 (32 layers)")


def pathway(seg, n_layers):
    return paper_pathway(seg, n_layers, cross_frame=(6, 15), video_to_question=(6, 20),
                         question_to_last=(16, 25), circuit=NAME)
