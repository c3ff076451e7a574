"""The analyses' result rows, each checked against an independent reference: the Hugging Face
model itself (eager attention, explicit 4D masks per layer, ``output_hidden_states`` /
``output_attentions``), masks built with plain loops, and metric formulas written out by hand.

The samples are chosen so that predicted-vs-true mix-ups show: the ground truth differs from the
prediction on half of them, the "correct" ones are correct only as a decoded letter (the
predicted token is another spelling of the letter than the ground-truth token), and knockouts
change answers.
"""

from __future__ import annotations

import itertools
import random

import pytest
import torch

from mapflow_tl import analyses as A
from mapflow_tl import edges
from mapflow_tl.errors import InputError
from mapflow_tl.circuits import Circuit, load_circuit
from mapflow_tl.edges import Edges
from mapflow_tl.models import FamilyAdapter, Prepared, VideoLLM, VideoSample
from mapflow_tl.schema import TABLES
from mapflow_tl.testing import (additive_mask, assert_rows_close, block_mask,
                                hf_logits_with_layer_masks)

#: Every token decodes to one spelling of a letter (id % 3 → A, B, C): the option tokens 30, 31,
#: 32 as "A", "B", "C", every other token as " a" (a word-start space, as SentencePiece's "▁a"
#: decoded by a tokenizer that keeps it), "b " or " C" — the same letter, another spelling.
OPTION_IDS = (30, 31, 32)
OTHER_FORMS = (" a", "b ", " C")
K = 3  # window size for the 4-layer model


def spelled(token: int) -> str:
    token = int(token)
    return "ABC"[token % 3] if token in OPTION_IDS else OTHER_FORMS[token % 3]


class LetterTokenizer:
    def decode(self, ids):
        return "".join(spelled(i) for i in ids)

    def convert_ids_to_tokens(self, ids):
        return [spelled(i) for i in ids]


class RandomVideoAdapter(FamilyAdapter):
    """Test-only adapter: the tiny random Llama backbone with random input embeddings."""

    model_types, name = ("test-random",), "test-random"

    def __init__(self, backbone, layout):
        self.backbone, self.layout = backbone, layout
        self.vision = self.processor = None
        self.tokenizer = LetterTokenizer()

    def load(self):
        pass

    def prepare(self, sample):
        generator = torch.Generator().manual_seed(int(sample.id) + 100)
        embeds = torch.randn(1, self.layout.n_positions, self.backbone.cfg.d_model,
                             generator=generator)
        return Prepared(embeds=embeds, segments=self.layout,
                        input_ids=torch.zeros(1, self.layout.n_positions, dtype=torch.long),
                        answer_ids=torch.tensor(OPTION_IDS), answer=None)


@pytest.fixture(scope="module")
def vlm(tiny_backbone, layout):
    return VideoLLM(RandomVideoAdapter(tiny_backbone, layout), "tiny-random")


# ----------------------------------------------------------------------------- references
def letter(token: int) -> str:
    return spelled(token).strip().lower()


def official_clean(token: int, x) -> bool:
    """information_flow_analysis.py:216, 222: ``gt = example["answer"][1]`` (the bare letter),
    ``answer.lower() == gt.lower()`` with ``answer = decode([argmax])`` — no strip."""
    gt = "ABC"[x.answer]
    return spelled(token).lower() == gt.lower()


def official_knockout(token: int, x) -> bool:
    """information_flow_analysis.py:438 (effective_pathway_analysis.py:396):
    ``result['gt'] == result["new_answer"]`` — case-sensitive, no strip."""
    return "ABC"[x.answer] == spelled(token)


def hf_probabilities(hf, x, blocked_by_layer=None):
    """Last-position full-vocabulary probabilities of the HF model with ``blocked_by_layer``
    ({layer: bool [query, key]}) as explicit additive masks."""
    n, heads = x.n_positions, hf.config.num_attention_heads
    masks = {layer: additive_mask(n, blocked, heads)
             for layer, blocked in (blocked_by_layer or {}).items()}
    logits = hf_logits_with_layer_masks(hf, masks, additive_mask(n, None, heads),
                                        inputs_embeds=x.embeds)
    return logits[0, -1].double().softmax(-1)


