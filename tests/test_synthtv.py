"""SynthTV: generator, prompt/tokenizer, micro training, and the shipped checkpoints."""

from __future__ import annotations

import collections
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from mapflow_tl.synthtv import build, generator as gen
from mapflow_tl.synthtv.train import MODEL_NAMES, TrainConfig, checkpoint_path, train

# A SynthTV model small enough to train for a few steps in a test.
MICRO = build.ModelConfig(vision_hidden=16, vision_layers=1, vision_heads=2, text_hidden=32,
                          text_layers=2, text_heads=2, text_intermediate=64)


# ----------------------------------------------------------------------------------- generator
def test_generator_is_deterministic_in_the_seed():
    first = gen.generate(gen.ALL_TASKS, 6, seed=3)
    again = gen.generate(gen.ALL_TASKS, 6, seed=3)
    other = gen.generate(gen.ALL_TASKS, 6, seed=4)
    for task in gen.ALL_TASKS:
        for a, b in zip(first[task], again[task]):
            assert (a.question, a.candidates, a.answer) == (b.question, b.candidates, b.answer)
            assert np.array_equal(a.frames, b.frames)
        assert any(not np.array_equal(a.frames, c.frames)
                   for a, c in zip(first[task], other[task]))


@pytest.mark.parametrize("task", gen.ALL_TASKS)
def test_answer_letters_are_balanced(task):
    items = gen.generate_task(task, 120, seed=0)
    by_options = collections.defaultdict(collections.Counter)
    for item in items:
        assert 2 <= len(item.candidates) <= 4
        by_options[len(item.candidates)][item.answer_index] += 1
    for n, counts in by_options.items():
        assert set(counts) == set(range(n)), (task, n, counts)
        assert max(counts.values()) - min(counts.values()) <= 1, (task, n, counts)


def test_vocabulary_separates_spatial_and_temporal_words():
    assert not set(gen.SPATIAL_WORDS) & set(gen.TEMPORAL_WORDS)
    assert {"red", "circle", "forest", "top"} <= set(gen.SPATIAL_WORDS)
    assert {"leftward", "before", "after", "grows", "shrinks", "appears",
            "disappears"} <= set(gen.TEMPORAL_WORDS)
    vocab = build.build_tokenizer().get_vocab()
    assert all(word in vocab for word in gen.SPATIAL_WORDS + gen.TEMPORAL_WORDS)


@pytest.mark.parametrize("task", [t for t in gen.TEMPORAL_TASKS if t != "object_count"])
def test_reversing_the_frames_changes_the_answer(task):
    for item in gen.generate_task(task, 40, seed=5):
        assert gen.answer_from_states(item) == item.answer
        assert gen.answer_from_states(item, item.states[::-1]) != item.answer


def test_object_count_frames_all_show_the_same_number_of_objects():
    answers = set()
    for item in gen.generate_task("object_count", 40, seed=5):
        assert {sum(o.visible for o in s.objects) for s in item.states} == {gen.COUNT_TOTAL}
        answers.add(item.answer)
    assert answers == {"one", "two", "three"}


@pytest.mark.parametrize("task", gen.TEMPORAL_TASKS)
def test_single_frame_check_rejects_a_still_video(task):
    item = gen.make_item(task, 0, 1)
    still = replace(item, states=[item.states[-1]] * gen.N_FRAMES, _frames=None)
    with pytest.raises(ValueError, match=item.name):
        gen.check_item(still)


def test_scene_transition_options_are_the_change_and_its_reverse():
    """TVBench's design: "A to B" against "B to A", A and B the video's first and last places;
    half the items say it the other way round, "B after A" against "A after B"."""
    layouts = collections.Counter()
    for item in gen.generate_task("scene_transition", 40, seed=3):
        first, last = item.states[0].scene, item.states[-1].scene
        assert first != last and item.question == "how does the scene change ?"
        form = item.meta["form"]
        right, wrong = {"to": (f"{first} to {last}", f"{last} to {first}"),
                        "after": (f"{last} after {first}", f"{first} after {last}")}[form]
        assert item.answer == right and sorted(item.candidates) == sorted([right, wrong])
        assert item.named_answer == f"{first} to {last}"
        assert gen.answer_from_states(item, item.states[::-1]) == wrong
        layouts[form, item.answer_index] += 1
    assert layouts == {("to", 0): 10, ("to", 1): 10, ("after", 0): 10, ("after", 1): 10}


