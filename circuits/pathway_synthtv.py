"""Effective pathway for the SynthTV model organism (``synthtv-video-ft``, 8 layers).

Ranges read off the model's own flow curves (``mapflow-tl flow --model synthtv-video-ft --task
action_antonym --task moving_direction --task object_count --task scene_transition --limit 40
--window 3 --circuit vql-to-ql --circuit cross-frame``, sixth session; 1-based window centres):
cross-frame knockout hurts only in windows centred on L1–3 (Object Count −57 to −60 % relative
p(true), Action Antonym −36 to −40 %, Scene Transition −30 %, Moving Direction −25 %),
video→question in windows centred on L1–6, question→last at L1–2 and L5–8, and — unlike the
paper's 7B models — video→last in windows centred on L3–5 for Action Antonym and Object Count
(−17 to −27 %).

Hence the paper's shape (:func:`~mapflow_tl.circuits.paper_pathway`: cross-frame, then
video→question, then question→last; last→last blocked; video→video blocked after the
video→question range) with one measured departure: video→last stays open in L3–5. With it blocked
as in the paper, ``mapflow-tl prune`` on 40 questions per task gave Action Antonym 82.5 % and
Object Count 70.0 % (full model 100 / 95); with it open, 100 and 87.5 (``docs/synthtv.md``,
"Sixth session").
"""

from mapflow_tl import edges as E
from mapflow_tl.circuits import layer_range
from mapflow_tl.hooks import PathwaySpec

NAME = "pathway-synthtv"
DESCRIPTION = ("SynthTV pathway, measured on synthtv-video-ft's flow curves: cross-frame L1–3, "
               "video→question L1–6, question→last L1–8, video→last L3–5 (8 layers)")


def pathway(seg, n_layers):
    def layers(first, last):
        return layer_range(first, last, n_layers, circuit=NAME)

    return (PathwaySpec(n_layers)
            .keep(E.cross_frame(seg), layers(1, 3))
            .keep(E.video_to_question(seg), layers(1, 6))
            .keep(E.question_to_last(seg), layers(1, 8))
            .keep(E.video_to_last(seg), layers(3, 5))
            .block(E.last_to_last(seg), range(n_layers))
            .block(E.video_to_video(seg), range(6, n_layers)))
