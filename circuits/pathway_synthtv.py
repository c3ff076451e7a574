"""Effective pathway for the SynthTV model organism (``synthtv-video-ft``, 8 layers).

Ranges read off the model's own flow curves (``mapflow-tl flow --model synthtv-video-ft --task
action_antonym --task action_sequence --task scene_transition --task moving_direction --task
object_count --limit 40 --window 3 --circuit vql-to-ql --circuit cross-frame``; 1-based window
centres; first derived in the seventh session, re-measured on the eighth session's retrained
model): cross-frame knockout hurts in windows centred on L1–3 (Object Count −56 to −59 %
relative p(true), Action Sequence −15 to −22 %, Moving Direction −14 to −20 %), video→question
in windows centred on L1–5, question→last in the late windows L6–8 on every task and also at
L1–3 for Scene Transition (−53 to −63 %), and — unlike the paper's 7B models — video→last in
windows centred on L4–6 for Object Count (−24 to −26 %; Action Sequence in the seventh session's
model).

Hence the paper's shape (:func:`~mapflow_tl.circuits.paper_pathway`: cross-frame, then
video→question, then question→last; last→last blocked; video→video blocked after the
video→question range) with two measured departures: question→last stays open from L1, and
video→last stays open in L4–6. ``mapflow-tl prune`` on 40 questions per task (antonym / sequence
/ transition / direction / count; full model 97.5 / 100 / 100 / 100 / 100): this spec keeps
72 % of the edges and 97.5 / 100 / 100 / 100 / 100 %, random pruning of as many edges 25 / 40 /
72.5 / 20 / 22.5 %; with question→last open only in L5–8 and video→last blocked, as in the
paper, Action Sequence falls to 5 %, Scene Transition to 0 % and Object Count to 40 %; with
question→last from L1 but video→last blocked, Object Count falls to 80 % (``docs/synthtv.md``,
"Eighth session").
"""

from mapflow_tl import edges as E
from mapflow_tl.circuits import layer_range
from mapflow_tl.hooks import PathwaySpec

NAME = "pathway-synthtv"
DESCRIPTION = ("SynthTV pathway, measured on synthtv-video-ft's flow curves: cross-frame L1–4, "
               "video→question L1–5, question→last L1–8, video→last L4–6 (8 layers)")


def pathway(seg, n_layers):
    def layers(first, last):
        return layer_range(first, last, n_layers, circuit=NAME)

    return (PathwaySpec(n_layers)
            .keep(E.cross_frame(seg), layers(1, 4))
            .keep(E.video_to_question(seg), layers(1, 5))
            .keep(E.question_to_last(seg), layers(1, 8))
            .keep(E.video_to_last(seg), layers(4, 6))
            .block(E.last_to_last(seg), range(n_layers))
            .block(E.video_to_video(seg), range(5, n_layers)))
