"""mapflow-tl: map how information flows inside Video Large Language Models.

Attention Knockout, Logit Lens and effective-pathway pruning (Map the Flow, ICLR 2026) as small,
composable TransformerLens hooks over an annotated map of the token sequence.

    import mapflow_tl as mf
    vlm = mf.load_videollm("synthtv-video-ft")
    x = vlm.prepare(sample)                            # .embeds, .segments, .answer_ids
    seg = x.segments                                   # frames, question, options, last
    cut = mf.cross_frame(seg) | mf.video_to_question(seg)   # video keys -> question+options queries
    logits = vlm.run_with_hooks(x, fwd_hooks=mf.knockout(cut, layers=mf.window(10, n_layers=32)))

Names are resolved on first use: ``import mapflow_tl`` loads neither torch-heavy TransformerLens
nor transformers nor plotly, so the command line and data tools start fast.
"""

from __future__ import annotations

from ._lazy import lazy_exports

__version__ = "0.1.0"

# Public name → the module that defines it. One obvious way for each thing.
_EXPORTS: dict[str, str] = {
    # token segments and edge sets
    **dict.fromkeys(("Span", "Frame", "Option", "SegmentMap"), "segments"),
    **dict.fromkeys((
        "Edges", "causal_edge_count", "cross_frame", "intra_frame", "video_to_video",
        "video_to_question", "video_to_last", "question_to_last", "question_to_question",
        "last_to_last", "question_to_video", "non_option_question_to_last",
        "true_option_to_last", "false_options_to_last", "video_to_non_option_question",
        "non_option_question_to_true_option", "video_to_true_option", "video_to_response",
        "question_to_response", "response_to_response", "response_to_last", "anchors_to_last"),
        "edges"),
    # layers and hooks
    **dict.fromkeys(("window", "layer_range", "early_to_middle_layers", "default_window_size",
                     "WINDOW_STYLES"), "layers"),
    **dict.fromkeys(("knockout", "KnockoutHook", "PathwaySpec", "random_knockout", "capture",
                     "check_hooks", "attn_scores_hook_name", "knockout_during_generation"),
                    "hooks"),
    # sweeps, lens, metrics
    **dict.fromkeys(("KnockoutConfig", "layer_sweep", "sweep", "sweep_samples"), "engine"),
    **dict.fromkeys(("answer_probability_trace", "AnswerTrace", "logit_lens", "iter_logit_lens",
                     "project", "residual_stream", "top_tokens"), "lens"),
    **dict.fromkeys(("relative_change", "accuracy_by_layer", "base_accuracy"), "metrics"),
    # models
    **dict.fromkeys(("Prepared", "VideoLLM", "VideoSample", "load_videollm",
                     "supported_architectures"), "models"),
    **dict.fromkeys(("hooked_from_hf", "backbone_from_hf", "run_from_embeds"), "models.backbone"),
    # analyses (one function per analysis of the paper)
    **dict.fromkeys(("base_prediction", "flow_sweep", "flow_sweeps", "probability_trace",
                     "video_lens", "keyword_frequency", "keyword_counts", "keyword_bins", "prune",
                     "attention_to_frames", "crossframe_knockout", "counterfactual_patching",
                     "open_ended_sample", "open_ended_flow"),
                    "analyses"),
    **dict.fromkeys(("find_anchors", "Anchor"), "anchors"),
    # counterfactual videos and activation patching between two runs
    **dict.fromkeys(("counterfactual", "Counterfactual", "align"), "counterfactuals"),
    **dict.fromkeys(("patch_sweep", "patched_logits", "attribution_patch", "rank_agreement"),
                    "patching"),
    # circuits, data, runs
    **dict.fromkeys(("Circuit", "load_circuit", "list_circuits"), "circuits"),
    **dict.fromkeys(("load_dataset", "list_datasets"), "data.datasets"),
    **dict.fromkeys(("read_table", "read_run_config"), "runs"),
    "build_report": "report",
    "load_run": "results",
}

__all__ = sorted(_EXPORTS) + ["__version__"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