def hand_window(center, n_layers, k=K):
    return [l for l in range(center - k // 2, center + k // 2 + 1) if 0 <= l < n_layers]


def positions(span):
    return list(range(span.start, span.stop))


def hand_cross_frame(seg):
    frames = [positions(f) for f in seg.frames]
    return [([p for f in frames[:t] for p in f], frames[t]) for t in range(1, len(frames))]


def make_samples(vlm, hf, count=4):
    """Samples whose truth is set from the HF model's clean answer: even ones correct as a
    decoded letter (the truth's token is the other option token with the same letter, so the
    prediction is never the ground-truth token itself unless it is an option), odd ones wrong."""
    prepared = []
    for i in range(count):
        x = vlm.prepare(VideoSample(video="unused", question="q", options=("a", "b", "c"),
                                    id=str(i), task="t"))
        predicted = int(hf_probabilities(hf, x).argmax())
        x.answer = predicted % 3 if i % 2 == 0 else (predicted + 1) % 3
        prepared.append(x)
    return prepared


@pytest.fixture(scope="module")
def xs(vlm, tiny_hf_llama):
    xs = make_samples(vlm, tiny_hf_llama)
    predicted = [int(hf_probabilities(tiny_hf_llama, x).argmax()) for x in xs]
    # the fixture is what the tests need: decoded-letter-correct predictions that are not the
    # ground-truth token, and wrong ones
    assert any(p != x.answer_token and letter(p) == letter(x.answer_token)
               for p, x in zip(predicted, xs))
    assert any(letter(p) != letter(x.answer_token) for p, x in zip(predicted, xs))
    return xs


# ----------------------------------------------------------------------------- flow
def hand_circuit(seg, n):
    """A user circuit with edge sets given as explicit positions, and their by-hand pairs."""
    video, last = positions(seg.video), [n - 1]
    text = list(range(seg.video.stop, n - 1))
    pairs = {"video → last": [(video, last)], "text → last": [(text, last)],
             "video → text": [(video, text)]}
    circuit = Circuit("hand", "test", None, curves=lambda s, L: {
        "video → last": Edges(src=range(video[0], video[-1] + 1), dst=last, name="v"),
        "text → last": Edges(src=range(text[0], text[-1] + 1), dst=last, name="t"),
        "video → text": Edges(src=range(video[0], video[-1] + 1),
                              dst=range(text[0], text[-1] + 1), name="vt")})
    return circuit, pairs


def test_every_flow_row_equals_the_hf_model_with_explicit_masks(vlm, xs, tiny_hf_llama):
    n_layers = vlm.n_layers
    flipped = 0
    for x in xs:
        n, seg = x.n_positions, x.segments
        circuit, pairs = hand_circuit(seg, n)
        pairs["cross-frame"] = hand_cross_frame(seg)
        rows = (A.flow_sweep(vlm, x, load_circuit("cross-frame"), k=K)
                + A.flow_sweep(vlm, x, circuit, k=K))
        assert len(rows) == 4 * n_layers
        clean = hf_probabilities(tiny_hf_llama, x)
        predicted, truth = int(clean.argmax()), x.answer_token
        for row in rows:
            layers = hand_window(row["layer"], n_layers)
            blocked = block_mask(n, pairs[row["curve"]])
            knocked = hf_probabilities(tiny_hf_llama, x, {l: blocked for l in layers})
            token = int(knocked.argmax())
            assert row["layers"] == layers and row["k"] == K
            assert row["base_token"] == predicted
            assert row["base_p_pred"] == pytest.approx(float(clean[predicted]), abs=1e-5)
            assert row["base_p_true"] == pytest.approx(float(clean[truth]), abs=1e-5)
            assert row["base_correct"] == official_clean(predicted, x)
            assert row["p_pred"] == pytest.approx(float(knocked[predicted]), abs=1e-5)
            assert row["p_true"] == pytest.approx(float(knocked[truth]), abs=1e-5)
            change_pred = (knocked[predicted] - clean[predicted]) / clean[predicted] * 100
            change_true = (knocked[truth] - clean[truth]) / clean[truth] * 100
            assert row["change_pred"] == pytest.approx(float(change_pred), rel=1e-3, abs=1e-3)
            assert row["change_true"] == pytest.approx(float(change_true), rel=1e-3, abs=1e-3)
            assert row["token"] == token
            assert row["option"] == int(knocked[list(OPTION_IDS)].argmax())
            assert row["correct"] == official_knockout(token, x)
            assert row["edges"] == int(blocked.sum())
            flipped += (letter(token) == letter(truth)) != (letter(predicted) == letter(truth))
    assert flipped > 0, "no knockout changed an answer's correctness: the test would be blind"


def test_every_head_row_equals_the_hf_model_with_a_per_head_mask(vlm, xs, tiny_hf_llama):
    """head_sweep (k=1: each layer alone, each head alone) against the HF model run with an
    explicit additive mask blocking the curve's pairs in that one head of that one layer."""
    n_layers, n_heads = vlm.n_layers, tiny_hf_llama.config.num_attention_heads
    x = xs[0]
    n, seg = x.n_positions, x.segments
    circuit, pairs = hand_circuit(seg, n)
    pairs["cross-frame"] = hand_cross_frame(seg)
    rows = A.head_sweep(vlm, x, load_circuit("cross-frame")) + A.head_sweep(vlm, x, circuit)
    assert len(rows) == 4 * n_layers * n_heads
    assert {(r["curve"], r["layer"], r["head"]) for r in rows} == {
        (c, l, h) for c in pairs for l in range(n_layers) for h in range(n_heads)}
    clean = hf_probabilities(tiny_hf_llama, x)
    predicted, truth = int(clean.argmax()), x.answer_token
    spread = 0.0
    for row in rows:
        blocked = block_mask(n, pairs[row["curve"]])
        mask = additive_mask(n, blocked, n_heads, heads=[row["head"]])
        logits = hf_logits_with_layer_masks(tiny_hf_llama, {row["layer"]: mask},
                                            additive_mask(n, None, n_heads),
                                            inputs_embeds=x.embeds)
        knocked = logits[0, -1].double().softmax(-1)
        assert row["layers"] == [row["layer"]]
        assert row["base_token"] == predicted
        assert row["p_pred"] == pytest.approx(float(knocked[predicted]), abs=1e-5)
        assert row["p_true"] == pytest.approx(float(knocked[truth]), abs=1e-5)
        change = (knocked[predicted] - clean[predicted]) / clean[predicted] * 100
        assert row["change_pred"] == pytest.approx(float(change), rel=1e-3, abs=1e-3)
        assert row["token"] == int(knocked.argmax())
        assert row["correct"] == official_knockout(row["token"], x)
        spread = max(spread, abs(row["change_pred"]))
    assert spread > 1e-2, "no head's knockout moved the answer: the test would be blind"


def test_head_sweep_is_the_flow_sweep_resolved_by_head(vlm, xs):
    """Consistency with flow_sweep: the same (curve, window) points and clean answer; a curve
    with no causal edge (question → video) moves nothing in any head; and one head's knockout
    moves the answer less than every head's together, summed over the sweep."""
    x = xs[1]
    circuit = Circuit("two", "test", None, curves=lambda s, L: {
        "video → last": edges.video_to_last(s), "question → video": edges.question_to_video(s)})
    flow = A.flow_sweep(vlm, x, circuit, k=1)
    heads = A.head_sweep(vlm, x, circuit, heads=[0, 3])
    assert {(r["curve"], r["layer"], tuple(r["layers"])) for r in heads} == \
        {(r["curve"], r["layer"], tuple(r["layers"])) for r in flow}
    assert {r["head"] for r in heads} == {0, 3}
    assert all(r[c] == flow[0][c] for r in heads for c in
               ("base_token", "base_p_pred", "base_p_true", "base_correct", "base_option"))
    assert all(abs(r["change_pred"]) < 1e-3 for r in heads if r["curve"] == "question → video")
    assert any(abs(r["change_pred"]) > 1e-2 for r in heads if r["curve"] == "video → last")
    with pytest.raises(InputError, match="heads"):
        A.head_sweep(vlm, x, circuit, heads=[4])


def test_flow_sweeps_of_several_samples_equal_each_sample_alone(vlm, xs):
    """Samples and circuits swept together (shared clean forwards and layer calls) give each
    sample's own rows: the same keys and answers, probabilities to rounding."""
    circuits = [load_circuit("cross-frame"), load_circuit("vql-to-ql")]
    together = A.flow_sweeps(vlm, xs, circuits, k=K)
    assert len(together) == len(xs)
    for x, rows in zip(xs, together):
        alone = [row for circuit in circuits for row in A.flow_sweep(vlm, x, circuit, k=K)]
        assert len(rows) == len(alone) == 5 * vlm.n_layers
        assert_rows_close(rows, alone)
    with pytest.raises(ValueError, match="one base per sample, got 1 for 2 samples"):
        A.flow_sweeps(vlm, xs[:2], circuits, bases=[None])


def test_flow_sweep_defaults_and_sweep_range(vlm, xs):
    x = xs[0]
    rows = A.flow_sweep(vlm, x, load_circuit("cross-frame"), centers=range(1, 3))
    assert [r["layer"] for r in rows] == [1, 2]
    assert all(r["k"] == 1 for r in rows)  # 9 of 32 layers scaled to 4 layers, odd: 1


def test_base_prediction_correctness_definitions(vlm, xs, tiny_hf_llama):
    for x in xs:
        predicted = int(hf_probabilities(tiny_hf_llama, x).argmax())
        official = A.base_prediction(vlm, x)
        ours = A.base_prediction(vlm, x, correctness="decoded-letter")
        strict = A.base_prediction(vlm, x, correctness="token-id")
        assert official["base_correct"] == official_clean(predicted, x)
        assert ours["base_correct"] == (letter(predicted) == letter(x.answer_token))
        assert strict["base_correct"] == (predicted == x.answer_token)
        assert A.grade(vlm, x, predicted) == official["base_correct"]
    with pytest.raises(ValueError, match="correctness must be one of"):
        A.base_prediction(vlm, xs[0], correctness="exact")


def test_official_correctness_per_tokenizer_and_run():
    """Issue 36: the default grading is the official comparison of the decoded token with the
    bare letter, per tokenizer: SentencePiece decodes "▁A" to "A" (correct), a byte-level BPE
    decodes " A" with its space (wrong, where the old default stripped it and said correct);
    the clean run lower-cases (IFA:222), a knockout does not (IFA:438)."""
    from types import SimpleNamespace

    decoded = {0: "A", 1: "a", 2: " A", 3: "A ", 4: "B", 5: " a", 6: "b"}

    class Tokenizer:
        def decode(self, ids):
            return decoded[int(ids[0])]

    vlm = SimpleNamespace(tokenizer=Tokenizer())
    x = SimpleNamespace(answer=0, answer_token=0)     # true option A, its token decodes "A"
    gt = "A"                                          # example["answer"][1]
    for token, text in decoded.items():
        assert A.grade(vlm, x, token) == (text.lower() == gt.lower()), text
        assert A.grade(vlm, x, token, knockout=True) == (gt == text), text
        for knockout in (False, True):
            assert A.grade(vlm, x, token, "decoded-letter", knockout=knockout) \
                == (text.strip().lower() == "a"), text
    # byte-level " A": wrong officially in both runs, right under our option
    assert not A.grade(vlm, x, 2) and A.grade(vlm, x, 2, "decoded-letter")
    # "a": right in the clean run, wrong under knockout (official bug 1, kept to match its
    # numbers)
    assert A.grade(vlm, x, 1) and not A.grade(vlm, x, 1, knockout=True)


def test_sample_modes(vlm, xs):
    bases = [A.base_prediction(vlm, x, correctness="decoded-letter") for x in xs]
    assert [b["base_correct"] for b in bases] == [True, False, True, False]
    assert [A.select(b, "correct") for b in bases] == [True, False, True, False]
    assert [A.select(b, "wrong") for b in bases] == [False, True, False, True]
    assert all(A.select(b, "all") for b in bases)
    with pytest.raises(ValueError, match="sample mode must be one of"):
        A.select(bases[0], "best")


def test_accuracy_counts_every_evaluated_sample():
    """Four samples evaluated, two selected ("correct" mode); at layer 0 one of them stays
    correct: official accuracy 1/4 (base accuracy 2/4 is the reference), per-mode view 1/2."""
    samples = [{"sample": s, "base_correct": c} for s, c in
               (("a", True), ("b", True), ("c", False), ("d", False))]
    rows = [{"sample": "a", "curve": "v", "layer": 0, "correct": True},
            {"sample": "b", "curve": "v", "layer": 0, "correct": False},
            {"sample": "a", "curve": "v", "layer": 1, "correct": True},
            {"sample": "b", "curve": "v", "layer": 1, "correct": True}]
    assert A.accuracy_by_layer(rows, samples) == {("v", 0): 0.25, ("v", 1): 0.5}
    assert A.base_accuracy(samples) == 0.5
    assert A.accuracy_by_layer(rows, over="selected") == {("v", 0): 0.5, ("v", 1): 1.0}
    with pytest.raises(ValueError, match="needs the samples table"):
        A.accuracy_by_layer(rows)
    with pytest.raises(ValueError, match="missing from the samples table"):
        A.accuracy_by_layer(rows, samples[2:])


def test_relative_change_is_keyword_only():
    assert A.relative_change(base=0.5, knockout=0.25) == -50.0
    with pytest.raises(TypeError):
        A.relative_change(0.25, 0.5)


def test_relative_change_of_a_zero_base_is_none_not_a_division():
    """(p − p_base) / p_base × 100 by hand; a base probability of exactly 0 (a bf16 underflow)
    has no relative change: None for a number, NaN for a tensor element, never inf or an
    exception."""
    from mapflow_tl.metrics import relative_change

    assert relative_change(base=0.2, knockout=0.3) == pytest.approx(50.0)
    assert relative_change(base=0.4, knockout=0.1) == pytest.approx(-75.0)
    assert relative_change(base=0.0, knockout=0.3) is None
    assert relative_change(base=0, knockout=0.0) is None
    got = relative_change(base=torch.tensor([0.5, 0.0, 0.25]), knockout=torch.tensor([1.0, 0.2,
                                                                                     0.0]))
    assert got[0].item() == pytest.approx(100.0) and got[2].item() == pytest.approx(-100.0)
    assert torch.isnan(got[1])


def test_is_correct_ignores_case_and_surrounding_space_only():
    """The official grading: decoded argmax == letter, lower-cased; SentencePiece's "▁A" decodes
    to "A", Qwen's " A" keeps the space, so both sides are stripped."""
    from mapflow_tl.metrics import is_correct

    assert is_correct("A", "A") and is_correct(" a", "A") and is_correct("B\n", " b ")
    assert not is_correct("B", "A") and not is_correct("AB", "A") and not is_correct("", "A")
    with pytest.raises(ValueError, match="letter is empty"):
        is_correct("A", " ")


def test_accuracy_leaves_out_unknown_answers_and_ungraded_rows():
    """A sample without a known answer (base_correct None) is not evaluated: neither in the base
    accuracy nor in the all-samples denominator; a row whose correctness is None (no answer to
    grade) counts in neither numerator nor the per-mode denominator."""
    samples = [{"sample": "a", "base_correct": True}, {"sample": "b", "base_correct": False},
               {"sample": "c", "base_correct": None}, {"sample": "d", "base_correct": True}]
    rows = [{"sample": "a", "curve": "v", "layer": 0, "correct": True},
            {"sample": "d", "curve": "v", "layer": 0, "correct": None},
            {"sample": "d", "curve": "w", "layer": 0, "correct": False}]
    assert A.base_accuracy(samples) == pytest.approx(2 / 3)
    assert A.accuracy_by_layer(rows, samples) == {("v", 0): pytest.approx(1 / 3),
                                                  ("w", 0): 0.0}
    assert A.accuracy_by_layer(rows, over="selected") == {("v", 0): 1.0, ("w", 0): 0.0}
    with pytest.raises(ValueError, match="no sample with a known answer"):
        A.base_accuracy([{"sample": "c", "base_correct": None}])
    with pytest.raises(ValueError, match="accuracy over must be one of"):
        A.accuracy_by_layer(rows, samples, over="some")


def test_prune_summary_by_hand():
    """Per (task, variant): accuracy in percent over the graded rows (None left out), samples
    counted once, retained = kept / total edges summed over rows; one seed has no spread."""
    from mapflow_tl.metrics import prune_summary

    rows = [{"sample": s, "task": t, "variant": "pathway", "seed": None, "correct": c,
             "kept_edges": kept, "total_edges": 10}
            for s, t, c, kept in (("s0", "T", True, 2), ("s1", "T", False, 4),
                                  ("s2", "T", None, 6), ("s3", "U", True, 5))]
    by_task = {row["task"]: row for row in prune_summary(rows)}
    assert by_task["T"]["accuracy"] == pytest.approx(50.0)
    assert by_task["T"]["samples"] == 3 and by_task["T"]["seeds"] == 1
    assert by_task["T"]["retained"] == pytest.approx(12 / 30)
    assert by_task["T"]["accuracy_sd"] is None
    assert by_task["U"]["accuracy"] == pytest.approx(100.0) and by_task["U"]["samples"] == 1
    assert [row["task"] for row in prune_summary(rows)] == ["T", "U"]
    seeded = [{"sample": s, "task": "T", "variant": "random", "seed": seed, "correct": True,
               "kept_edges": 1, "total_edges": 2} for s in ("s0", "s1") for seed in (0, 1, 2)]
    (random_row,) = prune_summary(seeded)
    assert random_row["samples"] == 2 and random_row["seeds"] == 3
    assert random_row["accuracy_sd"] == 0.0


# ----------------------------------------------------------------------------- lens
def hf_hidden_states(hf, x):
    with torch.no_grad():
        out = hf(inputs_embeds=x.embeds, output_hidden_states=True)
    return out.hidden_states, out.logits


def test_probability_trace_against_hf_hidden_states(vlm, xs, tiny_hf_llama):
    """Official trace: output of block i through lm_head without the final norm; the last layer
    the model's logits; full-vocabulary softmax; top 10 recorded; is_true marks the truth."""
    n_layers = vlm.n_layers
    for x in xs:
        hidden, logits = hf_hidden_states(tiny_hf_llama, x)
        clean = logits[0, -1].double().softmax(-1)
        predicted = int(clean.argmax())
        rows = A.probability_trace(vlm, x)
        assert len(rows) == n_layers * len(OPTION_IDS)
        for norm in (False, True):
            if norm:
                rows = A.probability_trace(vlm, x, norm=True)
            for row in rows:
                layer = row["layer"]
                if layer == n_layers - 1:
                    p = clean
                else:
                    h = hidden[layer + 1][0, -1]
                    if norm:
                        h = tiny_hf_llama.model.norm(h)
                    p = (h @ tiny_hf_llama.lm_head.weight.T).double().softmax(-1)
                assert row["is_true"] == (row["option"] == x.answer)
                assert row["token"] == OPTION_IDS[row["option"]]
                p = p.detach()
                assert row["probability"] == pytest.approx(float(p[row["token"]]), abs=1e-5)
                assert row["p_pred"] == pytest.approx(float(p[predicted]), abs=1e-5)
                assert row["top_ids"] == p.topk(10).indices.tolist()
                assert row["top_tokens"] == [spelled(i) for i in row["top_ids"]]
                assert row["top_probs"] == pytest.approx(p.topk(10).values.tolist(), abs=1e-5)
    # the truth is not always the most probable option: is_true cannot follow the top option
    assert any(A.base_prediction(vlm, x)["base_option"] != x.answer for x in xs)


def test_video_lens_official_indexing_against_hf(vlm, xs, tiny_hf_llama):
    """Official lens: layer i = input of block i (layer 0 = embeddings) for i ≤ L−2, the last
    entry the normed final output; input embedding matrix, no norm; top 5 kept."""
    x, n_layers = xs[1], vlm.n_layers
    hidden, _ = hf_hidden_states(tiny_hf_llama, x)
    video = [p for f in x.segments.frames for p in positions(f)]
    rows = A.video_lens(vlm, x)
    assert len(rows) == n_layers * len(video)
    embedding = tiny_hf_llama.model.embed_tokens.weight
    for row in rows:
        layer = row["layer"]
        state = hidden[n_layers if layer == n_layers - 1 else layer][0, row["position"]]
        p = (state @ embedding.T).double().softmax(-1)
        assert row["top_ids"] == p.topk(5).indices.tolist(), row["layer"]
        assert row["top_probs"] == pytest.approx(p.topk(5).values.tolist(), abs=1e-5)
        assert row["top_tokens"] == [spelled(i) for i in row["top_ids"]]
        assert row["position"] in video
        t, h, w = row["frame"], row["h"], row["w"]
        frame = x.segments.frames[t]
        assert frame.start + h * frame.grid[1] + w == row["position"]


class SubwordTokenizer:
    """'tidy' → 'tid' + 'y', 'Bag' → 'Bag'; everything else one token."""

    pieces = {"tidy": ["tid", "y"], "glass": ["glass"], "bag": ["bag"], "put": ["put"],
              "Bag": ["Bag"]}

    def __init__(self):
        self.vocab = sorted({p for ps in self.pieces.values() for p in ps})

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab.index(p) for p in self.pieces[text]]}

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids)


