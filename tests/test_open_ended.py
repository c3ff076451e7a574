"""Open-ended flow (issue 35): greedy generation with and without the key/value cache, anchors,
the answer's segments and edges, the knockout probability of a teacher-forced answer against the
Hugging Face model with explicit masks, and ``flow --open-ended`` end to end with resume."""

from __future__ import annotations

import importlib.util
import json
import math
import sys

import numpy as np
import pytest
import torch

from mapflow_tl import edges
from mapflow_tl.anchors import find_anchors
from mapflow_tl.errors import InputError
from mapflow_tl.schema import BASE_COLUMNS, TABLES
from mapflow_tl.segments import SegmentMap
from mapflow_tl.testing import additive_mask, block_mask, hf_logits_with_layer_masks

pytestmark = pytest.mark.usefixtures("one_thread")
build = pytest.importorskip("mapflow_tl.synthtv.build")


@pytest.fixture(scope="module")
def synthtv_vlm(model_and_data):
    from mapflow_tl.models import load_videollm

    model_dir, _ = model_and_data
    return load_videollm(model_dir, dtype=torch.float32)


@pytest.fixture(scope="module")
def open_prompt(synthtv_vlm):
    from mapflow_tl.models import VideoSample

    size = build.ModelConfig().image_size
    frames = np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    return synthtv_vlm.prepare(VideoSample(frames, "what does the red circle do ?"))


# ---------------------------------------------------------------------- generation
def test_generation_with_the_cache_equals_generation_without_it(synthtv_vlm, open_prompt):
    cached, cached_logits = synthtv_vlm.generate(open_prompt, 8, stop_ids=[])
    full, full_logits = synthtv_vlm.generate(open_prompt, 8, use_cache=False, stop_ids=[])
    assert cached.tolist() == full.tolist() and len(cached) == 8
    assert (cached_logits - full_logits).abs().max() <= 1e-4
    # every step's logits are the full forward's on the sequence so far (teacher forcing)
    extended = synthtv_vlm.extend(open_prompt, cached[:-1].tolist())
    logits = synthtv_vlm(extended)[0, open_prompt.n_positions - 1:]
    assert (logits - cached_logits).abs().max() <= 1e-4


def test_generation_stops_at_the_end_token_and_keeps_it(synthtv_vlm, open_prompt):
    free, _ = synthtv_vlm.generate(open_prompt, 6, stop_ids=[])
    stopped, _ = synthtv_vlm.generate(open_prompt, 6, stop_ids=[int(free[2])])
    assert stopped.tolist() == free[:free.tolist().index(int(free[2])) + 1].tolist()


def test_knockout_during_generation_cache_equals_no_cache_and_copies_the_last_row(
        synthtv_vlm, open_prompt):
    from mapflow_tl.hooks import _GenerationKnockoutHook, knockout, knockout_during_generation

    x = open_prompt
    cut = edges.video_to_last(x.segments)
    hooks = knockout_during_generation(cut, [1, 2, 3], x.n_positions, n_layers=8)
    cached, cached_logits = synthtv_vlm.generate(x, 5, fwd_hooks=hooks, stop_ids=[])
    full, full_logits = synthtv_vlm.generate(x, 5, fwd_hooks=hooks, use_cache=False,
                                             stop_ids=[])
    assert cached.tolist() == full.tolist()
    assert (cached_logits - full_logits).abs().max() <= 1e-4
    # the first step is the teacher-forced knockout
    first = synthtv_vlm.run_with_hooks(x, knockout(cut, [1, 2, 3]))[0, -1]
    assert (first - cached_logits[0]).abs().max() <= 1e-4
    # generated queries block what the last prompt position blocks; generated keys stay open
    n = 10
    small = SegmentMap.sequential(frames=[(1, 3)], question=3, before_last=2)
    hook = _GenerationKnockoutHook(edges.video_to_last(small), small.n_positions)
    mask = hook.mask(n + 3, torch.device("cpu"))
    dense = edges.video_to_last(small).dense(small.n_positions)
    assert small.n_positions == 9 and torch.equal(mask[:9, :9], dense)
    for row in range(9, n + 3):
        assert mask[row, :9].tolist() == dense[8].tolist() and not mask[row, 9:].any()


