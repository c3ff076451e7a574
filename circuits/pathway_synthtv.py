"""Effective pathway for the SynthTV model organism (``synthtv-video-ft``, 8 layers).

Ranges read off the model's own flow curves (``mapflow-tl flow --model synthtv-video-ft --task
action_antonym --task action_sequence --task scene_transition --task moving_direction --task
object_count --limit 40 --window 3 --circuit vql-to-ql --circuit cross-frame``, seventh session;
1-based window centres): cross-frame knockout hurts in windows centred on L2–4 (Object Count
−59 % relative p(true), Moving Direction −38 %, Action Antonym −36 %), video→question in windows
centred on L1–5, question→last in the late windows L5–8 on every task and also at L1–2 for Action
Sequence (−35 to −40 %) and Scene Transition (−15 %), and — unlike the paper's 7B models —
video→last in windows centred on L4–6 for Action Sequence (−25 to −33 %).

Hence the paper's shape (:func:`~mapflow_tl.circuits.paper_pathway`: cross-frame, then
video→question, then question→last; last→last blocked; video→video blocked after the
video→question range) with two measured departures: question→last stays open from L1, and
video→last stays open in L4–6. ``mapflow-tl prune`` on 40 questions per task (antonym / sequence
/ transition / direction / count; full model 97.5 / 95 / 100 / 97.5 / 97.5): this spec keeps
72 % of the edges and 100 / 97.5 / 100 / 97.5 / 97.5 %; with video→last blocked as in the paper,
Action Sequence falls to 67.5 %; with question→last open only in L4–8 as well, Scene Transition
falls to 5 % (``docs/synthtv.md``, "Seventh session").
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
