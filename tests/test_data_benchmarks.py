"""Benchmark loaders and ``mapflow-tl data check`` on fixtures in each benchmark's published layout.

TVBench (HF FunAILab/TVBench) and MVBench (HF OpenGVLab/MVBench): json/<task>.json lists of
{"video", "question", "candidates", "answer"[, "start", "end"]}; TVBench videos under
video/<task>/, MVBench videos under video/<source folder>/. TOMATO (github yale-nlp/TOMATO):
data/<reasoning type>.json maps ids to {"question", "options", "answer" (index), "key",
"demonstration_type", ...}, videos at videos/<demonstration_type>/<key>.mp4.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mapflow_tl.cli import main
from mapflow_tl.data import DataError, Sample, Skipped, list_datasets, load_dataset
from mapflow_tl.data.video import read_sample_video

av = pytest.importorskip("av")
Image = pytest.importorskip("PIL.Image")


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
    """One small real mp4 (20 frames at 10 fps) that fixtures copy into place."""
    return write_mp4(tmp_path_factory.mktemp("src") / "clip.mp4")


def place(mp4: Path, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(mp4, path)


def dump(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


@pytest.fixture
def tvbench(tmp_path, mp4) -> Path:
    root = tmp_path / "TVBench"
    dump(root / "json" / "action_antonym.json", [
        {"video": "S001C001P003R001A008_rgb.mp4", "question": "What is the person doing?",
         "candidates": ["standing up", "sitting down"], "answer": "sitting down"},
        {"video": "S005C001P021R001A021_rgb.mp4", "question": "What is the person doing?",
         "candidates": ["putting on a shoe", "taking off a shoe", "not sure"],
         "answer": "putting on a shoe"},
    ])
    dump(root / "json" / "action_sequence.json", [
        {"video": "1HGEX.mp4", "question": "What did the person do first?",
         "candidates": ["Opened the door.", "Took the cup.", "Sat on the bed."],
         "answer": "Took the cup.", "start": 0.5, "end": 1.5},
    ])
    # a SynthTV-style task: a name TVBench does not have, no time window
    dump(root / "json" / "colour.json", [
        {"video": "colour_00000.mp4", "question": "What colour is the object?",
         "candidates": ["red", "blue"], "answer": "blue"},
    ])
    for task, name in [("action_antonym", "S001C001P003R001A008_rgb.mp4"),
                       ("action_antonym", "S005C001P021R001A021_rgb.mp4"),
                       ("action_sequence", "1HGEX.mp4"), ("colour", "colour_00000.mp4")]:
        place(mp4, root / "video" / task / name)
    return root


@pytest.fixture
def mvbench(tmp_path, mp4) -> Path:
    root = tmp_path / "MVBench"
    dump(root / "json" / "action_sequence.json", [
        {"video": "ZS9XR.mp4", "question": "What happened after the person took the food?",
         "candidates": ["Ate the medicine.", "Tidied up the blanket.",
                        "Put down the cup/glass/bottle.", "Took the box."],
         "answer": "Ate the medicine.", "start": 0.3, "end": 1.8},
    ])
    dump(root / "json" / "fine_grained_pose.json", [
        {"video": "S012C001P037R002A049_rgb.avi", "question": "What is the pose of the person?",
         "candidates": ["sit down", "stand up"], "answer": "stand up"},
    ])
    dump(root / "json" / "episodic_reasoning.json", [
        {"video": "castle_s07e04_seg02_clip_14", "question": "Why did Castle say that?",
         "candidates": ["joke", "anger", "fear"], "answer": "joke", "start": 0.4, "end": 2.0},
    ])
    place(mp4, root / "video" / "star" / "Charades_v1_480" / "ZS9XR.mp4")
    avi = root / "video" / "nturgbd" / "S012C001P037R002A049_rgb.avi"
    avi.parent.mkdir(parents=True)
    with av.open(str(avi), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for i in range(12):
            grey = np.full((32, 32, 3), 8 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(grey, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    frames = root / "video" / "tvqa" / "frames_fps3_hq" / "castle_s07e04_seg02_clip_14"
    frames.mkdir(parents=True)
    for number in range(1, 10):
        grey = np.full((32, 32, 3), 8 * number, np.uint8)
        Image.fromarray(grey).save(frames / f"{number:05d}.jpg")
    return root


@pytest.fixture
def tomato(tmp_path, mp4) -> Path:
    root = tmp_path / "TOMATO"
    variation = {"counterfactual": 0, "composite": 0, "zoom": 1, "first_person": 0}
    dump(root / "data" / "count.json", {
        "0": {"question": "How many trapezoid(s) does the person draw in the air throughout the "
                          "entire video?",
              "options": ["2", "1", "3", "4", "5", "0"], "answer": 2, "key": "0209-03",
              "video_source_url": "", "motion_type": "count", "variation": variation,
              "demonstration_type": "human", "note": "drawing trapezoid"},
        "1": {"question": "How many distinct collision(s) occur throughout the entire video?",
              "options": ["2", "6", "3", "4", "7", "5"], "answer": 0, "key": "0000-00",
              "video_source_url": "CLEVRER", "motion_type": "count",
              "demonstration_type": "simulated", "variation": variation, "note": "colliding"},
    })
    dump(root / "data" / "direction.json", {
        "0": {"question": "Which direction does the ball move?",
              "options": ["left", "right", "up", "down"], "answer": 1, "key": "0100-01",
              "video_source_url": "", "motion_type": "direction", "variation": variation,
              "demonstration_type": "object", "note": ""},
    })
    place(mp4, root / "videos" / "human" / "0209-03.mp4")
    place(mp4, root / "videos" / "simulated" / "0000-00.mp4")
    place(mp4, root / "videos" / "object" / "0100-01.mp4")
    return root


def test_registry():
    assert list_datasets() == ["longvideobench", "mvbench", "synthtv", "tomato", "tvbench",
                               "tvbench-oe", "vcgbench", "videomme"]
    assert list_datasets(builtin=False) == ["longvideobench", "mvbench", "tomato", "tvbench",
                                            "tvbench-oe", "vcgbench", "videomme"]
    with pytest.raises(DataError, match="unknown dataset 'kinetics'; available: longvideobench, mvbench"):
        load_dataset("kinetics", ".")


def test_tvbench_loads_official_and_synthtv_tasks(tvbench):
    data = load_dataset("tvbench", tvbench)
    assert data.counts() == {"Action Antonym": 2, "Action Sequence": 1, "colour": 1}
    assert data.skipped == []
    first = data[0]
    assert isinstance(first, Sample)
    assert first.id == "action_antonym/0" and first.dataset == "tvbench"
    assert first.question == "What is the person doing?"
    assert first.options == ("standing up", "sitting down")
    assert (first.answer_index, first.answer, first.answer_letter) == (1, "sitting down", "B")
    assert first.video == tvbench / "video" / "action_antonym" / "S001C001P003R001A008_rgb.mp4"
    assert first.bounds is None
    sequence = data[2]
    assert sequence.task == "Action Sequence" and sequence.bounds == (0.5, 1.5)
    assert sequence.answer_index == 1
    assert data[3].task == "colour" and data[3].bounds is None


def test_task_selection_and_limit(tvbench):
    assert len(load_dataset("tvbench", tvbench, tasks=["Action Antonym"])) == 2
    assert [s.task for s in load_dataset("tvbench", tvbench, tasks=["action_sequence", "colour"])] \
        == ["Action Sequence", "colour"]
    assert load_dataset("tvbench", tvbench, limit=1).counts() == {
        "Action Antonym": 1, "Action Sequence": 1, "colour": 1}
    with pytest.raises(DataError, match="no task 'object_count'.*available: action_antonym"):
        load_dataset("tvbench", tvbench, tasks=["object_count"])


def test_sample_video_uses_the_bounds(tvbench):
    sample = load_dataset("tvbench", tvbench, tasks=["action_sequence"])[0]
    clip = read_sample_video(sample, 4)
    # [0.5 s, 1.5 s] at 10 fps = frames 5..15, seg = 2.5: 6.25 + round(2.5 i) -> 6, 8, 11, 14
    assert clip.indices.tolist() == [6, 8, 11, 14]


def test_mvbench_layout(mvbench):
    tasks = ["action_sequence", "Fine-grained Pose", "episodic_reasoning"]
    data = load_dataset("mvbench", mvbench, tasks=tasks)
    assert data.counts() == {"Action Sequence": 1, "Fine-grained Pose": 1, "Episodic Reasoning": 1}
    sequence, pose, episodic = data
    assert sequence.video == mvbench / "video" / "star" / "Charades_v1_480" / "ZS9XR.mp4"
    assert sequence.bounds == (0.3, 1.8) and sequence.answer_index == 0
    assert pose.bounds is None and pose.answer == "stand up"
    assert episodic.video.is_dir() and episodic.bounds == (0.4, 2.0)
    # frames 00001..00009 at 3 fps; [0.4 s, 2 s] -> file numbers 1..6, seg = 1.25:
    # 1.625 + round(1.25 i) -> 1, 2, 3, 5
    clip = read_sample_video(episodic, 4)
    assert [int(round(f.mean() / 8)) for f in clip.frames] == [1, 2, 3, 5]
    assert read_sample_video(pose, 8).frames.shape == (8, 32, 32, 3)


def test_mvbench_missing_task_files(mvbench):
    with pytest.raises(DataError, match="action_prediction.json: task file missing"):
        load_dataset("mvbench", mvbench)
    data = load_dataset("mvbench", mvbench, strict=False)
    assert len(data) == 3
    assert len(data.skipped) == 17
    assert all(s.reason.startswith("task file missing") for s in data.skipped)


def test_tomato_layout(tomato):
    data = load_dataset("tomato", tomato, tasks=["count", "direction"])
    assert data.counts() == {"count": 2, "direction": 1}
    first = data[0]
    assert first.id == "count/0" and first.task == "count"
    assert first.options == ("2", "1", "3", "4", "5", "0")
    assert (first.answer_index, first.answer) == (2, "3")
    assert first.video == tomato / "videos" / "human" / "0209-03.mp4"
    assert first.metadata["motion_type"] == "count"
    assert data[1].video == tomato / "videos" / "simulated" / "0000-00.mp4"
    # the four reasoning types not in the fixture are reported in a non-strict load
    missing = load_dataset("tomato", tomato, strict=False).skipped
    assert {Path(s.file).name for s in missing} == {
        "rotation.json", "shape&trend.json", "velocity&frequency.json", "visual_cues.json"}


def test_tomato_letter_answer_and_bad_answer(tomato):
    path = tomato / "data" / "direction.json"
    entries = json.loads(path.read_text())
    entries["0"]["answer"] = "D"
    dump(path, entries)
    assert load_dataset("tomato", tomato, tasks=["direction"])[0].answer == "down"
    entries["0"]["answer"] = 7
    dump(path, entries)
    with pytest.raises(DataError, match=r"direction.json entry 0 field 'answer': 7 is not among"):
        load_dataset("tomato", tomato, tasks=["direction"])


def break_tvbench(root: Path) -> None:
    entries = json.loads((root / "json" / "action_antonym.json").read_text())
    del entries[0]["question"]
    entries[1]["answer"] = "dancing"
    entries.append({"video": "gone.mp4", "question": "What?", "candidates": ["a", "b"],
                    "answer": "a"})
    dump(root / "json" / "action_antonym.json", entries)
    (root / "json" / "object_count.json").write_text("[{not json")


@pytest.mark.parametrize("problem, message", [
    ("missing_field", r"action_antonym.json entry 0 field 'question': missing"),
    ("answer", r"action_antonym.json entry 0 field 'answer': 'dancing' is not one of the cand"),
    ("video", r"action_antonym.json entry 0 field 'video': video not found: .*gone.mp4"),
    ("annotation", r"object_count.json: unreadable annotation file"),
])
def test_strict_errors_name_file_and_field(tvbench, problem, message):
    break_tvbench(tvbench)
    entries = json.loads((tvbench / "json" / "action_antonym.json").read_text())
    keep = {"missing_field": [0], "answer": [1], "video": [2], "annotation": []}[problem]
    dump(tvbench / "json" / "action_antonym.json", [entries[i] for i in keep])
    if problem != "annotation":
        (tvbench / "json" / "object_count.json").unlink()
    with pytest.raises(DataError, match=message):
        load_dataset("tvbench", tvbench)


def test_non_strict_records_skipped(tvbench):
    break_tvbench(tvbench)
    data = load_dataset("tvbench", tvbench, strict=False)
    assert data.counts() == {"Action Sequence": 1, "colour": 1}
    problems = {(Path(s.file).name, s.index, s.field) for s in data.skipped}
    assert problems == {("action_antonym.json", 0, "question"),
                        ("action_antonym.json", 1, "answer"),
                        ("action_antonym.json", 2, "video"),
                        ("object_count.json", None, None)}
    assert all(isinstance(s, Skipped) and s.reason for s in data.skipped)


def test_bounds_errors(tvbench, mvbench):
    path = tvbench / "json" / "action_sequence.json"
    entries = json.loads(path.read_text())
    entries[0]["end"] = "late"
    dump(path, entries)
    with pytest.raises(DataError, match="action_sequence.json entry 0 field 'end': not a number"):
        load_dataset("tvbench", tvbench)
    # MVBench's windowed tasks must carry their window
    path = mvbench / "json" / "action_sequence.json"
    entries = json.loads(path.read_text())
    del entries[0]["start"]
    dump(path, entries)
    with pytest.raises(DataError, match="entry 0 field 'start': missing"):
        load_dataset("mvbench", mvbench, tasks=["action_sequence"])


def test_data_check_passes_on_a_good_download(tvbench, capsys):
    assert main(["data", "check", "--dataset", "tvbench", "--data-root", str(tvbench)]) == 0
    out = capsys.readouterr().out
    assert "Action Antonym" in out and "ok" in out
    missing_root = str(tvbench.parent / "x")
    assert main(["data", "check", "--dataset", "tomato", "--data-root", missing_root]) == 2


def test_data_check_lists_every_problem(tvbench, capsys):
    break_tvbench(tvbench)
    (tvbench / "video" / "colour" / "colour_00000.mp4").write_bytes(b"corrupt" * 10)
    data = tvbench / "video" / "action_sequence" / "1HGEX.mp4"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])  # truncated
    code = main(["data", "check", "--dataset", "tvbench", "--data-root", str(tvbench), "--json"])
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["samples"] == 0
    fields = sorted((Path(p["file"]).name, p["field"]) for p in report["problems"])
    assert fields == [("1HGEX.mp4", "video"), ("action_antonym.json", "answer"),
                      ("action_antonym.json", "question"), ("action_antonym.json", "video"),
                      ("colour_00000.mp4", "video"), ("object_count.json", None)]
    assert report["tasks"]["Action Antonym"] == {"samples": 0, "problems": 3}
    code = main(["data", "check", "--dataset", "tvbench", "--data-root", str(tvbench),
                 "--task", "colour"])
    assert code == 1
    out = capsys.readouterr().out
    assert "colour_00000.mp4 entry colour/0 field 'video'" in out and "cannot open the video" in out


def test_data_check_catches_bounds_past_the_video(tvbench, capsys):
    path = tvbench / "json" / "action_sequence.json"
    entries = json.loads(path.read_text())
    entries[0].update(start=30.0, end=40.0)  # the video is 2 s long
    dump(path, entries)
    code = main(["data", "check", "--dataset", "tvbench", "--data-root", str(tvbench), "--json"])
    assert code == 1
    (problem,) = json.loads(capsys.readouterr().out)["problems"]
    assert problem["field"] == "start/end" and "select no frame" in problem["reason"]


# ------------------------------------------------------------------ issue 24: faults injected
def windowless_sequence(root: Path) -> None:
    path = root / "json" / "action_sequence.json"
    entries = json.loads(path.read_text())
    entries.append({"video": "1HGEX.mp4", "question": "And then?", "candidates": ["a", "b"],
                    "answer": "a"})  # no start/end: the question is about a window it lost
    dump(path, entries)


def test_tvbench_windowed_task_without_window_is_an_error_naming_the_entry(tvbench, capsys):
    windowless_sequence(tvbench)
    with pytest.raises(DataError, match=r"action_sequence.json entry 1 field 'start': missing "
                                        r"\(this task's questions are about a time window\)"):
        load_dataset("tvbench", tvbench)
    data = load_dataset("tvbench", tvbench, strict=False)
    assert [(s.index, s.field) for s in data.skipped] == [(1, "start")]
    assert [s.bounds for s in data if s.task == "Action Sequence"] == [(0.5, 1.5)]
    # a SynthTV set writes these task names without windows: read as whole videos when asked
    from mapflow_tl.data import load_tvbench

    whole = load_tvbench(tvbench, ["action_sequence"], require_windows=False)
    assert [s.bounds for s in whole] == [(0.5, 1.5), None]
    assert main(["data", "check", "--dataset", "tvbench", "--data-root", str(tvbench),
                 "--json"]) == 1
    (problem,) = json.loads(capsys.readouterr().out)["problems"]
    assert (Path(problem["file"]).name, problem["index"], problem["field"]) == (
        "action_sequence.json", 1, "start")


def test_synthtv_sets_still_read_windowless_sequences(tmp_path):
    generator = pytest.importorskip("mapflow_tl.synthtv.generator")
    generator.write_benchmark(tmp_path, generator.generate(["action_sequence"], 2, seed=1),
                              write_videos=False)
    data = load_dataset("synthtv", tmp_path, check_videos=False)
    assert len(data) == 2 and all(s.bounds is None for s in data)


def write_narrow_mp4(path: Path, width: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, 32, "yuv420p"
        for i in range(20):
            frame = np.full((32, width, 3), 8 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_data_check_runs_the_analyses_frame_reading(tvbench, capsys):
    """A 48-pixel-wide video opens and counts its frames fine; what fails is reading its frames
    the way every analysis does. data check must say so before a run does."""
    from mapflow_tl.models.frames import load_frames

    narrow = write_narrow_mp4(tvbench / "video" / "colour" / "colour_00000.mp4", 48)
    sample = next(s for s in load_dataset("tvbench", tvbench) if s.task == "colour")
    try:  # the analyses' reading of this video, whatever it decides, is data check's verdict
        load_frames(sample, num_frames=8)
        analysis_error = None
    except ValueError as error:
        analysis_error = str(error)
    code = main(["data", "check", "--dataset", "tvbench", "--data-root", str(tvbench), "--json"])
    report = json.loads(capsys.readouterr().out)
    if analysis_error is None:  # a reader that copes with the size: nothing to report
        assert code == 0 and report["ok"]
        pytest.skip(f"this video reader reads {narrow.name} at 48 pixels")
    assert code == 1
    (problem,) = report["problems"]
    assert (Path(problem["file"]).name, problem["field"]) == ("colour_00000.mp4", "video")
    # the same verdict (the decoder's own detail in parentheses may differ between two reads)
    assert problem["reason"].split(" (")[0] == analysis_error.removeprefix(f"{narrow}: ").split(
        " (")[0]
    assert report["tasks"]["colour"] == {"samples": 0, "problems": 1}


@pytest.fixture
def mvbench_video_revision(tmp_path, mp4) -> Path:
    """MVBench's "video" revision on the Hub: source folders at the root beside json/, the
    windowed tasks' clips already cut (star/Charades_segment), SSv2 as mp4, NTU RGB+D absent."""
    root = tmp_path / "MVBench"
    dump(root / "json" / "action_sequence.json", [
        {"video": "ZS9XR.mp4", "question": "What happened after the person took the food?",
         "candidates": ["Ate the medicine.", "Took the box."], "answer": "Ate the medicine.",
         "start": 11.3, "end": 19.8}])  # seconds in the uncut Charades video
    dump(root / "json" / "action_antonym.json", [
        {"video": "166583.webm", "question": "What is the action performed by the person?",
         "candidates": ["Pulling something", "Pushing something"],
         "answer": "Pushing something"}])
    dump(root / "json" / "fine_grained_pose.json", [
        {"video": "S012C001P037R002A049_rgb.mp4", "question": "What is the pose?",
         "candidates": ["sit down", "stand up"], "answer": "stand up"}])
    place(mp4, root / "star" / "Charades_segment" / "ZS9XR.mp4")
    place(mp4, root / "ssv2_video_mp4" / "166583.webm")
    return root


