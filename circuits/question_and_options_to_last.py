"""Which part of the question feeds the answer: question text, true option, false options → last
(Map the Flow, Fig. 4)."""

from mapflow_tl import edges

NAME = "question-and-options-to-last"
DESCRIPTION = "non-option question, true option, false options → last (Fig. 4)"


def curves(seg, n_layers):
    return {
        "non-option question → last": edges.non_option_question_to_last(seg),
        "true option → last": edges.true_option_to_last(seg),
        "false options → last": edges.false_options_to_last(seg),
    }