def test_appended_text_continues_from_the_largest_3d_position_by_hand():
    from mapflow_tl.models.native_adapter import continue_text_positions

    # text 0-1, a video whose temporal positions (2, 6) reach past its height/width (2, 3)
    # and the text after it (4, 5): HF's generation continues from the maximum, 6 + 1
    prompt = torch.tensor([[0, 1, 2, 2, 6, 6, 4, 5],
                           [0, 1, 2, 3, 2, 3, 4, 5],
                           [0, 1, 2, 2, 3, 3, 4, 5]])[:, None]
    continued = continue_text_positions(prompt, 3)
    assert continued.shape == (3, 1, 11) and torch.equal(continued[:, :, :8], prompt)
    assert continued[:, 0, 8:].tolist() == [[7, 8, 9]] * 3
    # rope_deltas = max + 1 − n, added to the cache positions n, n + 1, … (HF's generation)
    assert continued[0, 0, 8:].tolist() == [p + (6 + 1 - 8) for p in (8, 9, 10)]
    assert torch.equal(continue_text_positions(prompt, 0), prompt)
    with pytest.raises(InputError, match="position ids"):
        continue_text_positions(prompt[0], 1)


# ---------------------------------------------------------------------- anchors
class _Pieces:
    """A tokenizer of fixed pieces: decode joins them (a piece starting with a space starts a
    word), as a byte-level tokenizer would."""

    all_special_ids = [0]

    def __init__(self, pieces):
        self.pieces = pieces

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.pieces[i] for i in ids
                       if not (skip_special_tokens and i in self.all_special_ids))


def test_anchors_content_words_and_official_two_token_match():
    pieces = ["</s>", " The", " man", " is", " speak", "ing", " to", " the", " dog", ".", " He",
              " run", "s"]
    tokenizer = _Pieces(pieces)
    ids = list(range(1, len(pieces))) + [0]
    # content: first tokens of words with a letter that are not function words; no "ing", "s"
    # (inside words), no "." and no end token
    assert [(a.index, a.text) for a in find_anchors(tokenizer, ids)] == [
        (1, "man"), (3, "speak"), (7, "dog"), (10, "run")]
    # words: one token, or two tokens decoded and joined (the official verb matching)
    found = find_anchors(tokenizer, ids, "words", words=["speaking", "dog", "runs"])
    assert [(a.index, a.n_tokens, a.text) for a in found] == [
        (3, 2, "speaking"), (7, 1, "dog"), (10, 2, "runs")]
    with pytest.raises(InputError, match="word list"):
        find_anchors(tokenizer, ids, "words")
    with pytest.raises(InputError, match="anchor method"):
        find_anchors(tokenizer, ids, "nouns")


def test_anchors_on_synthtvs_word_level_tokenizer():
    tokenizer = build.build_tokenizer()
    ids = tokenizer("the red circle grows to the left", add_special_tokens=False)["input_ids"]
    assert [a.text for a in find_anchors(tokenizer, ids)] == ["red", "circle", "grows", "left"]
    assert [a.index for a in find_anchors(tokenizer, ids, "words", words=["left"])] == [6]


def test_verbs_need_spacy_and_say_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)   # import spacy raises ImportError
    with pytest.raises(InputError, match="pip install spacy"):
        find_anchors(_Pieces(["</s>", " run"]), [1], "verbs")


def test_verbs_with_spacy_when_installed():
    spacy = pytest.importorskip("spacy")
    try:
        spacy.load("en_core_web_lg")
    except OSError:
        pytest.skip("spaCy's en_core_web_lg model is not installed")
    pieces = ["</s>", " The", " man", " is", " speak", "ing", " to", " the", " dog"]
    found = find_anchors(_Pieces(pieces), list(range(1, len(pieces))), "verbs")
    assert [a.text for a in found] == ["speaking"]