def test_mvbench_video_revision_loads(mvbench_video_revision):
    root = mvbench_video_revision
    sequence, antonym = load_dataset("mvbench", root, tasks=["action_sequence", "action_antonym"])
    assert sequence.video == root / "star" / "Charades_segment" / "ZS9XR.mp4"
    # the clip is the window already: 11.3-19.8 s of the uncut video would select no frame of it
    assert sequence.bounds is None
    assert (sequence.metadata["start"], sequence.metadata["end"]) == (11.3, 19.8)
    assert read_sample_video(sequence, 4).frames.shape == (4, 32, 32, 3)
    assert antonym.video == root / "ssv2_video_mp4" / "166583.webm"
    assert antonym.answer == "Pushing something"


def test_mvbench_missing_ntu_videos_say_where_they_come_from(mvbench_video_revision):
    with pytest.raises(DataError, match=r"fine_grained_pose.json entry 0 field 'video': video not "
                                        r"found: .*nturgbd_convert.*MVBench does not distribute "
                                        r"the NTU RGB\+D videos .*rose1.ntu.edu.sg"):
        load_dataset("mvbench", mvbench_video_revision, tasks=["fine_grained_pose"])
    # the main revision's layout (video/nturgbd) gets the same words
    with pytest.raises(DataError, match=r"video/nturgbd/.*MVBench does not distribute"):
        (mvbench_video_revision / "video").mkdir()
        load_dataset("mvbench", mvbench_video_revision, tasks=["fine_grained_pose"])