def test_keyword_counts_first_subtoken_exact_and_five_layer_bins():
    tokenizer = SubwordTokenizer()
    tops = {0: ["tid", "x"], 1: ["Tid", "tid"], 2: ["tidy", "x"], 3: [" bag", "x"],
            4: ["bag", "x"], 5: ["tid", "x"], 6: ["glass", "x"], 10: ["put", "x"],
            11: ["tid", "x"]}
    rows = [{"layer": layer, "top_tokens": tops.get(layer, ["x"])} for layer in range(12)]
    spatial, temporal = ["bag", "glass", "glass"], ["tidy", "put"]
    counts = {(r["keyword"], r["layer"]): r["count"]
              for r in A.keyword_counts(rows, spatial, temporal, tokenizer=tokenizer)}
    # "tidy" counts only as its first sub-token "tid", exactly, case-sensitively, top-1 only
    assert [counts[("tid", layer)] for layer in range(12)] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0,
                                                                0, 1]
    assert counts[("bag", 3)] == 1 and counts[("bag", 4)] == 1
    groups = {(r["group"], r["keyword"]): r["words"] for r in
              A.keyword_counts(rows, spatial, temporal, tokenizer=tokenizer)}
    assert groups[("spatial", "glass")] == ["glass"] and groups[("temporal", "tid")] == ["tidy"]
    bins = {(r["keyword"], r["bin"]): (r["count"], r["first_layer"], r["last_layer"]) for r in
            A.keyword_bins(A.keyword_counts(rows, spatial, temporal, tokenizer=tokenizer))}
    # five layers a bin: 0-based 0–4, 5–9, 10–11 (the official plot sums six: 0–5 would be 2)
    assert bins[("tid", "0–4")] == (1, 0, 4)     # the paper's figure labels it "1–5"
    assert bins[("tid", "5–9")] == (1, 5, 9)
    assert bins[("tid", "10–11")] == (1, 10, 11)   # the last bin cut at the depth
    per_layer = A.keyword_frequency(rows, spatial, temporal, tokenizer=tokenizer)
    assert [r["spatial"] for r in per_layer][:7] == [0, 0, 0, 1, 1, 0, 1]
    assert [r["temporal"] for r in per_layer][:7] == [1, 0, 0, 0, 0, 1, 0]
    assert all(r["positions"] == 1 for r in per_layer)