# ---------------------------------------------------------------------- segments and edges
def test_response_span_and_official_non_last_response_by_hand():
    prompt = SegmentMap.sequential(frames=[(1, 2)], question=3, before_last=1)   # 7 positions
    seg = prompt.with_response(6, anchors=[("anchor_1", 8, 9)])                # answer 7 … 12
    assert seg.n_positions == 13 and (seg.last.start, seg.response.start,
                                      seg.response.stop) == (12, 7, 12)
    assert SegmentMap.from_dict(json.loads(seg.to_json())) == seg
    # one open token: the response without its last token …
    assert list(edges.official_response_span(seg, 1)) == [7, 8, 9, 10]
    # … unless the last earlier anchor starts there (official: it stays blocked)
    late = prompt.with_response(6, anchors=[("anchor_1", 11, 12)])
    assert list(edges.official_response_span(late, 1)) == list(range(7, 12))
    # at least one token
    short = prompt.with_response(2)
    assert list(edges.official_response_span(short, 3)) == [7]
    assert prompt.with_response(1).response is None
    with pytest.raises(InputError, match="no 'response'"):
        edges.video_to_response(prompt.with_response(1))
    with pytest.raises(InputError, match="outside 'response'"):
        prompt.with_response(3, anchors=[("anchor_1", 9, 10)])
    video, question = list(seg.video), list(seg.question)
    for built, pairs in [
        (edges.video_to_response(seg, open_tokens=1), [(video, [7, 8, 9, 10])]),
        (edges.question_to_response(seg), [(question, range(7, 12))]),
        (edges.response_to_response(seg), [(range(7, 12), range(7, 12))]),
        (edges.response_to_last(seg, open_tokens=1), [([7, 8, 9, 10], [12])]),
        (edges.anchors_to_last(seg), [([8], [12])]),
    ]:
        assert torch.equal(built.dense(13), block_mask(13, pairs)), built


# ---------------------------------------------------------------------- against HF
def _question_positions(tokenizer, input_ids, question):
    """Where the question's tokens sit in the prompt, found by searching the ids (no
    mapflow-tl code)."""
    wanted = tokenizer(question, add_special_tokens=False)["input_ids"]
    ids = input_ids.tolist()
    for start in range(len(ids) - len(wanted) + 1):
        if ids[start:start + len(wanted)] == wanted:
            return list(range(start, start + len(wanted)))
    raise AssertionError("question not found")


def _official_non_last_response(answer, earlier_anchor_starts, open_tokens=1):
    """The official script's blocked "non-last response" (information_flow_analysis_open_ended.py
    lines 311-323), restated: the answer before the last position less its last ``open_tokens``,
    but keeping the last earlier anchor, and at least one token."""
    answer = list(answer)
    if earlier_anchor_starts and earlier_anchor_starts[-1] in answer:
        end = max(answer.index(earlier_anchor_starts[-1]) + 1, len(answer) - open_tokens)
    else:
        end = len(answer) - open_tokens
    return answer[:max(1, end)]