@pytest.mark.parametrize("name", ["../../../outside.mp4", "../colour/../../../outside.mp4",
                                  "ABSOLUTE"])
def test_annotation_paths_outside_the_root_are_refused(tvbench, mp4, name):
    outside = tvbench.parent / "outside.mp4"
    place(mp4, outside)
    name = str(outside) if name == "ABSOLUTE" else name
    path = tvbench / "json" / "colour.json"
    entries = json.loads(path.read_text())
    entries[0]["video"] = name
    dump(path, entries)
    with pytest.raises(DataError, match=r"colour.json entry 0 field 'video': .* outside the "
                                        r"benchmark root .*--allow-outside-root"):
        load_dataset("tvbench", tvbench, tasks=["colour"])
    from mapflow_tl.data import load_tvbench

    (sample,) = load_tvbench(tvbench, ["colour"], allow_outside_root=True)
    assert os.path.normpath(sample.video) == str(outside)
    # inside the root after normalising: fine
    entries[0]["video"] = "../colour/colour_00000.mp4"
    dump(path, entries)
    assert len(load_dataset("tvbench", tvbench, tasks=["colour"])) == 1


def test_tomato_paths_outside_the_root_are_refused(tomato):
    path = tomato / "data" / "direction.json"
    entries = json.loads(path.read_text())
    entries["0"]["demonstration_type"] = "../../elsewhere"
    dump(path, entries)
    with pytest.raises(DataError, match="direction.json entry 0 field 'video': .*outside the "
                                        "benchmark root"):
        load_dataset("tomato", tomato, tasks=["direction"])


