"""How the true option gathers video evidence (Map the Flow, Fig. 4)."""

from mapflow_tl import edges

NAME = "vq-to-true-opt"
DESCRIPTION = "video→non-option question, non-option question→true option, video→true option"


def curves(seg, n_layers):
    return {
        "video → non-option question": edges.video_to_non_option_question(seg),
        "non-option question → true option": edges.non_option_question_to_true_option(seg),
        "video → true option": edges.video_to_true_option(seg),
    }