@pytest.mark.parametrize("frame", [0, -1])
def test_scene_transition_defeats_matching_one_frame_to_the_first_named_place(frame):
    """A reader of one frame (the first or the last) that picks the option whose first-named
    place is that frame's scene is right on exactly half the items, not on all or none."""
    items = gen.generate_task("scene_transition", 40, seed=4)
    right = [item.candidates.index(next(c for c in item.candidates
                                        if c.split()[0] == item.states[frame].scene))
             == item.answer_index for item in items]
    assert sum(right) == 20


def test_action_sequence_asks_which_of_two_changing_objects_changes_first():
    """Both options are objects that appear or disappear once each, at different frames; the
    answer is the one whose visibility flips first, read here from the states by hand;
    reversed, the video answers the other option."""
    letters, kinds = collections.Counter(), set()
    for item in gen.generate_task("action_sequence", 40, seed=3):
        flips = {}
        for name in item.candidates:
            seen = [any(o.name == name and o.visible for o in s.objects) for s in item.states]
            changes = [t for t in range(1, len(seen)) if seen[t] != seen[t - 1]]
            assert len(changes) == 1, (name, seen)
            flips[name] = changes[0]
            kinds.add("appears" if seen[-1] else "disappears")
        assert len(item.candidates) == 2 and len(set(flips.values())) == 2
        earlier, later = sorted(flips, key=flips.get)
        assert item.question == "which object changes first ?" and item.answer == earlier
        assert gen.answer_from_states(item, item.states[::-1]) == later
        letters[item.answer_index] += 1
    assert letters == {0: 20, 1: 20} and kinds == {"appears", "disappears"}


def test_single_frame_check_rejects_order_free_question():
    """A transition question whose frames go A → B → A reads the same both ways."""
    item = gen.make_item("scene_transition", 0, 2)
    first, second = item.states[0].scene, item.states[-1].scene
    there_and_back = [replace(s, scene=first if t in (0, 7) else second)
                      for t, s in enumerate(item.states)]
    with pytest.raises(ValueError):
        gen.check_item(replace(item, states=there_and_back, _frames=None))


def test_writes_tvbench_json_and_readable_mp4(tmp_path):
    decord = pytest.importorskip("decord")
    items = gen.generate(["moving_direction", "colour"], 2, seed=7)
    counts = gen.write_benchmark(tmp_path, items)
    assert counts == {"moving_direction": 2, "colour": 2}
    entries = json.loads((tmp_path / "json" / "moving_direction.json").read_text())
    assert isinstance(entries, list) and len(entries) == 2
    for entry, item in zip(entries, items["moving_direction"]):
        assert set(entry) == {"video", "question", "candidates", "answer"}
        assert entry["answer"] in entry["candidates"]
        path = tmp_path / "video" / "moving_direction" / entry["video"]
        reader = decord.VideoReader(str(path))
        assert len(reader) == gen.N_FRAMES * gen.MP4_REPEAT
        # segment-midpoint sampling of 8 frames (TVBench's evaluation code) recovers each frame
        n = len(reader) - 1
        step = n / gen.N_FRAMES
        indices = [int(step / 2 + round(step * k)) for k in range(gen.N_FRAMES)]
        frames = reader.get_batch(indices).asnumpy()
        assert frames.shape == item.frames.shape
        assert np.abs(frames.astype(int) - item.frames.astype(int)).mean() < 3.0


def test_benchmark_loader_reads_synthtv(tmp_path):
    benchmarks = pytest.importorskip("mapflow_tl.data.loaders")
    items = gen.generate(["action_antonym", "object_count", "colour"], 3, seed=1)
    gen.write_benchmark(tmp_path, items)
    loaded = benchmarks.load_tvbench(tmp_path)
    assert len(loaded) == 9
    for task, task_items in items.items():
        for item in task_items:
            sample = next(s for s in loaded if s.video.name == f"{item.name}.mp4")
            assert sample.question == item.question
            assert list(sample.options) == item.candidates
            assert sample.answer_index == item.answer_index
            assert sample.bounds is None


def test_cli_generate_writes_json(tmp_path, capsys):
    from mapflow_tl.cli import main

    assert main(["synthtv", "generate", "--out", str(tmp_path), "--per-task", "2", "--seed",
                 "1", "--no-videos"]) == 0
    for task in gen.ALL_TASKS:
        assert len(json.loads((tmp_path / "json" / f"{task}.json").read_text())) == 2


