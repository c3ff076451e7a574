"""mapflow-tl: map how information flows inside Video Large Language Models.

Attention Knockout, Logit Lens and effective-pathway pruning (Map the Flow, ICLR 2026) as small,
composable TransformerLens hooks over an annotated map of the token sequence.

    import mapflow_tl as mf
    seg = x.segments                                   # frames, question, options, last
    cut = mf.cross_frame(seg) | mf.Edges(src=seg.video, dst=seg.question)
    hooks = mf.knockout(cut, layers=mf.window(10, k=9, n_layers=32))
"""

from .edges import (
    Edges,
    causal_edge_count,
    cross_frame,
    false_options_to_last,
    intra_frame,
    last_to_last,
    non_option_question_to_last,
    non_option_question_to_true_option,
    question_to_last,
    question_to_question,
    question_to_video,
    true_option_to_last,
    video_to_last,
    video_to_non_option_question,
    video_to_question,
    video_to_true_option,
    video_to_video,
)
from .engine import KnockoutConfig, layer_sweep, sweep
from .hooks import (
    KnockoutHook,
    PathwaySpec,
    attn_scores_hook_name,
    capture,
    check_hooks,
    knockout,
    random_knockout,
    window,
)
from .lens import answer_probability_trace, logit_lens, project, residual_stream, top_tokens
from .metrics import relative_change
from .models import Prepared, VideoLLM, VideoSample, load_videollm, supported_architectures
from .models.backbone import hooked_from_hf, run_from_embeds
from .segments import Frame, Option, SegmentMap, Span

__version__ = "0.1.0"