def test_open_ended_knockout_probability_equals_hf_with_explicit_masks(
        synthtv_vlm, open_prompt, model_and_data):
    from transformers import LlavaNextVideoForConditionalGeneration

    from mapflow_tl import analyses

    vlm, x = synthtv_vlm, open_prompt
    response, _ = vlm.generate(x, 8, stop_ids=[])
    ids = response.tolist()
    # every answer token an anchor: anchors 3, 4, 5 sit at answer positions 2, 3, 4, with the
    # earlier ones inside the response
    words = sorted({vlm.tokenizer.decode([i]) for i in ids})
    result = analyses.open_ended_flow(vlm, x, ["open-ended", "open-ended-response"],
                                      anchors="words", words=words, n_anchors=5,
                                      max_new_tokens=8, k=3, centers=[0, 3, 7])
    rows = result["rows"]
    assert result["selected"] and result["answer"]["traced"] == [3, 4, 5]
    assert len(rows) == 3 * 8 * 3
    assert {(r["anchor_order"], r["anchor_position"]) for r in rows} == {(3, 2), (4, 3), (5, 4)}
    assert all(tuple(row) == TABLES["open_ended"] for row in rows)
    assert tuple(result["answer"]) == TABLES["answers"]
    assert tuple(result["base"]) == BASE_COLUMNS

    # a given answer with function words between its anchors: the official open token applies
    given = vlm.tokenizer("the red square grows after the circle shrinks",
                          add_special_tokens=False)["input_ids"]
    forced = analyses.open_ended_flow(vlm, x, ["open-ended", "open-ended-response"],
                                      n_anchors=6, k=3, centers=[0, 3, 7], answer_ids=given)
    # content anchors red 1, square 2, grows 3, after 4, circle 6, shrinks 7: anchor 1
    # (position 1) has no "non-last response"; for "shrinks" the token before "circle" is open
    assert forced["answer"]["traced"] == [2, 3, 4, 5, 6]
    check = [(ids, rows, (2, 3, 4), lambda j: list(range(j))),
             (given, forced["rows"], (2, 3, 4, 6, 7), lambda j: [1, 2, 3, 4, 6, 7])]

    model_dir, _ = model_and_data
    hf = LlavaNextVideoForConditionalGeneration.from_pretrained(
        model_dir, attn_implementation="eager").eval()
    heads = hf.config.text_config.num_attention_heads
    P = x.n_positions
    question = _question_positions(vlm.tokenizer, x.input_ids[0], "what does the red circle do ?")
    pixels = x.meta["pixel_values_videos"]
    cases = [(answer_ids, answer_rows, j, anchors(j)) for answer_ids, answer_rows, js, anchors
             in check for j in js]
    for ids, rows, j, anchor_indices in cases:
        input_ids = torch.cat([x.input_ids[0], torch.tensor(ids[:j])])[None]
        n = input_ids.shape[1]
        video = (input_ids[0] == hf.config.video_token_id).nonzero()[:, 0].tolist()
        last, answer = [n - 1], list(range(P, n - 1))
        blocked_answer = _official_non_last_response(
            answer, [P + i for i in anchor_indices if i < j - 1])
        hand = {
            ("open-ended", "video → question"): [(video, question)],
            ("open-ended", "video → response"): [(video, blocked_answer)],
            ("open-ended", "video → last"): [(video, last)],
            ("open-ended", "question → last"): [(question, last)],
            ("open-ended", "response → last"): [(blocked_answer, last)],
            ("open-ended-response", "video → response"): [(video, answer)],
            ("open-ended-response", "question → response"): [(question, answer)],
            ("open-ended-response", "response → response"): [(answer, answer)],
        }
        causal = additive_mask(n, None, heads)
        with torch.no_grad():
            clean = hf(input_ids=input_ids, pixel_values_videos=pixels).logits[0, -1].softmax(-1)
        anchor_rows = [r for r in rows if r["anchor_position"] == j]
        assert abs(float(clean[ids[j]]) - anchor_rows[0]["base_p"]) <= 1e-4
        for row in anchor_rows:
            centre = row["layer"]
            layers = range(max(0, centre - 1), min(8, centre + 2))
            assert row["layers"] == list(layers) and row["anchor_token"] == ids[j]
            blocked = additive_mask(n, block_mask(n, hand[row["circuit"], row["curve"]]), heads)
            logits = hf_logits_with_layer_masks(hf, {layer: blocked for layer in layers},
                                                causal, input_ids=input_ids,
                                                pixel_values_videos=pixels)
            p = float(logits[0, -1].softmax(-1)[ids[j]])
            assert abs(p - row["p"]) <= 1e-4, (row["curve"], j, centre, p, row["p"])
            # and relatively: this untrained model's probabilities are ~1/vocab, where 1e-4
            # absolute would hide a wrong edge
            assert abs(math.log(p) - math.log(row["p"])) <= 1e-4, (row["curve"], j, centre)
            assert abs(row["change"] - (row["p"] - row["base_p"]) / row["base_p"] * 100) <= 1e-6


def test_fast_and_naive_sweeps_give_the_same_open_ended_rows(synthtv_vlm, open_prompt):
    from mapflow_tl import analyses

    kwargs = dict(anchors="content", n_anchors=4, min_anchors=1, max_new_tokens=6, k=3)
    fast = analyses.open_ended_flow(synthtv_vlm, open_prompt, "open-ended", **kwargs)
    naive = analyses.open_ended_flow(synthtv_vlm, open_prompt, "open-ended", method="naive",
                                     **kwargs)
    assert len(fast["rows"]) == len(naive["rows"]) > 0
    for a, b in zip(fast["rows"], naive["rows"]):
        assert (a["curve"], a["layer"], a["anchor_order"]) == (b["curve"], b["layer"],
                                                               b["anchor_order"])
        assert abs(a["p"] - b["p"]) <= 1e-5