@pytest.mark.parametrize("answer, message", [
    ("Sitting down", r"'Sitting down' is not one of .*; did you mean 'sitting down'\?"),
    ("sitting down ", r"'sitting down ' is not one of .*; did you mean 'sitting down'\?"),
    ("dancing", r"'dancing' is not one of the candidates \['standing up', 'sitting down'\];"
                r" fix"),
])
def test_near_miss_answers_name_the_candidate(tvbench, answer, message):
    path = tvbench / "json" / "action_antonym.json"
    entries = json.loads(path.read_text())
    entries[0]["answer"] = answer
    dump(path, entries)
    with pytest.raises(DataError, match=message):
        load_dataset("tvbench", tvbench, tasks=["action_antonym"])


@pytest.mark.parametrize("candidates, answer, expected", [
    (["2", "3", "4"], 3.0, "3"), (["2", "3", "4"], 3, "3"), (["2.0", "3.0"], 2, "2.0"),
    (["2", "2.0"], 2.0, "2.0"),  # the exact text wins over equal values
])
def test_numeric_answers_equal_to_a_candidate_are_accepted(tvbench, candidates, answer, expected):
    path = tvbench / "json" / "action_antonym.json"
    entries = json.loads(path.read_text())
    entries[0].update(candidates=candidates, answer=answer)
    dump(path, entries)
    assert load_dataset("tvbench", tvbench, tasks=["action_antonym"])[0].answer == expected


