"""Video / question / last → question / last: where the answer's information flows
(Map the Flow, Fig. 3)."""

from mapflow_tl import edges

NAME = "vql-to-ql"
DESCRIPTION = "video→question, video→last, question→last, last→last (Fig. 3)"


def curves(seg, n_layers):
    return {
        "video → question": edges.video_to_question(seg),
        "video → last": edges.video_to_last(seg),
        "question → last": edges.question_to_last(seg),
        "last → last": edges.last_to_last(seg),
    }
