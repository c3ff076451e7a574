"""Video / question / last → question / last: where the answer's information flows
(Map the Flow, Fig. 3)."""

from mapflow_tl import edges as E

NAME = "vql-to-ql"
DESCRIPTION = "video→question, video→last, question→last, last→last (Fig. 3)"


def curves(seg, n_layers):
    return {
        "video → question": E.video_to_question(seg),
        "video → last": E.video_to_last(seg),
        "question → last": E.question_to_last(seg),
        "last → last": E.last_to_last(seg),
    }