def test_official_action_sequence_keywords():
    from mapflow_tl.keywords import ACTION_SEQUENCE_SPATIAL, ACTION_SEQUENCE_TEMPORAL, \
        keyword_lists

    assert len(ACTION_SEQUENCE_SPATIAL) == 22 and ACTION_SEQUENCE_SPATIAL.count("glass") == 2
    assert ACTION_SEQUENCE_TEMPORAL == ("eat", "close", "do", "down", "drink", "hold", "on",
                                        "open", "put", "sit", "throw", "tidy", "take", "up")
    assert keyword_lists("action-sequence") == (list(ACTION_SEQUENCE_SPATIAL),
                                                list(ACTION_SEQUENCE_TEMPORAL))
    with pytest.raises(ValueError, match="choose one of"):
        keyword_lists("action")


class _PieceTokenizer:
    """Each word a fixed list of pieces; a lone SentencePiece "▁" may come first."""

    def __init__(self, pieces):
        self.pieces = pieces
        self.vocab = sorted({p for ps in pieces.values() for p in ps})

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.vocab.index(p) for p in self.pieces[text]]}

    def decode(self, ids):
        return "".join(self.vocab[i] for i in ids).replace("▁", " ")


def test_keyword_reduction_skips_a_lone_word_start_piece_and_sorts():
    """The first sub-token is the first piece with text: a lone "▁" before it is skipped; the
    reduced keywords come sorted by sub-token, each with its words once; a word that reduces to
    nothing is an error naming it."""
    from mapflow_tl.keywords import first_subtoken, reduce_keywords

    tokenizer = _PieceTokenizer({"tidy": ["▁", "tid", "y"], "up": ["▁up"], "bag": ["bag"],
                                 "bags": ["bag", "s"], "empty": ["▁"], "none": []})
    assert first_subtoken(tokenizer, "tidy") == "tid"
    assert first_subtoken(tokenizer, "up") == "up"
    assert reduce_keywords(tokenizer, ["up", "tidy", "bags", "bag", "bags"]) == {
        "bag": ["bags", "bag"], "tid": ["tidy"], "up": ["up"]}
    assert list(reduce_keywords(tokenizer, ["up", "tidy", "bag"])) == ["bag", "tid", "up"]
    with pytest.raises(ValueError, match="'empty': its first sub-token decodes to nothing"):
        first_subtoken(tokenizer, "empty")
    with pytest.raises(ValueError, match="'none' tokenizes to nothing"):
        first_subtoken(tokenizer, "none")