# ----------------------------------------------------------------------------------- prompts
def test_prompt_is_the_chat_template_plus_answer_prefix():
    tokenizer = build.build_tokenizer()
    item = gen.make_item("action_sequence", 0, 3)
    rendered = tokenizer.apply_chat_template(build.messages(item.question, item.candidates),
                                             add_generation_prompt=True, tokenize=False)
    assert rendered + " " + build.ANSWER_PREFIX == build.prompt_text(item.question,
                                                                      item.candidates)
    ids = build.encode_item(item, tokenizer, build.ModelConfig())["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[0] == "<s>" and tokens[-3:] == ["option", ":", "("]
    per_frame = build.tokens_per_frame(build.ModelConfig())
    assert tokens.count("<video>") == gen.N_FRAMES * per_frame == 32
    assert "<unk>" not in tokens


def test_videollm_segment_map_matches_video_positions_and_option_text():
    """SynthTV items go through the one pipeline (VideoLLM.prepare): the frames are exactly the
    <video> positions of the tokenized prompt, the question span decodes to the question."""
    from mapflow_tl.models import load_videollm
    from mapflow_tl.synthtv.evaluate import as_sample

    vlm = load_videollm("synthtv-video-ft")
    item = gen.make_item("moving_direction", 0, 6)
    x = vlm.prepare(as_sample(item))
    seg, ids = x.segments, x.input_ids[0].tolist()
    video_id = vlm.tokenizer.convert_tokens_to_ids("<video>")
    video_positions = [i for i, t in enumerate(ids) if t == video_id]
    assert [p for f in seg.frames for p in f.positions] == video_positions
    assert all(f.grid == (2, 2) for f in seg.frames) and seg.n_frames == gen.N_FRAMES
    assert item.question in vlm.tokenizer.decode(ids[seg.question.start:seg.question.stop])
    assert [o.text for o in seg.options] == list(item.candidates)
    assert seg.true_option.text == item.answer and x.meta["id"] == item.name
    assert seg.last.start == len(ids) - 1


def test_normalize_frames_is_clip_normalisation():
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    x = build.normalize_frames(frames)
    assert x.shape == (2, 3, 32, 32)
    expected = (frames[0, 5, 7, 1] / 255 - build.CLIP_MEAN[1]) / build.CLIP_STD[1]
    assert abs(float(x[0, 1, 5, 7]) - expected) < 1e-6


# ----------------------------------------------------------------------------------- training
def test_micro_training_reduces_the_loss():
    config = TrainConfig(stage="image", steps=40, image_batch=8, video_batch=0, lr=3e-3,
                         warmup=5, model=MICRO)
    model, _, rows = train(config, log=lambda message: None)
    losses = [r["loss"] for r in rows]
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5])

    # reproducible: the same configuration gives the same weights
    again, _, _ = train(replace(config, steps=5), log=lambda message: None)
    twice, _, _ = train(replace(config, steps=5), log=lambda message: None)
    for (name, a), (_, b) in zip(again.state_dict().items(), twice.state_dict().items()):
        assert torch.equal(a, b), name


def test_monitoring_logs_held_out_accuracy_and_leaves_the_weights_unchanged():
    """``train(monitor=…, monitor_every=k)``: called after every k-th step and after the last,
    in eval mode, its figures kept as rows; the trained weights are bitwise those of a run
    without it."""
    config = TrainConfig(stage="video", steps=5, video_batch=4, image_batch=2, text_batch=2,
                         model=MICRO)
    items = gen.generate(["action_sequence", "colour"], 4, seed=1001)
    calls = []

    def monitor(model, tokenizer):
        from mapflow_tl.synthtv.evaluate import evaluate

        calls.append(model.training)
        return {task: row["accuracy"] for task, row in evaluate(model, tokenizer, items).items()}

    lines = []
    watched, _, rows = train(config, log=lines.append, monitor=monitor, monitor_every=2)
    plain, _, _ = train(config, log=lambda message: None)
    assert calls == [False, False, False]
    assert [r["step"] for r in rows if r["phase"] == "monitor"] == [1, 3, 4]
    assert all(0 <= r["colour"] <= 1 for r in rows if r["phase"] == "monitor")
    assert sum(line.startswith("[monitor] after step") for line in lines) == 3
    for (name, a), (_, b) in zip(watched.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="monitor_every=0"):
        train(config, log=lambda message: None, monitor=monitor)