def test_ambiguous_or_boolean_numeric_answers_are_refused(tvbench):
    path = tvbench / "json" / "action_antonym.json"
    entries = json.loads(path.read_text())
    for candidates, answer in ((["2", "02", "3"], 2.0), (["1", "0"], True), (["2", "3"], 2.5)):
        entries[0].update(candidates=candidates, answer=answer)
        dump(path, entries)
        with pytest.raises(DataError, match="entry 0 field 'answer': .* is not one of"):
            load_dataset("tvbench", tvbench, tasks=["action_antonym"])


def test_tomato_float_index_answer(tomato):
    path = tomato / "data" / "direction.json"
    entries = json.loads(path.read_text())
    entries["0"]["answer"] = 3.0
    dump(path, entries)
    assert load_dataset("tomato", tomato, tasks=["direction"])[0].answer == "down"


def test_hints_name_the_command_line_option(tomato):
    with pytest.raises(DataError, match=r"rotation.json: task file missing: download it, or "
                                        r"choose the tasks you have \(--task on the command line, "
                                        r"tasks= in Python\); fix the file, or skip it \(run "
                                        r"without --strict; strict=False in Python\)"):
        load_dataset("tomato", tomato)


def test_samples_know_their_entry(tvbench, tomato):
    assert [s.entry for s in load_dataset("tvbench", tvbench)] == [0, 1, 0, 0]
    assert [s.entry for s in load_dataset("tomato", tomato, tasks=["count"])] == ["0", "1"]