def test_keyword_lists_default_and_json_files(tmp_path):
    """No name: SynthTV's lists (the CLI default); a JSON file of two non-empty word lists; an
    empty or missing word is refused naming the file."""
    from mapflow_tl.keywords import keyword_lists
    from mapflow_tl.synthtv import generator

    assert keyword_lists() == (list(generator.SPATIAL_WORDS), list(generator.TEMPORAL_WORDS))
    assert keyword_lists("synthtv") == keyword_lists(None)
    good = tmp_path / "words.json"
    good.write_text('{"spatial": ["cup"], "temporal": ["open", "close"]}')
    assert keyword_lists(str(good)) == (["cup"], ["open", "close"])
    for name, text in (("blank.json", '{"spatial": [" "], "temporal": ["open"]}'),
                       ("number.json", '{"spatial": [3], "temporal": ["open"]}'),
                       ("half.json", '{"spatial": ["cup"]}'), ("broken.json", "{")):
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=f"keywords .*{name}: expected a JSON file"):
            keyword_lists(str(tmp_path / name))


# ----------------------------------------------------------------------------- attention
def hf_attentions(hf, x, masks):
    """Every layer's attention probabilities of the HF model with ``masks`` ({layer: additive
    mask}) in place of the causal one."""
    n, heads = x.n_positions, hf.config.num_attention_heads
    captured, handles = {}, []
    for index, layer in enumerate(hf.model.layers):
        mask = masks.get(index, additive_mask(n, None, heads))

        def swap(module, args, kwargs, mask=mask):
            kwargs["attention_mask"] = mask
            return args, kwargs

        def keep(module, args, output, index=index):
            captured[index] = output[1]

        handles.append(layer.register_forward_pre_hook(swap, with_kwargs=True))
        handles.append(layer.self_attn.register_forward_hook(keep))
    try:
        with torch.no_grad():
            hf(inputs_embeds=x.embeds, output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def test_attention_official_view_per_word_layers_and_knockout_against_hf(vlm, xs,
                                                                         tiny_hf_llama):
    """The default attention map is the official figure's (attention_visualization.py):
    one map per question token (tokens decoding to one of " /()ABCD.?" skipped, :471), the head
    mean (:334-337) of that token's row (not an average over the question), layers 10 … 19 of
    32 scaled (:501) — 1, 2 of 4 — and cross-frame knockout in every layer (:303-307)."""
    import dataclasses

    x = xs[0]
    n, seg = x.n_positions, x.segments
    question = positions(seg.question)
    # question tokens spelled "A" (option letter: skipped), "C" (skipped), "b " (kept), " a"
    ids = x.input_ids.clone()
    ids[0, question[0]], ids[0, question[1]] = 30, 32   # "A", "C"
    ids[0, question[2]] = 1                             # "b "
    x = dataclasses.replace(x, input_ids=ids)
    kept = question[2:]
    rows = A.attention_to_frames(vlm, x)
    expected_queries = {f"'{spelled(ids[0, p]).strip()}' @{p}" for p in kept}
    assert {r["query"] for r in rows} == expected_queries
    assert sorted({r["layer"] for r in rows}) == [1, 2]
    heads = tiny_hf_llama.config.num_attention_heads
    blocked = additive_mask(n, block_mask(n, hand_cross_frame(seg)), heads)
    video = [p for f in seg.frames for p in positions(f)]
    for condition, masks in (("baseline", {}),
                             ("cross-frame knockout", dict.fromkeys(range(4), blocked))):
        captured = hf_attentions(tiny_hf_llama, x, masks)
        for p, layer in itertools.product(kept, (1, 2)):
            expected = captured[layer][0][:, p, video].mean(dim=0)
            got = [r["attention"] for r in rows if r["condition"] == condition
                   and r["layer"] == layer and r["query"].endswith(f"@{p}")]
            assert got == pytest.approx(expected.tolist(), abs=1e-6), (condition, layer, p)
    with pytest.raises(ValueError, match="attention view must be one of"):
        A.attention_to_frames(vlm, x, view="official")


def test_attention_to_frames_is_the_head_mean_of_hf_attentions(vlm, xs, tiny_hf_llama):
    """The mean view (an option): the mean over heads and query positions, every layer, knockout
    in the early-to-middle half."""
    x, n = xs[0], xs[0].n_positions
    seg = x.segments
    by_query = {"question": positions(seg.question), "last token": [n - 1]}
    video = [p for f in seg.frames for p in positions(f)]
    rows = (A.attention_to_frames(vlm, x, view="mean")
            + A.attention_to_frames(vlm, x, "last", view="mean"))
    assert {r["query"] for r in rows} == set(by_query)
    heads = tiny_hf_llama.config.num_attention_heads
    blocked = additive_mask(n, block_mask(n, hand_cross_frame(seg)), heads)
    layers = [0, 1]  # the early-to-middle half of 4 layers
    for condition, masks in (("baseline", {}),
                             ("cross-frame knockout", {l: blocked for l in layers})):
        captured = hf_attentions(tiny_hf_llama, x, masks)
        for (label, queries), layer in itertools.product(by_query.items(), range(vlm.n_layers)):
            expected = captured[layer][0][:, queries][:, :, video].mean(dim=(0, 1))
            got = [r["attention"] for r in rows if r["condition"] == condition
                   and r["layer"] == layer and r["query"] == label]
            assert got == pytest.approx(expected.tolist(), abs=1e-6), (condition, layer, label)


def test_attention_queries_by_word_and_their_errors(vlm, xs):
    x = xs[0]
    ids = x.input_ids[0].tolist()
    question = positions(x.segments.question)
    word = vlm.tokenizer.decode([ids[question[0]]]).replace("▁", " ").strip()
    label, found = A.attention_queries(vlm, x, f"word:{word}")
    assert label == f"'{word}'" and question[0] in found
    assert all(vlm.tokenizer.decode([ids[p]]).replace("▁", " ").strip().lower() == word.lower()
               for p in found)
    with pytest.raises(ValueError, match="no token of the question spells"):
        A.attention_queries(vlm, x, "word:zzzqqq")
    with pytest.raises(ValueError, match="query must be"):
        A.attention_queries(vlm, x, "middle")


def test_crossframe_knockout_default_layers_against_hf(vlm, xs, tiny_hf_llama):
    assert A.early_to_middle_layers(32) == list(range(16))
    for x in xs:
        rows = A.crossframe_knockout(vlm, x, model="m")
        assert rows[1]["layers"] == [0, 1]
        blocked = block_mask(x.n_positions, hand_cross_frame(x.segments))
        knocked = hf_probabilities(tiny_hf_llama, x, {0: blocked, 1: blocked})
        clean = hf_probabilities(tiny_hf_llama, x)
        for row, p in zip(rows, (clean, knocked)):
            token = int(p.argmax())
            assert row["token"] == token
            assert row["correct"] == (official_clean(token, x) if row["condition"] == "base"
                                      else official_knockout(token, x))


# ----------------------------------------------------------------------------- pruning
PATHWAY = ("from mapflow_tl.circuits import paper_pathway\n"
           "NAME = 'tiny-pathway'\nDESCRIPTION = 'test'\n"
           "def pathway(seg, n_layers):\n"
           "    return paper_pathway(seg, n_layers, cross_frame=(1, 2), video_to_question=(1, 3),"
           " question_to_last=(3, 4))\n")


def test_prune_evaluates_a_head_level_pathway_like_the_layer_level_one(vlm, xs, tiny_hf_llama):
    """A head-level pathway (video → last open only in head 2 of blocks 1–3, closed everywhere
    else) evaluated by prune: its pathway row is the HF model with per-head additive masks."""
    from mapflow_tl.hooks import PathwaySpec

    x = xs[0]
    n, seg, n_heads = x.n_positions, x.segments, tiny_hf_llama.config.num_attention_heads
    circuit = Circuit("heads-pathway", "test", None, pathway=lambda s, L: PathwaySpec(L).keep(
        edges.video_to_last(s), [1, 2, 3], heads=[2]))
    rows = A.prune(vlm, x, circuit, seeds=(0,))
    pathway = next(r for r in rows if r["variant"] == "pathway")
    blocked = block_mask(n, [(positions(seg.video), [n - 1])])
    masks = {layer: additive_mask(n, blocked, n_heads, heads=[0, 1, 3]) for layer in (1, 2, 3)}
    masks[0] = additive_mask(n, blocked, n_heads)
    logits = hf_logits_with_layer_masks(tiny_hf_llama, masks, additive_mask(n, None, n_heads),
                                        inputs_embeds=x.embeds)
    knocked = logits[0, -1].double().softmax(-1)
    assert pathway["p_true"] == pytest.approx(float(knocked[x.answer_token]), abs=1e-5)
    assert pathway["token"] == int(knocked.argmax())
    all_closed = hf_probabilities(tiny_hf_llama, x, {layer: blocked for layer in range(4)})
    assert float((all_closed - knocked).abs().max()) > 1e-3, "head 2 should matter"
    # edge accounting counts (query, key) pairs per layer: open in one head is kept
    assert pathway["kept_edges"] == pathway["total_edges"] - int(blocked.sum())


def hand_pathway_blocked(seg, n):
    """The tiny pathway, 0-based: keep cross-frame in 0–1, video→question in 0–2,
    question→last in 2–3; video→last and last→last always blocked; video→video after 2."""
    video, last = positions(seg.video), [n - 1]
    # the coarse question span the pathway uses (read from the segment map, which its own tests
    # pin; this test is about the rows)
    question = positions(seg.question_with_options)
    cross = hand_cross_frame(seg)
    always = [(video, last), (last, last)]
    return {0: always + [(question, last)], 1: always + [(question, last)],
            2: always + cross, 3: always + cross + [(video, question), (video, video)]}


def draw_key(seed, sample):
    """The generator seed of one sample's draw: SHA-256 of "seed:sample", first 63 bits."""
    import hashlib

    return int.from_bytes(hashlib.sha256(f"{seed}:{sample}".encode()).digest()[:8], "big") >> 1


def hand_random_masks(seg, n, n_layers, count, seed, sample):
    """The official baseline re-stated: candidates = causal (query, key) pairs with both at or
    after the video start, last token included, row-major; per layer a fresh permutation (a
    fresh draw for every sample, as the official unseeded ``randperm``) from one generator keyed
    by (seed, sample); the first ``count`` blocked."""
    start = seg.video.start
    candidates = [(q, k) for q in range(start, n) for k in range(start, q + 1)]
    generator = torch.Generator().manual_seed(draw_key(seed, sample))
    masks = {}
    for layer in range(n_layers):
        order = torch.randperm(len(candidates), generator=generator)[:count].tolist()
        mask = torch.zeros(n, n, dtype=torch.bool)
        for i in order:
            mask[candidates[i]] = True
        masks[layer] = mask
    return masks


def test_prune_rows_against_hf_and_the_official_random_baseline(vlm, xs, tiny_hf_llama,
                                                                  tmp_path):
    path = tmp_path / "tiny_pathway.py"
    path.write_text(PATHWAY)
    circuit = load_circuit(path)
    with pytest.raises(ValueError, match="pathway-llava-next-7b: layers L6–15 \\(1-based\\) do "
                                         "not fit a 4-layer model"):
        A.prune(vlm, xs[0], load_circuit("pathway-llava-next-7b"))
    x = xs[1]
    seg, n, n_layers = x.segments, x.n_positions, vlm.n_layers
    rows = A.prune(vlm, x, circuit, seeds=(0, 1))
    assert [(r["variant"], r["seed"]) for r in rows] == [("full", None), ("pathway", None),
                                                         ("random", 0), ("random", 1)]
    triangle = n * (n + 1) // 2
    blocked = {l: block_mask(n, pairs) for l, pairs in hand_pathway_blocked(seg, n).items()}
    kept = sum(triangle - int(blocked[l].sum()) for l in range(n_layers))
    ratio = 1 - kept / (n_layers * triangle)
    count = int(ratio * triangle)
    references = {("full", None): {}, ("pathway", None): blocked}
    for seed in (0, 1):
        references[("random", seed)] = hand_random_masks(seg, n, n_layers, count, seed,
                                                         x.meta["id"])
    for row in rows:
        p = hf_probabilities(tiny_hf_llama, x, references[(row["variant"], row["seed"])])
        token = int(p.argmax())
        assert row["token"] == token, row["variant"]
        assert row["correct"] == (official_clean(token, x) if row["variant"] == "full"
                                  else official_knockout(token, x))
        assert row["p_true"] == pytest.approx(float(p[x.answer_token]), abs=1e-5)
        assert row["total_edges"] == n_layers * triangle
    by_variant = {(r["variant"], r["seed"]): r for r in rows}
    assert by_variant[("pathway", None)]["kept_edges"] == kept
    assert by_variant[("random", 0)]["kept_edges"] == n_layers * (triangle - count)
    assert by_variant[("random", 0)]["baseline"] == "official-uniform"
    assert by_variant[("full", None)]["retained"] == 1.0
    # a circuit carrying the paper's ratio (RANDOM_RATIO, the official --random_block_ratio)
    # draws int(ratio · n(n+1)/2) per layer by default; "per-sample" gives the sample's own
    # blocked fraction
    with_ratio = tmp_path / "tiny_pathway_ratio.py"
    with_ratio.write_text(PATHWAY.replace("'tiny-pathway'", "'tiny-pathway-ratio'")
                          + "RANDOM_RATIO = 0.3\n")
    paper = load_circuit(with_ratio)
    assert paper.random_ratio == 0.3 and circuit.random_ratio is None
    by_ratio = A.prune(vlm, x, paper, seeds=(0,))
    assert by_ratio[2]["kept_edges"] == n_layers * (triangle - int(0.3 * triangle))
    per_sample = A.prune(vlm, x, paper, seeds=(0,), ratio="per-sample")
    assert per_sample[2]["kept_edges"] == n_layers * (triangle - count)
    assert A.random_ratio(paper, 0.2) == 0.2
    # the per-layer-matched option: each layer as many edges as the pathway blocks there
    matched = A.prune(vlm, x, circuit, seeds=(0,), baseline="per-layer-matched")
    assert matched[2]["kept_edges"] == kept
    with pytest.raises(ValueError, match="random baseline must be one of"):
        A.prune(vlm, x, circuit, baseline="uniform")


def test_random_region_runs_from_the_video_start_through_the_last_token(xs):
    x = xs[0]
    n, start = x.n_positions, x.segments.video.start
    expected = torch.zeros(n, n, dtype=torch.bool)
    for q in range(start, n):
        for k in range(start, q + 1):
            expected[q, k] = True
    assert torch.equal(A.video_region(x).dense(n), expected)


# ----------------------------------------------------------------------------- schema
def test_rows_have_exactly_their_tables_columns(vlm, xs, tmp_path):
    x = xs[0]
    path = tmp_path / "tiny_pathway.py"
    path.write_text(PATHWAY)
    lens = A.video_lens(vlm, x)
    counts = A.keyword_counts([{"layer": 0, "top_tokens": ["bag"]}], ["bag"], ["put"],
                              tokenizer=SubwordTokenizer())
    tables = {
        "flow": A.flow_sweep(vlm, x, load_circuit("cross-frame"), k=K),
        "heads": A.head_sweep(vlm, x, load_circuit("cross-frame"), centers=[1], heads=[0]),
        "prob": A.probability_trace(vlm, x), "lens": lens,
        "keywords": A.keyword_frequency(lens, ["A"], ["C"], tokenizer=_Letters()),
        "keyword_counts": counts, "keyword_bins": A.keyword_bins(counts),
        "prune": A.prune(vlm, x, load_circuit(path), seeds=(0,)),
        "attention": A.attention_to_frames(vlm, x),
        "crossframe": A.crossframe_knockout(vlm, x),
        "eval": [A.evaluate(vlm, x)[1]],
    }
    for table, rows in tables.items():
        assert rows, table
        assert all(tuple(row) == TABLES[table] for row in rows), table


class _Letters(LetterTokenizer):
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [OPTION_IDS["ABC".index(text)]]}


