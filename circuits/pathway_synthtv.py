"""Effective pathway for the SynthTV model organism (``synthtv-video-ft``, 8 layers).

The ranges are read off the model's own flow curves (``mapflow-tl flow --model synthtv-video-ft
--limit 40 --window 3 --circuit vql-to-ql --circuit cross-frame`` over the five temporal tasks):
the paper's shape (:func:`~mapflow_tl.circuits.paper_pathway`) with two measured departures,
question→last open from L1 and video→last open in L1–3, because this model reads the video from
the last position early on Scene Transition. The curves, the pruning results and the variants
that failed are in docs/synthtv.md, "The measured pathway". Those figures (72 % of edges) were
measured with the wide question span (every position between video and last); with the official
coarse question ("Question:" through the last option, the default since issue 23) the same ranges
keep 77.3–78.1 % of the edges and the full model's accuracy on 40 questions per task
(100 / 97.5 / 100 / 100 / 100; random official-uniform baseline, 3 seeds: 71.7 / 87.5 / 36.7 / 50.8
/ 55.0 for antonym / sequence / direction / count / transition).
"""

from mapflow_tl import edges as E
from mapflow_tl.layers import layer_range
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
