"""Effective pathway for the SynthTV model organism (``synthtv-video-ft``, 8 layers).

Ranges read off the model's own flow curves (``mapflow-tl flow --model synthtv-video-ft --task
action_antonym --task action_sequence --task scene_transition --task moving_direction --task
object_count --limit 40 --window 3 --circuit vql-to-ql --circuit cross-frame``; 1-based window
centres; first derived in the seventh session, re-measured on every retrained model since; these
figures: the ninth session's): video→question hurts in windows centred on L1–5 on every task
(Moving Direction −63 to −64 % relative p(true) at L1–2, Action Antonym −54 to −58 %, Object
Count −37 to −41 %, Action Sequence −33 to −41 % at L3–4), question→last in the late windows
L6–8 on every task and also at L1–2 for Scene Transition (−56 %), cross-frame in windows centred
on L1–3 for Action Sequence (−36.5 to −46.6 %; the other tasks ≤ 2.5 %), and — unlike the paper's
7B models — video→last in windows centred on L1–2 for Scene Transition (−6 and −13 %; in the
eighth session's model it was Object Count at L4–6).

Hence the paper's shape (:func:`~mapflow_tl.circuits.paper_pathway`: cross-frame, then
video→question, then question→last; last→last blocked; video→video blocked after the
video→question range) with two measured departures: question→last stays open from L1, and
video→last stays open in L1–3. ``mapflow-tl prune`` on 40 questions per task (antonym / sequence
/ transition / direction / count; full model 100 / 97.5 / 100 / 100 / 100): this spec keeps
72 % of the edges and 100 / 97.5 / 100 / 100 / 100 %, random pruning of as many edges 25 / 82.5
/ 5 / 37.5 / 10 %; with question→last open only in L5–8 and video→last blocked, as in the paper,
Action Antonym falls to 42.5 %, Action Sequence to 0 % and Scene Transition to 2.5 %; with
video→last open in L4–6 instead of L1–3 (the eighth session's spec), Scene Transition falls to
85 % (``docs/synthtv.md``, "Ninth session").
"""

from mapflow_tl import edges as E
from mapflow_tl.circuits import layer_range
from mapflow_tl.hooks import PathwaySpec

NAME = "pathway-synthtv"
DESCRIPTION = ("SynthTV pathway, measured on synthtv-video-ft's flow curves: cross-frame L1–4, "
               "video→question L1–5, question→last L1–8, video→last L1–3 (8 layers)")


def pathway(seg, n_layers):
    def layers(first, last):
        return layer_range(first, last, n_layers, circuit=NAME)

    return (PathwaySpec(n_layers)
            .keep(E.cross_frame(seg), layers(1, 4))
            .keep(E.video_to_question(seg), layers(1, 5))
            .keep(E.question_to_last(seg), layers(1, 8))
            .keep(E.video_to_last(seg), layers(1, 3))
            .block(E.last_to_last(seg), range(n_layers))
            .block(E.video_to_video(seg), range(5, n_layers)))