# ------------------------------------------------------------------ issue 36: faults in inputs
def _edit(path: Path, change) -> None:
    entries = json.loads(path.read_text())
    change(entries)
    dump(path, entries)


@pytest.mark.parametrize("answer, reason", [
    ("é", "not an option index or letter: 'é'"),     # ascii_uppercase.index('É'): ValueError
    ("²", "not an option index or letter: '²'"),     # isdigit() but int() cannot read it
    ("", "not an option index or letter: ''"),
])
def test_tomato_answers_that_are_not_ascii_letters_or_digits_are_skipped(tomato, answer, reason):
    _edit(tomato / "data" / "direction.json", lambda e: e["0"].update(answer=answer))
    data = load_dataset("tomato", tomato, tasks=["count", "direction"], strict=False)
    assert data.counts() == {"count": 2}   # the other entries still load
    (skipped,) = data.skipped
    assert (Path(skipped.file).name, skipped.index, skipped.field) == ("direction.json", "0",
                                                                        "answer")
    assert skipped.reason == reason
    with pytest.raises(DataError, match="direction.json entry 0 field 'answer'"):
        load_dataset("tomato", tomato, tasks=["direction"])


@pytest.mark.parametrize("answer", [4, "4", "E"])
def test_tomato_answer_index_equal_to_the_option_count_is_refused(tomato, answer):
    # direction has 4 options: index 4 (letter E) is one past the last
    _edit(tomato / "data" / "direction.json", lambda e: e["0"].update(answer=answer))
    with pytest.raises(DataError, match=rf"entry 0 field 'answer': {answer!r} is not among the "
                                        rf"4 options"):
        load_dataset("tomato", tomato, tasks=["direction"])
    _edit(tomato / "data" / "direction.json", lambda e: e["0"].update(answer=3))
    assert load_dataset("tomato", tomato, tasks=["direction"])[0].answer == "down"


