"""How well attribution patching ranks the patches real patching measures, on SynthTV.

For each SynthTV sample of the chosen tasks, the original video is the target and a
counterfactual of it (``--counterfactual``, default the reversed video) the source; every frame,
the question and the last position are patched in every layer, for each activation, both for
real (:func:`mapflow_tl.patching.patch_sweep`) and by the gradient estimate
(:func:`mapflow_tl.patching.attribution_patch`). Prints one JSON line per activation: the
Spearman rank correlation over all (sample, segment, layer) patches, per segment kind, and the
seconds each method took.

    python benchmarks/patching_agreement.py --samples 4
    python benchmarks/patching_agreement.py --tiny     # a tiny random Llama, random embeddings

``--tiny`` measures the same on ``mapflow_tl.testing.tiny_llama`` (4 layers, random weights)
with random input embeddings laid out as 4 frames of 2×3 tokens, a question and two options:
the target and the source are two such draws (``--samples`` pairs).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def tiny_pairs(count: int):
    """A tiny random VideoLLM and ``count`` (target, source) pairs of random embeddings."""
    from mapflow_tl.models import FamilyAdapter, Prepared, VideoLLM
    from mapflow_tl.models.backbone import hooked_from_hf
    from mapflow_tl.segments import SegmentMap
    from mapflow_tl.testing import tiny_llama

    hf = tiny_llama(n_layers=4)
    layout = SegmentMap.sequential(system=2, frames=[(2, 3)] * 4, question=5, options=[3, 3],
                                   true_option=0, before_last=2)

    class RandomEmbeds(FamilyAdapter):
        model_types, name = ("benchmark-random",), "benchmark-random"

        def __init__(self):
            self.backbone = hooked_from_hf(hf.model, hf.lm_head, hf.config)
            self.vision = self.processor = self.tokenizer = None

        def load(self):
            pass

        def prepare(self, sample):
            generator = torch.Generator().manual_seed(int(sample.id))
            embeds = torch.randn(1, layout.n_positions, hf.config.hidden_size,
                                 generator=generator)
            return Prepared(embeds=embeds, segments=layout, answer_ids=torch.tensor([10, 11]),
                            input_ids=torch.zeros(1, layout.n_positions, dtype=torch.long))

    from mapflow_tl.models import VideoSample

    vlm = VideoLLM(RandomEmbeds(), "tiny-random")
    make = lambda i: vlm.prepare(VideoSample("unused", "q", ("a", "b"), id=str(i)))  # noqa: E731
    return vlm, [(make(2 * i), make(2 * i + 1)) for i in range(count)]


def main() -> None:
    import mapflow_tl as mf
    from mapflow_tl.counterfactuals import counterfactual, frame_segments
    from mapflow_tl.patching import attribution_patch, patch_sweep, rank_agreement

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synthtv-video-ft")
    parser.add_argument("--tasks", nargs="+", default=["action_sequence", "moving_direction"])
    parser.add_argument("--samples", type=int, default=4, help="per task")
    parser.add_argument("--counterfactual", default="reverse")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny random Llama on random embeddings instead of SynthTV")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tiny:
        vlm, pairs = tiny_pairs(2 * args.samples)
        args.model, args.counterfactual = "tiny-random", "another random draw"
    else:
        vlm = mf.load_videollm(args.model)
        pairs = []
        for sample in mf.load_dataset("synthtv", tasks=args.tasks, limit=args.samples):
            cf = counterfactual(sample, args.counterfactual, num_frames=8)
            pairs.append((vlm.prepare(cf.original), vlm.prepare(cf.sample)))
    for activation in ("resid_pre", "attn_out", "mlp_out"):
        real, estimated, seconds = [], [], {"patch": 0.0, "attribution": 0.0}
        for target, source in pairs:
            segments = frame_segments(target.segments) + ["question", "last"]
            start = time.perf_counter()
            real += patch_sweep(vlm, target, source, segments, activation=activation)
            seconds["patch"] += time.perf_counter() - start
            start = time.perf_counter()
            estimated += attribution_patch(vlm, target, source, segments, activation=activation)
            seconds["attribution"] += time.perf_counter() - start
        by_kind = {}
        for kind, keep in (("frames", lambda s: s.startswith("frame_")),
                           ("question", lambda s: s == "question"),
                           ("last", lambda s: s == "last")):
            subset = [row for row in real if keep(row["segment"])]
            by_kind[kind] = round(rank_agreement(subset, estimated), 3)
        print(json.dumps({"model": args.model, "counterfactual": args.counterfactual,
                          "activation": activation, "samples": len(pairs),
                          "patches": len(real),
                          "spearman": round(rank_agreement(real, estimated), 3),
                          "spearman_by_segment": by_kind,
                          "seconds": {k: round(v, 2) for k, v in seconds.items()}}))


if __name__ == "__main__":
    main()
