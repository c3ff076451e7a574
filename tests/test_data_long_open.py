"""Video-MME, LongVideoBench, TVBench open-ended and VCGBench: loaders and ``mapflow-tl data
check`` on hand-made fixtures in each benchmark's published layout (docs/data.md cites them):

- Video-MME (HF lmms-lab/Video-MME): videomme/test-00000-of-00001.parquet with the columns
  video_id, duration, domain, sub_category, url, videoID, question_id, task_type, question,
  options ("A. ..." lettered), answer (a letter); videos at data/<videoID>.mp4.
- LongVideoBench (HF longvideobench/LongVideoBench): lvb_val.json, a list of {video_id,
  question, candidates, correct_choice, question_category, video_path, duration, ...}; videos at
  videos/<video_path>.
- TVBench open-ended: TVBench's own layout (json/<task>.json, video/<task>/), asked without
  options with the official per-task answer prompts.
- VCGBench (Video-ChatGPT): Benchmarking_QA/{generic,temporal,consistency}_qa.json with
  {Q, A, video_name} (consistency: Q1, Q2, A, video_name); videos at Test_Videos/<name>.mp4.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mapflow_tl.cli import main
from mapflow_tl.data import DataError, list_datasets, load_dataset

av = pytest.importorskip("av")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def write_mp4(path: Path, n_frames: int = 20, fps: int = 10) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(n_frames):
            frame = np.full((32, 32, 3), 8 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("src") / "clip.mp4")


def place(mp4: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mp4, path)


def dump(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


VIDEOMME_ROWS = [
    # two rows as the published parquet has them (values from its first entries, shortened)
    {"video_id": "001", "duration": "short", "domain": "Knowledge",
     "sub_category": "Humanity & History", "url": "https://www.youtube.com/watch?v=fFjv93ACGo8",
     "videoID": "fFjv93ACGo8", "question_id": "001-1", "task_type": "Counting Problem",
     "question": "When demonstrating the Germany modern Christmas tree is initially decorated "
                 "with apples, candles and berries, which kind of the decoration has the "
                 "largest number?",
     "options": ["A. Apples.", "B. Candles.", "C. Berries.", "D. The three kinds are of the "
                                                                "same number."],
     "answer": "C"},
    {"video_id": "001", "duration": "short", "domain": "Knowledge",
     "sub_category": "Humanity & History", "url": "https://www.youtube.com/watch?v=fFjv93ACGo8",
     "videoID": "fFjv93ACGo8", "question_id": "001-2", "task_type": "Information Synopsis",
     "question": "What is the genre of this video?",
     "options": ["A. It is a news report.", "B. It is a documentary.", "C. It is a vlog.",
                 "D. It is a tutorial."],
     "answer": "B"},
]


def write_videomme(root: Path, rows, mp4: Path | None = None) -> Path:
    (root / "videomme").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "videomme" / "test-00000-of-00001.parquet")
    if mp4 is not None:
        place(mp4, root / "data" / "fFjv93ACGo8.mp4")
    return root


@pytest.fixture
def videomme(tmp_path, mp4) -> Path:
    return write_videomme(tmp_path / "Video-MME", VIDEOMME_ROWS, mp4)


LVB_ENTRIES = [
    {"video_id": "86CxyhFV9MI", "question": "In the video, which subtitles appear at the same "
                                            "time as the man with black hair?",
     "question_wo_referring_query": "Which subtitles appear at the same time?",
     "candidates": ["promisc has come to an end", "come on, run", "that's all", "go on"],
     "correct_choice": 1, "position": [1, 2], "topic_category": "NP-News-Programs",
     "question_category": "TOS", "level": "L2-Relation", "id": "86CxyhFV9MI_0",
     "video_path": "86CxyhFV9MI.mp4", "subtitle_path": "86CxyhFV9MI_en.json",
     "duration_group": 600, "starting_timestamp_for_subtitles": 0, "duration": 2.0,
     "view_count": 1000},
    {"video_id": "QS2HD3BXRB8", "question": "What happens after the woman opens the box?",
     "candidates": ["she laughs", "she cries", "she leaves"], "correct_choice": 0,
     "topic_category": "LF-Life", "question_category": "E3E", "level": "L1-Perception",
     "id": "QS2HD3BXRB8_1", "video_path": "QS2HD3BXRB8.mp4",
     "subtitle_path": "QS2HD3BXRB8_en.json", "duration_group": 15,
     "starting_timestamp_for_subtitles": 0, "duration": 1.5, "view_count": 20},
]


@pytest.fixture
def lvb(tmp_path, mp4) -> Path:
    root = tmp_path / "LongVideoBench"
    dump(root / "lvb_val.json", LVB_ENTRIES)
    for entry in LVB_ENTRIES:
        place(mp4, root / "videos" / entry["video_path"])
    return root


@pytest.fixture
def tvbench(tmp_path, mp4) -> Path:
    root = tmp_path / "TVBench"
    tasks = {
        "action_antonym": [{"video": "a.mp4", "question": "What is the person doing?",
                            "candidates": ["Taking off a shoe.", "Putting on a shoe."],
                            "answer": "Putting on a shoe."}],
        "action_localization": [{"video": "b.mp4", "question": "During which part of the video "
                                 "does the action 'person sitting down' occur?",
                                 "candidates": ["At the beginning of the video.",
                                                "In the middle of the video."],
                                 "answer": "In the middle of the video.", "start": 0.0,
                                 "end": 1.5}],
        "moving_direction": [{"video": "c.mp4", "question": "What direction does the cyan "
                              "sphere move in the video?",
                              "candidates": ["Moving left.", "Moving right."],
                              "answer": "Moving right."}],
        "object_count": [{"video": "d.mp4", "question": "How many metal objects are moving "
                          "when the video ends?", "candidates": ["2", "3"], "answer": "3"}],
        "scene_transition": [{"video": "e.mp4", "question": "What's the right option?",
                              "candidates": ["From the kitchen to the garden.",
                                             "From the garden to the kitchen."],
                              "answer": "From the kitchen to the garden."}],
        "unexpected_action": [{"video": "f.mp4", "question": "What is funny in the video?",
                               "candidates": ["A cat falls.", "A dog sings."],
                               "answer": "A dog sings."}],
    }
    for task, entries in tasks.items():
        dump(root / "json" / f"{task}.json", entries)
        for entry in entries:
            place(mp4, root / "video" / task / entry["video"])
    return root


@pytest.fixture
def vcgbench(tmp_path, mp4) -> Path:
    root = tmp_path / "VCGBench"
    qa = root / "Benchmarking_QA"
    dump(qa / "generic_qa.json", [
        {"Q": "What is the man doing in the video?", "A": "The man is juggling three balls.",
         "video_name": "v_1"}])
    dump(qa / "temporal_qa.json", [
        {"Q": "What does the woman do after sitting down?", "A": "She opens a book.",
         "video_name": "v_2"}])
    dump(qa / "consistency_qa.json", [
        {"Q1": "What is the parrot eating from the pink coffee cup?",
         "Q2": "On what container is the butterfly painted?",
         "A": "The parrot is eating cream from a pink coffee cup with a butterfly on it.",
         "video_name": "v_IN23CO8Kotk"}])
    place(mp4, root / "Test_Videos" / "v_1.mp4")
    place(mp4, root / "Test_Videos" / "v_2.mkv")   # the official loader tries .mp4 then .mkv
    place(mp4, root / "Test_Videos" / "v_IN23CO8Kotk.mp4")
    return root


def test_registry_lists_the_new_benchmarks():
    for name in ("videomme", "longvideobench", "tvbench-oe", "vcgbench"):
        assert name in list_datasets(builtin=False)


def test_videomme_loads_the_published_parquet(videomme):
    data = load_dataset("videomme", videomme)
    assert [s.id for s in data] == ["Counting Problem/001-1", "Information Synopsis/001-2"]
    first = data[0]
    assert first.options == ("Apples.", "Candles.", "Berries.",
                             "The three kinds are of the same number.")
    assert first.answer_index == 2 and first.answer_letter == "C" and first.answer == "Berries."
    assert first.video == videomme / "data" / "fFjv93ACGo8.mp4" and first.bounds is None
    assert first.metadata["duration"] == "short" and first.metadata["domain"] == "Knowledge"
    assert data.counts() == {"Counting Problem": 1, "Information Synopsis": 1}
    assert [s.id for s in load_dataset("videomme", videomme, tasks=["information synopsis"])] \
        == ["Information Synopsis/001-2"]


def test_videomme_written_by_pandas_loads_too(tmp_path, mp4):
    """``datasets``/pandas write list columns that read back as arrays: the same samples."""
    pd = pytest.importorskip("pandas")
    root = tmp_path / "VM"
    (root / "videomme").mkdir(parents=True)
    pd.DataFrame(VIDEOMME_ROWS).to_parquet(root / "videomme" / "test-00000-of-00001.parquet")
    place(mp4, root / "data" / "fFjv93ACGo8.mp4")
    assert [s.options for s in load_dataset("videomme", root)] == \
        [("Apples.", "Candles.", "Berries.", "The three kinds are of the same number."),
         ("It is a news report.", "It is a documentary.", "It is a vlog.",
          "It is a tutorial.")]


@pytest.mark.parametrize("change, field, reason", [
    ({"answer": "E"}, "answer", "not one of the option letters A, B, C, D"),
    ({"answer": None}, "answer", "not one of the option letters"),
    ({"options": ["Apples.", "B. Candles."]}, "options", "does not start with its letter 'A.'"),
    ({"videoID": "nowhere"}, "video", "video not found"),
    ({"videoID": "../../etc/passwd"}, "video", "outside the benchmark root"),
])
def test_videomme_bad_rows_are_one_line_errors(tmp_path, mp4, change, field, reason):
    rows = [dict(VIDEOMME_ROWS[0], **change), VIDEOMME_ROWS[1]]
    root = write_videomme(tmp_path / "VM", rows, mp4)
    with pytest.raises(DataError) as error:
        load_dataset("videomme", root)
    message = str(error.value)
    assert "\n" not in message and f"entry 0 field '{field}'" in message and reason in message
    loose = load_dataset("videomme", root, strict=False)
    assert [s.id for s in loose] == ["Information Synopsis/001-2"]
    assert [(p.index, p.field) for p in loose.skipped] == [(0, field)]


def test_videomme_missing_columns_name_them(tmp_path, mp4):
    rows = [{k: v for k, v in row.items() if k != "answer"} for row in VIDEOMME_ROWS]
    root = write_videomme(tmp_path / "VM", rows, mp4)
    with pytest.raises(DataError, match=r"missing column\(s\) \['answer'\]"):
        load_dataset("videomme", root)
    with pytest.raises(DataError, match="videomme: not found; a Video-MME data root"):
        load_dataset("videomme", tmp_path / "elsewhere")


def test_longvideobench_loads_the_published_json(lvb):
    data = load_dataset("longvideobench", lvb)
    assert [s.id for s in data] == ["TOS/86CxyhFV9MI_0", "E3E/QS2HD3BXRB8_1"]
    first = data[0]
    assert first.answer == "come on, run" and first.answer_letter == "B"
    assert first.video == lvb / "videos" / "86CxyhFV9MI.mp4"
    assert first.metadata["subtitle_path"] == "86CxyhFV9MI_en.json"   # kept, read on request
    assert first.metadata["duration"] == first.duration == 2.0
    assert first.frame_sampler == "longvideobench" and first.subtitles is None
    assert [s.id for s in load_dataset("longvideobench", lvb, tasks=["E3E"])] == \
        ["E3E/QS2HD3BXRB8_1"]
    assert load_dataset("longvideobench", lvb, limit=1).counts() == {"TOS": 1, "E3E": 1}


@pytest.mark.parametrize("change, field, reason", [
    ({"correct_choice": 4}, "correct_choice", "not among the 4 options"),
    ({"correct_choice": True}, "correct_choice", "not an option index"),
    ({"candidates": ["only one"]}, "candidates", "at least 2 options"),
    ({"video_path": "gone.mp4"}, "video", "video not found"),
])
def test_longvideobench_bad_entries(lvb, change, field, reason):
    entries = [dict(LVB_ENTRIES[0], **change), LVB_ENTRIES[1]]
    dump(lvb / "lvb_val.json", entries)
    with pytest.raises(DataError) as error:
        load_dataset("longvideobench", lvb)
    assert "\n" not in str(error.value) and f"field '{field}'" in str(error.value)
    assert reason in str(error.value)
    loose = load_dataset("longvideobench", lvb, strict=False)
    assert len(loose) == 1 and loose.skipped[0].field == field


def test_longvideobench_without_answers_says_which_file(lvb):
    dump(lvb / "lvb_val.json", [{k: v for k, v in LVB_ENTRIES[0].items()
                                 if k != "correct_choice"}])
    with pytest.raises(DataError, match="lvb_test_wo_gt.json has no answers"):
        load_dataset("longvideobench", lvb)
    with pytest.raises(DataError, match="lvb_val.json: not found"):
        load_dataset("longvideobench", lvb / "nowhere")


def test_tvbench_open_ended_uses_the_official_answer_prompts(tvbench):
    """The official tasks/eval/mvbench BaseDataset(open_ended=True), restated per task."""
    data = {s.task: s for s in load_dataset("tvbench-oe", tvbench)}
    expected = {
        "Action Antonym": ("What is the person doing?", "putting on a shoe.",
                           "\nThe action being performed in the video regarding the shoe is to"),
        "Action Localization": ("During which part of the video does the action 'person "
                                "sitting down' occur?", "middle",
                                "\nThe action 'person sitting down' occurs at the"),
        "Moving Direction": ("What direction does the cyan sphere move in the video?", "right",
                             "\nThe cyan sphere moves to the"),
        "Object Count": ("How many metal objects are moving when the video ends?", "three",
                         "\nThe number of moving objects is"),
        "Scene Transition": ("Where does the scene in the video change from one place to "
                             "another place?", "kitchen to the garden.",
                             "\nThe scene in the video changes from the"),
        "Unexpected Action": ("What is funny in the video?", "A dog sings.", None),
    }
    assert set(data) == set(expected)
    for task, (question, reference, prompt) in expected.items():
        sample = data[task]
        assert (sample.question, sample.reference, sample.answer_prompt) == \
            (question, reference, prompt), task
        assert sample.options == () and sample.answer_index is None and sample.open_ended
        assert sample.answer == reference and sample.answer_letter is None
    assert data["Action Localization"].bounds == (0.0, 1.5)   # the window still applies
    assert data["Object Count"].metadata["candidates"] == ["2", "3"]


@pytest.mark.parametrize("task, change, field, reason", [
    ("object_count", {"candidates": ["2", "12"], "answer": "12"}, "answer",
     "not a count from 0 to 9"),
    ("action_localization", {"question": "When does it happen?"}, "question",
     "names no action"),
])
def test_tvbench_open_ended_refuses_what_the_official_code_cannot_ask(tvbench, task, change,
                                                                      field, reason):
    path = tvbench / "json" / f"{task}.json"
    entries = json.loads(path.read_text())
    entries[0].update(change)
    dump(path, entries)
    with pytest.raises(DataError) as error:
        load_dataset("tvbench-oe", tvbench)
    assert f"{task}.json entry 0 field '{field}'" in str(error.value)
    assert reason in str(error.value) and "\n" not in str(error.value)
    loose = load_dataset("tvbench-oe", tvbench, strict=False)
    assert len(loose) == 5 and [(p.index, p.field) for p in loose.skipped] == [(0, field)]


def test_vcgbench_loads_its_three_tasks(vcgbench):
    data = load_dataset("vcgbench", vcgbench)
    assert [s.id for s in data] == ["generic_qa/0", "temporal_qa/0", "consistency_qa/0/1",
                                    "consistency_qa/0/2"]
    assert data[1].video == vcgbench / "Test_Videos" / "v_2.mkv"
    pair = data[2], data[3]
    assert [s.question for s in pair] == ["What is the parrot eating from the pink coffee cup?",
                                          "On what container is the butterfly painted?"]
    assert {s.reference for s in pair} == {"The parrot is eating cream from a pink coffee cup "
                                           "with a butterfly on it."}
    assert [s.metadata["phrasing"] for s in pair] == [1, 2]
    assert all(s.open_ended and s.answer_prompt is None for s in data)
    assert load_dataset("vcgbench", vcgbench, tasks=["consistency_qa"], limit=1).counts() == \
        {"consistency_qa": 2}


@pytest.mark.parametrize("task, change, field", [
    ("generic_qa", {"A": ""}, "A"),
    ("consistency_qa", {"Q2": None}, "Q2"),
    ("temporal_qa", {"video_name": "missing"}, "video"),
])
def test_vcgbench_bad_entries(vcgbench, task, change, field):
    path = vcgbench / "Benchmarking_QA" / f"{task}.json"
    entries = json.loads(path.read_text())
    entries[0].update(change)
    dump(path, entries)
    with pytest.raises(DataError) as error:
        load_dataset("vcgbench", vcgbench)
    assert f"{task}.json entry 0 field '{field}'" in str(error.value)
    loose = load_dataset("vcgbench", vcgbench, strict=False)
    assert all(s.task != task for s in loose) and loose.skipped[0].field == field


@pytest.mark.parametrize("dataset, fixture", [
    ("videomme", "videomme"), ("longvideobench", "lvb"), ("tvbench-oe", "tvbench"),
    ("vcgbench", "vcgbench")])
def test_data_check_passes_and_fails(dataset, fixture, request, capsys):
    root = request.getfixturevalue(fixture)
    assert main(["data", "check", "--dataset", dataset, "--data-root", str(root)]) == 0
    assert capsys.readouterr().out.rstrip().endswith("ok")
    # a corrupt video fails the check, named in one line
    video = next(p for p in root.rglob("*.mp4"))
    video.write_bytes(b"corrupt" * 10)
    assert main(["data", "check", "--dataset", dataset, "--data-root", str(root),
                 "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and any(p["field"] == "video" for p in report["problems"])
    # a folder that is not the benchmark: one line, exit 2, nothing written
    before = sorted(root.parent.rglob("*"))
    assert main(["data", "check", "--dataset", dataset, "--data-root",
                 str(root / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]
    assert sorted(root.parent.rglob("*")) == before