def test_progress_line_averages_the_phases_last_rows_across_monitor_rows():
    """A monitor row between training rows must not shorten the logged window: with losses
    0, 1, …, 49 and a monitor row after step 39, the line at step 49 (every=25) is the mean of
    steps 25…49 = 37, as without monitoring (the ninth session's logs differed at the monitored
    steps only by this)."""
    from mapflow_tl.synthtv.train import _progress

    rows = []
    for step in range(50):
        rows.append({"phase": "video", "step": step, "loss": float(step)})
        if step == 39:
            rows.append({"phase": "monitor", "step": step, "colour": 1.0})
    lines = []
    _progress(lines.append, rows, "video", 49, 50, 0.0, [("loss", "loss")], every=25)
    assert "loss 37.000" in lines[0]


def test_frozen_vision_tower_stays_fixed_while_the_rest_trains():
    """``freeze_vision_tower``: the main loop leaves every vision-tower weight as it was and still
    trains the projector and the language model."""
    config = TrainConfig(stage="image", steps=3, image_batch=4, video_batch=0, text_batch=2,
                         model=MICRO, freeze_vision_tower=True)
    before = build.build_model(MICRO, build.build_tokenizer(), seed=config.seed).state_dict()
    model, _, _ = train(config, log=lambda message: None)
    changed = {name for name, value in model.state_dict().items()
               if not torch.equal(value, before[name])}
    assert not any("vision_tower" in name for name in changed)
    assert any("multi_modal_projector" in name for name in changed)
    assert any("language_model" in name for name in changed)


def test_text_pretraining_phase_learns_to_pick_the_matching_letter():
    """The text-only multiple-choice phase runs before the main loop with its own rows."""
    config = TrainConfig(stage="image", steps=2, image_batch=4, text_batch=0, warmup=5,
                         text_pretrain_steps=60, text_pretrain_batch=32, model=MICRO,
                         open_ended_steps=1)
    _, _, rows = train(config, log=lambda message: None)
    text = [r for r in rows if r["phase"] == "text"]
    assert len(text) == 60 and [r["phase"] for r in rows[60:]] == ["image", "image"]
    assert np.mean([r["loss"] for r in text[-10:]]) < 0.8 * np.mean([r["loss"] for r in text[:5]])
    # open_ended_steps=1: the first main step asks every item open-ended (no letter target)
    assert rows[60]["accuracy"] == 0.0


def test_frame_labels_by_hand():
    from mapflow_tl.synthtv.train import IGNORE, POSITION_BINS, frame_labels

    assert POSITION_BINS == 16        # 2-px bins on a 32-px frame
    colours = list(gen.COLOURS)
    red, blue = colours[0], colours[1]
    state = gen.FrameState(list(gen.SCENES)[1], (
        gen.ObjectState(red, "triangle", x=3.0, y=30.0, radius=5.0),    # bins 1 and 15, size 3
        gen.ObjectState(blue, "circle", x=20.0, y=9.0, radius=2.0, visible=False)))
    labels = frame_labels(state)
    n = len(colours)
    assert len(labels) == 1 + 4 * n and labels[0] == 1
    assert labels[1:1 + n] == [1 + gen.SHAPES.index("triangle")] + [0] * (n - 1)   # blue hidden
    assert labels[1 + n:1 + 2 * n] == [1] + [IGNORE] * (n - 1)          # x: 3.0 // 2
    assert labels[1 + 2 * n:1 + 3 * n] == [15] + [IGNORE] * (n - 1)     # y: 30.0 // 2
    assert labels[1 + 3 * n:] == [3] + [IGNORE] * (n - 1)               # 4.75 < 5.0 < 5.75