def test_deeply_nested_annotation_file_is_one_bad_file(tvbench, capsys):
    (tvbench / "json" / "object_count.json").write_text("[" * 100_000 + "]" * 100_000)
    data = load_dataset("tvbench", tvbench, strict=False)
    assert data.counts() == {"Action Antonym": 2, "Action Sequence": 1, "colour": 1}
    (skipped,) = data.skipped
    assert Path(skipped.file).name == "object_count.json" and skipped.index is None
    assert "nested too deeply" in skipped.reason
    code = main(["data", "check", "--dataset", "tvbench", "--data-root", str(tvbench), "--json"])
    assert code == 1
    (problem,) = json.loads(capsys.readouterr().out)["problems"]
    assert "nested too deeply" in problem["reason"]


@pytest.mark.parametrize("candidates, reason", [
    (["sitting down", None], "option 1 is None, not a text"),       # was the option "None"
    (["sitting down", ["a"]], "option 1 is ['a'], not a text"),
    (["sitting down", True], "option 1 is True, not a text"),
    (["sitting down", "  "], "option 1 is empty text '  '"),
    (["sitting down", "Sitting  down"], "options are not distinct"),  # one answer, two letters
    ("up", "needs a list of at least 2 options, got 'up'"),          # not the options 'u', 'p'
])
def test_candidates_that_are_not_option_texts_are_refused(tvbench, candidates, reason):
    _edit(tvbench / "json" / "action_antonym.json",
          lambda e: e[0].update(candidates=candidates, answer="sitting down"))
    data = load_dataset("tvbench", tvbench, tasks=["action_antonym"], strict=False)
    assert len(data) == 1
    (skipped,) = data.skipped
    assert (skipped.index, skipped.field) == (0, "candidates") and reason in skipped.reason


def test_null_tomato_option_is_refused(tomato):
    _edit(tomato / "data" / "direction.json",
          lambda e: e["0"].update(options=["left", None, "up", "down"]))
    with pytest.raises(DataError, match=r"direction.json entry 0 field 'options': option 1 is "
                                        r"None, not a text"):
        load_dataset("tomato", tomato, tasks=["direction"])


@pytest.mark.parametrize("start, end, field, reason", [
    (0.5, float("nan"), "end", "not a finite number of seconds: nan"),
    (float("-inf"), 1.5, "start", "not a finite number of seconds: -inf"),
    (0.5, float("inf"), "end", "not a finite number of seconds: inf"),
])
def test_non_finite_window_bounds_are_refused_at_load(tvbench, start, end, field, reason):
    _edit(tvbench / "json" / "action_sequence.json", lambda e: e[0].update(start=start, end=end))
    data = load_dataset("tvbench", tvbench, tasks=["action_sequence"], strict=False)
    (skipped,) = data.skipped
    assert (skipped.field, skipped.reason) == (field, reason)


def test_window_end_beyond_any_frame_is_skipped_in_data_check(tvbench, capsys):
    # 1e308 s loads (a finite number) but 1e308 * fps overflows: it was an OverflowError
    # traceback in data check and in runs; now the entry's problem, with the reason
    _edit(tvbench / "json" / "action_sequence.json", lambda e: e[0].update(end=1e308))
    code = main(["data", "check", "--dataset", "tvbench", "--data-root", str(tvbench), "--json"])
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    (problem,) = report["problems"]
    assert problem["field"] == "start/end" and "beyond any frame number" in problem["reason"]
    assert problem["index"] == "action_sequence/0" and report["samples"] == 3


