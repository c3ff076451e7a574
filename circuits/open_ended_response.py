"""What the answer written so far reads (an extension of the official open-ended targets): the
answer's tokens before the last position reading the video, the question and each other."""

from mapflow_tl import edges

NAME = "open-ended-response"
DESCRIPTION = "open-ended answers: video→response, question→response, response→response"


def curves(seg, n_layers):
    return {
        "video → response": edges.video_to_response(seg),
        "question → response": edges.question_to_response(seg),
        "response → response": edges.response_to_response(seg),
    }