# ----------------------------------------------------------------------------- the CLI
def test_cli_defaults_as_a_user_calls_them(model_and_data, tmp_path, capsys):
    """flow / prob / lens / prune through the command line with their defaults on an untrained
    SynthTV-architecture model: the seeded per-task subsample, every evaluated sample in the
    samples table, the definitions in run.json, rows equal to the analyses run directly."""
    import json

    from mapflow_tl.cli import main
    from mapflow_tl.data.datasets import load_dataset
    from mapflow_tl.models import load_videollm
    from mapflow_tl.runs import read_table

    model_dir, data_dir = model_and_data
    common = ["--model", str(model_dir), "--dataset", "tvbench", "--data-root", str(data_dir),
              "--sample", "2"]
    # the official --test_ratio draw, by hand: random.seed(42); random.sample per task
    everything = list(load_dataset("tvbench", data_dir))
    expected = []
    for task in dict.fromkeys(s.task for s in everything):
        random.seed(42)
        expected += [s.id for s in random.sample([s for s in everything if s.task == task], 2)]

    out = tmp_path / "flow"
    assert main(["flow", *common, "--out", str(out), "--window", "3", "--mode", "all",
                 "--sweep-range", "1", "3", "--circuit", "cross-frame"]) == 0
    samples = read_table(out, "samples")
    assert [r["sample"] for r in samples] == expected
    config = json.loads((out / "run.json").read_text())
    assert config["definitions"]["correct"] == "official"
    assert config["definitions"]["accuracy"] == "all-samples"
    assert config["definitions"]["window"] == "k = 3 (--window)"
    assert config["dtype"] == "float32"          # --dtype auto on the CPU
    flow = read_table(out, "flow")
    assert sorted({r["layer"] for r in flow}) == [1, 2]
    vlm = load_videollm(str(model_dir))
    by_id = {s.id: s for s in everything}
    x = vlm.prepare(by_id[expected[0]])
    direct = A.flow_sweep(vlm, x, load_circuit("cross-frame"), k=3, centers=range(1, 3))
    ours = [r for r in flow if r["sample"] == expected[0]]
    assert len(ours) == len(direct)
    for mine, theirs in zip(ours, direct):
        assert mine["token"] == theirs["token"] and mine["correct"] == theirs["correct"]
        assert mine["p_true"] == pytest.approx(theirs["p_true"], rel=1e-6)

    out = tmp_path / "prune"
    assert main(["prune", *common, "--out", str(out), "--random-seeds", "0", "1"]) == 0
    prune = read_table(out, "prune")
    assert {(r["variant"], r["seed"]) for r in prune} == {("full", None), ("pathway", None),
                                                         ("random", 0), ("random", 1)}
    assert "±" in capsys.readouterr().out
    prune_definitions = json.loads((out / "run.json").read_text())["definitions"]
    assert prune_definitions["random_baseline"] == "official-uniform"
    assert prune_definitions["random_ratio"] == ("each sample's blocked fraction "
                                                 "(pathway-synthtv carries no paper ratio)")

    out = tmp_path / "lens"
    assert main(["lens", *common, "--out", str(out), "--mode", "all", "--keywords",
                 "synthtv"]) == 0
    assert read_table(out, "keyword_bins") and read_table(out, "keywords")
    lens_definitions = json.loads((out / "run.json").read_text())["definitions"]
    assert lens_definitions["lens_matrix"] == "embed" and lens_definitions["keyword_bin"] == 5

    out = tmp_path / "prob"
    assert main(["prob", *common, "--out", str(out)]) == 0   # default mode: correct
    samples = read_table(out, "samples")
    prob = read_table(out, "prob")
    correct = {r["sample"] for r in samples if r["selected"]}
    assert {r["sample"] for r in prob} == correct
    assert all(r["base_correct"] == r["selected"] for r in samples)
    assert json.loads((out / "run.json").read_text())["definitions"]["trace_norm"] is False