def test_video_names_the_file_system_cannot_take_are_skipped(tvbench):
    # Path.exists() raises OSError for a name longer than the file system takes: the whole
    # load stopped there
    _edit(tvbench / "json" / "colour.json", lambda e: e[0].update(video="v" * 300 + ".mp4"))
    data = load_dataset("tvbench", tvbench, tasks=["colour", "action_antonym"], strict=False)
    assert len(data) == 2
    (skipped,) = data.skipped
    assert skipped.field == "video"
    assert skipped.reason.startswith("not a usable file name (File name too long): 'vvvv")


def test_sibling_folder_with_the_root_as_prefix_is_outside_the_root(tvbench, mp4):
    # /…/TVBench2 starts with the text /…/TVBench: the check must compare whole components
    sibling = tvbench.parent / (tvbench.name + "2")
    place(mp4, sibling / "clip.mp4")
    _edit(tvbench / "json" / "colour.json",
          lambda e: e[0].update(video="../../../TVBench2/clip.mp4"))
    with pytest.raises(DataError, match=r"'\.\./\.\./\.\./TVBench2/clip\.mp4' is a path outside "
                                        r"the benchmark root"):
        load_dataset("tvbench", tvbench, tasks=["colour"])


def test_tvbench_applies_start_end_only_where_the_reference_does(tvbench, mp4):
    # the official TVBenchDataset (tasks/eval/mvbench/__init__.py) reads bounds for Action
    # Sequence and Action Localization only; the other tasks' start/end stay metadata
    from mapflow_tl.data.loaders import TVBENCH_TASKS

    assert {stem for stem, (_, bounded) in TVBENCH_TASKS.items() if bounded} == {
        "action_sequence", "action_localization"}
    _edit(tvbench / "json" / "action_antonym.json",
          lambda e: e[0].update(start=0.5, end=1.5))
    dump(tvbench / "json" / "action_localization.json", [
        {"video": "loc.mp4", "question": "When does it happen?",
         "candidates": ["beginning", "end"], "answer": "end", "start": 0.2, "end": 1.2}])
    place(mp4, tvbench / "video" / "action_localization" / "loc.mp4")
    data = {s.id: s for s in load_dataset("tvbench", tvbench)}
    antonym = data["action_antonym/0"]
    assert antonym.bounds is None and antonym.metadata == {"start": 0.5, "end": 1.5}
    assert data["action_sequence/0"].bounds == (0.5, 1.5)
    assert data["action_localization/0"].bounds == (0.2, 1.2)
    assert data["colour/0"].bounds is None
    # a task outside the official ten uses its bounds when given
    _edit(tvbench / "json" / "colour.json", lambda e: e[0].update(start=0.1, end=0.9))
    assert load_dataset("tvbench", tvbench, tasks=["colour"])[0].bounds == (0.1, 0.9)


def test_window_end_beyond_any_frame_is_a_skipped_sample_of_a_run(tvbench, tmp_path, capsys):
    # the run reads the frames in prepare: the entry goes to skipped.jsonl with its reason and
    # the other samples run (it was an OverflowError traceback that ended the run)
    _edit(tvbench / "json" / "action_sequence.json", lambda e: e[0].update(end=1e308))
    out = tmp_path / "run"
    code = main(["flow", "--model", "synthtv-video-ft", "--dataset", "tvbench", "--data-root",
                 str(tvbench), "--task", "action_sequence", "--task", "colour", "--out",
                 str(out), "--circuit", "cross-frame", "--mode", "all"])
    assert code == 0, capsys.readouterr().err
    (skipped,) = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert skipped["sample"] == "action_sequence/0"
    assert "beyond any frame number" in json.dumps(skipped)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [row["sample"] for row in samples] == ["colour/0"]


def test_mvbench_applies_start_end_only_on_its_windowed_tasks(mvbench):
    # VideoChat2's data_list: Action Sequence has bounds, Fine-grained Pose does not (its
    # start/end, if an entry had them, stay metadata)
    _edit(mvbench / "json" / "fine_grained_pose.json", lambda e: e[0].update(start=0.1, end=0.5))
    data = {s.task: s for s in load_dataset("mvbench", mvbench,
                                            tasks=["action_sequence", "fine_grained_pose"],
                                            check_videos=False)}
    assert data["Action Sequence"].bounds == (0.3, 1.8)
    pose = data["Fine-grained Pose"]
    assert pose.bounds is None and pose.metadata == {"start": 0.1, "end": 0.5}
