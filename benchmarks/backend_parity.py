"""The two TransformerLens backends on the same checkpoints: each against the HF model, and each
against the other.

TransformerLens 3.9 (backend "hooked") and 4.x (backend "bridge") cannot share an environment, so
the comparison runs in two steps, one per environment, on the same checkpoint files:

    # in the TransformerLens 3.9 environment: builds the tiny checkpoints once, measures, saves
    python benchmarks/backend_parity.py --models /tmp/parity-models --out /tmp/hooked.pt
    # in the TransformerLens 4 environment: the same checkpoints
    .venv-tl4/bin/python benchmarks/backend_parity.py --models /tmp/parity-models \
        --out /tmp/bridge.pt
    # either environment: the two backends against each other
    python benchmarks/backend_parity.py --compare /tmp/hooked.pt /tmp/bridge.pt

Each measuring run prints JSON, one object per family: ``backend``, ``logits_vs_hf`` (max |Δ| of
the full logits against the HF model's own forward, eager attention), ``knockout_vs_hf`` (a
cross-frame ∪ video→question ∪ true option→last knockout in layers 0 and 2 against the HF model
with the equivalent explicit 4D masks), ``knockout_effect`` (max |Δ| the knockout makes: never a
silent no-op) and ``fast_vs_naive`` (a k=1 layer sweep of cross-frame and video→last, fast
method against one full forward per configuration). ``--compare`` prints, per family, max |Δ| of
logits, knockout logits and fast-sweep logits between the two saved runs. fp32, CPU.

The tiny checkpoints are the test suite's own builders (tests/test_models_llava.py,
tests/test_models_qwen_vl.py, tests/test_models_qwen3_vl.py, tests/test_models_glm4v.py): random
weights, real HF classes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1] / "tests"


def _families(models: Path) -> dict:
    """family → (checkpoint dir, load options, sample, HF logits fn, HF knockout fn)."""
    sys.path.insert(0, str(TESTS))
    import family_checks
    import test_models_glm4v as glm4v
    import test_models_llava as llava
    import test_models_qwen3_vl as qwen3_vl
    import test_models_qwen_vl as qwen_vl
    from test_models_qwen import OPTIONS, QUESTION, frames_array, hf_model_of

    from mapflow_tl.models import VideoSample

    out = {}
    for family, build in llava.BUILDERS.items():
        path = models / family
        if not (path / "config.json").exists():
            path.mkdir(parents=True, exist_ok=True)
            build(path)
        out[family] = ("llava", path, llava.LOAD_OPTIONS[family], llava._sample(family))
    for model_type in ("qwen2_vl", "qwen2_5_vl"):
        path = models / model_type
        if not (path / "config.json").exists():
            path.mkdir(parents=True, exist_ok=True)
            qwen_vl.build(model_type, path)
        out[model_type] = ("native", path, {}, VideoSample(frames_array(4, 32, 48), QUESTION,
                                                            OPTIONS, answer=1))
    path = models / "qwen3_vl"  # DeepStack: per-sample residual additions in layers 0 and 1
    if not (path / "config.json").exists():
        path.mkdir(parents=True, exist_ok=True)
        qwen3_vl.build(path)
    out["qwen3_vl"] = ("native", path, {}, VideoSample(frames_array(qwen3_vl.N_FRAMES, 32, 48),
                                                        QUESTION, OPTIONS, answer=1))
    path = models / "glm4v"  # sandwich norms, partial M-RoPE rotating adjacent pairs
    if not (path / "config.json").exists():
        path.mkdir(parents=True, exist_ok=True)
        glm4v.build(path)
    out["glm4v"] = ("native", path, {}, glm4v.sample())
    return out, llava, family_checks, hf_model_of


def measure(models: Path, out: Path) -> None:
    import mapflow_tl as mf
    from mapflow_tl.engine import layer_sweep, sweep
    from mapflow_tl.models import load_videollm

    torch.manual_seed(0)
    families, llava, checks, hf_model_of = _families(models)
    results, saved = [], {}
    for family, (kind, path, options, sample) in families.items():
        vlm = load_videollm(path, **options)
        x = vlm.prepare(sample)
        seg = x.segments
        with torch.no_grad():
            ours = vlm(x)
            if kind == "llava":
                hf = llava._hf_model(family, path)
                reference = hf(**llava._hf_reference_inputs(family, hf, x)).logits
            else:
                hf = hf_model_of(path, vlm.adapter.hf_class_name)
                reference = hf(input_ids=x.input_ids, **x.meta["model_inputs"]).logits
            edges = (mf.cross_frame(seg) | mf.Edges(src=seg.video, dst=seg.question_with_options)
                     | mf.Edges(src=seg.true_option, dst=seg.last))
            knocked = vlm.run_with_hooks(x, mf.knockout(edges, [0, 2]))
            n = x.n_positions
            pairs = checks.cross_frame_pairs(seg) + [
                (seg.video.positions, seg.question_with_options.positions),
                (seg.true_option.positions, [n - 1])]
            heads = vlm.cfg.n_heads
            blocked = mf.testing.additive_mask(n, mf.testing.block_mask(n, pairs), heads)
            inputs = (llava._hf_reference_inputs(family, hf, x) if kind == "llava"
                      else {"input_ids": x.input_ids, **x.meta["model_inputs"]})
            expected = mf.testing.hf_logits_with_layer_masks(
                hf, {0: blocked, 2: blocked}, mf.testing.additive_mask(n, None, heads), **inputs)
            configs = layer_sweep({"cross_frame": mf.cross_frame(seg),
                                   "video_to_last": mf.Edges(src=seg.video, dst=seg.last)},
                                  vlm.n_layers, k=1)
            fast = sweep(vlm.backbone, x.embeds, configs, method="fast")
            naive = sweep(vlm.backbone, x.embeds, configs, method="naive")
        row = {"family": family, "backend": vlm.backend,
               "logits_vs_hf": float((ours - reference).abs().max()),
               "knockout_vs_hf": float((knocked - expected).abs().max()),
               "knockout_effect": float((knocked - ours).abs().max()),
               "fast_vs_naive": float((fast - naive).abs().max())}
        results.append(row)
        print(json.dumps(row), flush=True)
        saved[family] = {"logits": ours, "knockout": knocked, "fast": fast,
                         "backend": vlm.backend}
    torch.save(saved, out)


def compare(first: Path, second: Path) -> None:
    a, b = torch.load(first), torch.load(second)
    for family in sorted(set(a) & set(b)):
        row = {"family": family, "backends": [a[family]["backend"], b[family]["backend"]]}
        for key in ("logits", "knockout", "fast"):
            row[key] = float((a[family][key] - b[family][key]).abs().max())
        print(json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="folder of the tiny checkpoints (built once)")
    parser.add_argument("--out", type=Path, help="where to save this backend's tensors (.pt)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"))
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
    else:
        if not args.models or not args.out:
            parser.error("--models and --out are needed to measure")
        measure(args.models, args.out)


if __name__ == "__main__":
    main()
