"""Flow into an open-ended answer (Map the Flow appendix): the official open-ended script's
target "vqrl-to-qrl" (analysis/information_flow_analysis_open_ended.py): video → question,
video → non-last response, video → last, question → last and non-last response → last, where
"last" is the answer token before the traced anchor word, "question" the question text alone
and the non-last response leaves its last token open (the official --num_open_tokens 1)."""

from mapflow_tl import edges

NAME = "open-ended"
DESCRIPTION = ("open-ended answers: video→question, video→response, video→last, "
               "question→last, response→last (official vqrl-to-qrl)")

#: The official --num_open_tokens: response tokens right before the last position left open.
OPEN_TOKENS = 1


def curves(seg, n_layers):
    return {
        "video → question": edges.video_to_non_option_question(seg),
        "video → response": edges.video_to_response(seg, open_tokens=OPEN_TOKENS),
        "video → last": edges.video_to_last(seg),
        "question → last": edges.non_option_question_to_last(seg),
        "response → last": edges.response_to_last(seg, open_tokens=OPEN_TOKENS),
    }