def test_vision_loss_weights_the_groups_by_hand():
    """Weighted mean of per-group cross-entropies; a group without labels adds nothing."""
    from mapflow_tl.synthtv.train import IGNORE, vision_loss

    logits = [torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0, 3.0], [0.5, 0.5, 0.0]]),
              torch.tensor([[0.0, 1.0], [1.0, 0.0]])]
    labels = torch.tensor([[0, 2, IGNORE], [1, IGNORE, IGNORE]])

    def ce(row, k):     # -log softmax by hand
        return -math.log(math.exp(row[k]) / sum(math.exp(v) for v in row))

    group0 = (ce([2.0, 0.0], 0) + ce([0.0, 1.0], 1)) / 2
    group1 = ce([1.0, 0.0, 3.0], 2)                        # the second row is IGNORE
    assert math.isclose(float(vision_loss(logits, labels, [1, 5, 1])),
                        (group0 + 5 * group1) / 7, rel_tol=1e-6)
    assert math.isclose(float(vision_loss(logits, labels, [1, 1, 1])),
                        (group0 + group1) / 3, rel_tol=1e-6)


def test_vision_pretraining_trains_only_the_vision_side():
    """The vision phase runs first, lowers its loss, leaves the language model untouched and
    ends with video tokens of unit RMS."""
    config = TrainConfig(stage="image", steps=0, model=MICRO, vision_pretrain_steps=60,
                         vision_pretrain_batch=16, vision_pretrain_lr=3e-3)
    tokenizer = build.build_tokenizer()
    before = build.build_model(MICRO, tokenizer, seed=config.seed)
    model, _, rows = train(config, log=lambda message: None)
    assert [r["phase"] for r in rows] == ["vision"] * 60
    assert np.mean([r["loss"] for r in rows[-5:]]) < 0.92 * np.mean([r["loss"] for r in rows[:5]])
    after = model.state_dict()
    changed = {name for name, value in before.state_dict().items()
               if not torch.equal(value, after[name])}
    assert changed and all("vision_tower" in n or "multi_modal_projector" in n for n in changed)
    assert "model.multi_modal_projector.linear_2.weight" in changed
    assert "model.vision_tower.encoder.layers.0.self_attn.q_proj.weight" in changed
    # the rescaling: tokens of frames the phase never saw have an RMS near one
    items = [gen.make_item(task, 77, 0) for task in gen.ALL_TASKS]
    pixels = build.normalize_frames(np.stack([item.frames[:1] for item in items]))
    with torch.no_grad():
        tokens = model.model.get_video_features(pixel_values_videos=pixels).pooler_output
    assert 0.5 < float(tokens.pow(2).mean(-1).sqrt().mean()) < 2.0


def test_answer_lens_loss_reads_the_prompts_last_position_by_hand():
    """The logit-lens auxiliary loss equals a hand computation from the HF hidden states."""
    from mapflow_tl.synthtv.train import _answer_lens_loss, make_training_batch

    tokenizer = build.build_tokenizer()
    model = build.build_model(MICRO, tokenizer, seed=1)
    items = [gen.make_item("colour", 3, i) for i in range(4)]
    batch = make_training_batch(items, tokenizer, MICRO, open_ended_fraction=0.0)
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    pixel_values_videos=batch["pixel_values_videos"], output_hidden_states=True)
        got = _answer_lens_loss(model, out.hidden_states[1], batch)
        expected = 0.0
        for row, item in enumerate(items):
            ids = batch["input_ids"][row].tolist()
            last = ids.index(tokenizer.convert_tokens_to_ids(build.LETTERS[item.answer_index]),
                             len(ids) - 8) - 1          # the position before the answer letter
            assert tokenizer.convert_ids_to_tokens(ids[last]) == "("
            x = out.hidden_states[1][row, last]
            x = x * torch.rsqrt(x.pow(2).mean() + 1e-6) * model.model.language_model.norm.weight
            logits = x @ model.get_input_embeddings().weight.T          # tied unembedding
            word = tokenizer.convert_tokens_to_ids(item.answer.split()[0])
            expected += float(torch.logsumexp(logits, 0) - logits[word])
    assert abs(float(got) - expected) < 1e-4


def test_open_ended_transition_items_name_the_change_as_a_to_b():
    """Asked without options, a transition item is trained to say "A to B" whichever way its
    options are phrased; with options, "B ) sea after forest" as the item says."""
    from mapflow_tl.synthtv.train import make_training_batch

    tokenizer = build.build_tokenizer()
    items = [item for item in gen.generate_task("scene_transition", 8, seed=5)
             if item.meta["form"] == "after"]
    assert items
    for fraction in (1.0, 0.0):
        batch = make_training_batch(items, tokenizer, MICRO, open_ended_fraction=fraction)
        for row, item in enumerate(items):
            first, last = item.states[0].scene, item.states[-1].scene
            targets = [t for t in batch["targets"][row].tolist() if t != -100]
            said = tokenizer.decode(targets, skip_special_tokens=True).split()
            word = tokenizer.convert_ids_to_tokens(int(batch["answer_word"][row]))
            if fraction:
                assert said == [first, "to", last] and word == first
            else:
                assert said == [build.LETTERS[item.answer_index], ")", last, "after", first]
                assert word == last