# ---------------------------------------------------------------------- command line
def test_flow_open_ended_end_to_end_with_resume(model_and_data, tmp_path, capsys):
    from mapflow_tl.cli import main
    from mapflow_tl.report import build_report
    from mapflow_tl.runs import read_run_config, read_table

    model_dir, data_dir = model_and_data
    out = tmp_path / "run"
    argv = ["flow", "--open-ended", "--model", str(model_dir), "--dataset", "tvbench",
            "--data-root", str(data_dir), "--limit", "1", "--out", str(out),
            "--max-new-tokens", "6", "--n-anchors", "4", "--question-prefix", "Question: ",
            "--answer-prompt", "Best option:(", "--knockout-generation", "2",
            "--sweep-range", "2", "5"]
    assert main(argv) == 0
    rows, answers = read_table(out, "open_ended"), read_table(out, "answers")
    samples = read_table(out, "samples")
    assert len(answers) == len(samples) == 2
    traced = [a for a in answers if a["traced"]]
    assert rows and len(rows) == sum(len(a["traced"]) for a in traced) * 5 * 3
    assert {r["layer"] for r in rows} == {2, 3, 4}
    assert all(isinstance(r["knockout_response"], str) for r in rows)
    config = read_run_config(out)
    assert config["answer_prompt"] == "Best option:(" and config["open_ended"] is True
    assert config["definitions"]["anchors"] == "content"
    # resume: nothing recomputed, nothing duplicated
    assert main(argv + ["--resume"]) == 0
    assert read_table(out, "open_ended") == rows and len(read_table(out, "answers")) == 2
    # a sample whose rows went missing is computed again
    lines = (out / "open_ended.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["sample"] != rows[0]["sample"]]
    (out / "open_ended.jsonl").write_text("".join(line + "\n" for line in kept))
    assert main(argv + ["--resume"]) == 0
    again = read_table(out, "open_ended")
    assert len(again) == len(rows)
    report = build_report(out)
    assert "Flow into the open-ended answer" in report.read_text()


def test_open_ended_options_without_open_ended_are_refused(model_and_data, tmp_path, capsys):
    from mapflow_tl.cli import main

    model_dir, data_dir = model_and_data
    out = tmp_path / "run"
    base = ["flow", "--model", str(model_dir), "--dataset", "tvbench", "--data-root",
            str(data_dir), "--limit", "1", "--out", str(out)]
    assert main(base + ["--anchors", "words"]) == 2
    assert "--anchors apply to open-ended flows only" in capsys.readouterr().err
    assert main(base + ["--open-ended", "--mode", "all"]) == 2
    assert "--mode" in capsys.readouterr().err
    assert main(base + ["--open-ended", "--correctness", "token-id"]) == 2
    assert "--correctness" in capsys.readouterr().err
    assert main(base + ["--open-ended", "--anchors", "words"]) == 2
    assert "--anchor-words" in capsys.readouterr().err
    if importlib.util.find_spec("spacy") is None:
        assert main(base + ["--open-ended", "--anchors", "verbs"]) == 2
        assert "pip install spacy" in capsys.readouterr().err
    assert not out.exists()


def test_generation_ends_at_the_backbones_context(tiny_backbone):
    from mapflow_tl.models.backbone import generate_from_embeds

    n_ctx = tiny_backbone.cfg.n_ctx
    embeds = torch.randn(1, n_ctx - 3, tiny_backbone.cfg.d_model)
    tokens, logits = generate_from_embeds(tiny_backbone, embeds, max_new_tokens=10)
    assert len(tokens) == 3 and logits.shape[0] == 3
    with pytest.raises(InputError, match="no room for an answer"):
        generate_from_embeds(tiny_backbone, torch.randn(1, n_ctx, tiny_backbone.cfg.d_model),
                             max_new_tokens=1)