def test_cli_heads_rows_equal_the_analysis_and_bad_heads_are_refused(model_and_data, tmp_path,
                                                                     capsys):
    """``mapflow-tl heads`` goes through the run orchestration: one row per curve × layer ×
    head of each selected sample, equal to head_sweep run directly; a head the model does not
    have is a one-line error before anything is written."""
    from mapflow_tl.cli import main
    from mapflow_tl.data.datasets import load_dataset
    from mapflow_tl.models import load_videollm
    from mapflow_tl.runs import read_table

    model_dir, data_dir = model_and_data
    common = ["--model", str(model_dir), "--dataset", "tvbench", "--data-root", str(data_dir),
              "--limit", "1", "--mode", "all", "--circuit", "cross-frame"]
    out = tmp_path / "heads"
    assert main(["heads", *common, "--out", str(out), "--window", "3", "--sweep-range", "2", "4",
                 "--heads", "0", "1"]) == 0
    table = read_table(out, "heads")
    sample_id = table[0]["sample"]
    rows = [r for r in table if r["sample"] == sample_id]
    assert {(r["layer"], r["head"]) for r in rows} == {(l, h) for l in (2, 3) for h in (0, 1)}
    assert len(rows) == 4
    vlm = load_videollm(str(model_dir))
    sample = next(s for s in load_dataset("tvbench", data_dir) if s.id == sample_id)
    direct = A.head_sweep(vlm, vlm.prepare(sample), load_circuit("cross-frame"), k=3,
                          centers=range(2, 4), heads=[0, 1])
    assert_rows_close(rows, direct)
    assert main(["heads", *common, "--out", str(tmp_path / "bad"), "--heads", "99"]) == 2
    assert "--heads [99]" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "heads.jsonl").exists()