def test_answer_lens_layer_is_checked_and_trained():
    config = TrainConfig(stage="image", steps=30, image_batch=8, text_batch=0, lr=3e-3,
                         warmup=5, model=MICRO, answer_lens_layer=1)
    _, _, rows = train(config, log=lambda message: None)
    lens = [r["lens_loss"] for r in rows]
    assert np.mean(lens[-5:]) < 0.85 * np.mean(lens[:5])     # ln(78) = 4.36 at the start
    with pytest.raises(ValueError, match="answer_lens_layer=3: expected 0 .off. or a block 1..2"):
        train(replace(config, answer_lens_layer=3), log=lambda message: None)


def test_train_set_overrides_are_typed_and_checked():
    from mapflow_tl.cli.synthtv import _settings
    from mapflow_tl.synthtv.train import STAGES

    assert _settings(["lr=0.001", "image_batch=64", "init_from=x"], STAGES["image"]) == \
        {"lr": 0.001, "image_batch": 64, "init_from": "x"}
    sized = _settings(["model.text_hidden=96", "model.text_layers=8"], STAGES["image"])
    assert (sized["model"].text_hidden, sized["model"].text_layers) == (96, 8)
    assert sized["model"].vision_hidden == STAGES["image"].model.vision_hidden
    with pytest.raises(SystemExit, match="KEY one of"):
        _settings(["learning_rate=1"], STAGES["image"])
    with pytest.raises(SystemExit, match="image_batch expects type int"):
        _settings(["image_batch=many"], STAGES["image"])


# ----------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("name", sorted(MODEL_NAMES.values()))
def test_shipped_checkpoint_matches_its_model_card(name):
    from mapflow_tl.synthtv.evaluate import TEST_SEED, evaluate, load

    path = checkpoint_path(name)
    if not (path / "measurements.json").exists():
        pytest.skip(f"{name} has not been trained (mapflow-tl synthtv train)")
    weights = path / "model.safetensors"
    assert weights.stat().st_size <= 10 * 2**20
    card = json.loads((path / "measurements.json").read_text())["test_set"]
    assert card["seed"] == TEST_SEED
    model, tokenizer = load(name)
    items = gen.generate(gen.ALL_TASKS, card["per_task"], card["seed"])
    measured = evaluate(model, tokenizer, items)
    for task, row in card["tasks"].items():
        assert abs(measured[task]["accuracy"] - row["accuracy"]) <= 0.02, task
    assert "## Cross-frame knockout" in (path / "README.md").read_text()


def test_text_items_carry_the_lens_target():
    """Text-only "find X" items: the lens target is X, read at the last (left-padded) position."""
    from mapflow_tl.synthtv.train import make_text_batch

    tokenizer = build.build_tokenizer()
    batch = make_text_batch(5, 6, 0, tokenizer)
    for row in range(6):
        tokens = tokenizer.convert_ids_to_tokens(batch["input_ids"][row].tolist())
        assert tokens[int(batch["prompt_last"][row])] == "(" and tokens[-1] == "("
        target = tokens[tokens.index("find") + 1]
        assert tokenizer.convert_ids_to_tokens(int(batch["answer_word"][row])) == target
        letter = tokenizer.convert_ids_to_tokens(int(batch["answer_ids"][row]))
        assert tokens[tokens.index(letter, tokens.index("Options")) + 2] == target


def test_weighted_training_stream_numbers_each_task_consecutively():
    """``video_task_weights`` repeats tasks in the stream's cycle; each task's items are still
    numbered 0, 1, 2, … without gaps or repeats, and in the stated proportions."""
    from collections import Counter

    from mapflow_tl.synthtv.train import _items, task_cycle

    cycle = task_cycle(gen.TEMPORAL_TASKS, "action_sequence:2, object_count:3")
    assert Counter(cycle) == {"action_antonym": 1, "action_sequence": 2, "scene_transition": 1,
                              "moving_direction": 1, "object_count": 3}
    assert task_cycle(gen.TEMPORAL_TASKS, "") == gen.TEMPORAL_TASKS
    indices: dict[str, list[int]] = {}
    for step in range(6):
        for item in _items(cycle, 12, 2, step):
            indices.setdefault(item.task, []).append(item.index)
    for task, seen in indices.items():
        assert seen == list(range(len(seen))), task
    assert len(indices["object_count"]) == 3 * len(indices["action_antonym"]) == 27
    # The unweighted stream is the plain round robin (the shipped image stage relies on it).
    assert [(i.task, i.index) for i in _items(gen.TEMPORAL_TASKS, 7, 2, 1)] == [
        (gen.TEMPORAL_TASKS[k % 5], k // 5) for k in range(7, 14)]
    for bad in ("object_count", "count:2", "object_count:0", "object_count:x"):
        with pytest.raises(ValueError, match="video_task_weights.*object_count"):
            task_cycle(gen.TEMPORAL_TASKS, bad)


def test_training_streams_balance_answer_letters_per_task():
    """Every task of a training stream numbers its own items 0, 1, 2, … as the evaluation sets do,
    so each task sees every answer letter — numbering items by their place in the stream tied
    the option layout (period 5 or 9 in the item index) to the task, and three temporal tasks
    had one fixed answer letter in training."""
    from collections import Counter

    from mapflow_tl.synthtv.train import _items, text_item

    letters: dict[str, Counter] = {}
    for step in range(20):
        for item in _items(gen.TEMPORAL_TASKS, 16, 2, step):
            letters.setdefault(item.task, Counter())[item.answer_index] += 1
    for task in gen.TEMPORAL_TASKS:
        reference = Counter(item.answer_index for item in gen.generate_task(task, 64, 1000))
        assert set(letters[task]) == set(reference), task          # every letter occurs
        total, reference_total = sum(letters[task].values()), sum(reference.values())
        for letter, count in reference.items():       # each letter about as often as in eval
            assert abs(letters[task][letter] / total - count / reference_total) < 0.15, task
    text_letters: dict[int, Counter] = {}
    for index in range(9 * 40):
        _, candidates, answer = text_item(5, index)
        text_letters.setdefault(index % 9, Counter())[answer] += 1
    assert all(len(counter) >= 2 for counter in text_letters.values())


def test_evaluation_set_cache_follows_the_generator(tmp_path, monkeypatch):
    """The cached TVBench copy of the evaluation set is keyed by the items' content: a changed
    generator writes a new folder instead of serving the stale one."""
    pytest.importorskip("decord")
    from mapflow_tl.synthtv.dataset import load_synthtv as synthtv_samples

    first = synthtv_samples(tasks=["moving_direction"], limit=2, cache=tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    assert synthtv_samples(tasks=["moving_direction"], limit=2, cache=tmp_path)[0].question \
        == first[0].question and len(list(tmp_path.iterdir())) == 1          # reused
    original = gen.generate

    def reworded(tasks, per_task, seed):
        items = original(tasks, per_task, seed)
        for item in items["moving_direction"]:
            item.question = item.question.replace("which way", "where")
        return items

    monkeypatch.setattr(gen, "generate", reworded)
    changed = synthtv_samples(tasks=["moving_direction"], limit=2, cache=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2
    assert changed[0].question.startswith("where does")


def test_cli_train_with_monitoring_records_the_curve_and_the_training_time(tmp_path):
    from mapflow_tl.cli import main

    out = tmp_path / "micro"
    assert main(["synthtv", "train", "--stage", "image", "--steps", "3", "--out", str(out),
                 "--no-knockout", "--eval-every", "2", "--eval-per-task", "2", "--set",
                 "vision_pretrain_steps=0", "text_pretrain_steps=0", "image_batch=4",
                 "text_batch=2", "answer_lens_layer=2", "model.text_hidden=32",
                 "model.text_layers=2", "model.text_heads=2", "model.text_intermediate=64",
                 "model.vision_hidden=16", "model.vision_layers=1",
                 "model.vision_heads=2"]) == 0
    training = json.loads((out / "training.json").read_text())
    curve = training["monitor"]
    assert [row["step"] for row in curve] == [1, 2]
    assert set(gen.ALL_TASKS) <= set(curve[0]) and all(0 <= curve[0][t] <= 100
                                                         for t in gen.ALL_TASKS)
    assert training["monitor_seconds"] > 0 and training["train_seconds"] > 0