def test_cli_refuses_bad_sampling_before_writing(model_and_data, tmp_path, capsys):
    from mapflow_tl.cli import main

    model_dir, data_dir = model_and_data
    common = ["--model", str(model_dir), "--dataset", "tvbench", "--data-root", str(data_dir)]
    out = tmp_path / "a"
    assert main(["flow", *common, "--out", str(out), "--limit", "2", "--sample", "2"]) == 2
    assert "pass one of them" in capsys.readouterr().err and not out.exists()
    assert main(["flow", *common, "--out", str(out), "--sweep-range", "3", "99"]) == 2
    assert "--sweep-range 3 99" in capsys.readouterr().err and not out.exists()



def test_resume_refuses_another_sample_draw_or_sweep_range(tmp_path):
    from mapflow_tl.runs import RunFolderError, RunWriter

    config = {"command": "flow", "model": "m", "sample": 2, "sample_seed": 42,
              "sweep_range": None}
    RunWriter(tmp_path, config).write("flow", [{"sample": "1"}])
    for key, value in (("sample", 3), ("sample_seed", 0), ("sweep_range", [1, 3])):
        with pytest.raises(RunFolderError, match=key):
            RunWriter(tmp_path, {**config, key: value}, resume=True)
    RunWriter(tmp_path, config, resume=True).finish()


def test_prune_summary_reads_rows_that_went_through_pandas():
    """The full model and the pathway have no seed; after a DataFrame round trip their seed is
    NaN, which must still be one group, not one seed per row."""
    import pandas as pd

    from mapflow_tl.metrics import prune_summary

    rows = [{"sample": f"s{i}", "task": "T", "variant": variant, "seed": seed,
             "correct": correct, "kept_edges": 1, "total_edges": 2}
            for i in range(4)
            for variant, seed, correct in (("full", None, True), ("pathway", None, i < 3),
                                           ("random", 0, i < 1), ("random", 1, i < 3))]
    through_pandas = pd.DataFrame(rows).to_dict("records")
    for table in (prune_summary(rows), prune_summary(through_pandas)):
        by_variant = {row["variant"]: row for row in table}
        assert by_variant["full"]["seeds"] == 1 and by_variant["pathway"]["accuracy"] == 75.0
        assert by_variant["random"]["seeds"] == 2 and by_variant["random"]["accuracy"] == 50.0
        assert by_variant["random"]["accuracy_sd"] == pytest.approx(35.3553, abs=1e-3)


def test_circuits_may_be_given_by_name(vlm, xs):
    by_name = A.flow_sweep(vlm, xs[0], "cross-frame", k=K)
    assert by_name == A.flow_sweep(vlm, xs[0], load_circuit("cross-frame"), k=K)
    assert A.flow_sweeps(vlm, xs[:1], "cross-frame", k=K) == [by_name]
    with pytest.raises(ValueError, match="takes a list of prepared samples"):
        A.flow_sweeps(vlm, xs[0], ["cross-frame"], k=K)
    with pytest.raises(ValueError, match="no-such-circuit"):
        A.flow_sweep(vlm, xs[0], "no-such-circuit", k=K)
