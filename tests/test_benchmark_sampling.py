"""Each benchmark's official frame sampling and subtitles (issue #35).

The expected frame indices and subtitle lines are computed by hand from the official rules
(LongVideoBench ``load_video``, Video-ChatGPT ``get_seq_frames``, lmms-eval's Video-MME
``videomme_doc_to_text_subtitle``, LongVideoBench ``insert_subtitles_into_frames``), written out
in the comments, never by the code under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mapflow_tl.cli import main
from mapflow_tl.data import DataError, load_dataset
from mapflow_tl.data.subtitles import Subtitles, read_srt
from mapflow_tl.data.video import (VideoInfo, linspace_indices, longvideobench_indices,
                                   read_video, video_chatgpt_indices)

pytest.importorskip("av")
pytest.importorskip("pyarrow")

from test_data_long_open import LVB_ENTRIES, dump, place, write_mp4  # noqa: E402


def info(n: int, fps: float = 10.0) -> VideoInfo:
    return VideoInfo(path=Path("v.mp4"), kind="video", num_frames=n, fps=fps)


# ------------------------------------------------------------------ samplers by hand
def test_longvideobench_sampler_by_hand():
    # 100 frames at 10 fps, annotation 9.5 s, 4 frames: total = int(95.0) = 95,
    # n = min(4, int(9.5)) = 4, step int(95 / 4) = 23 -> 0, 23, 46, 69
    assert longvideobench_indices(info(100), 4, duration=9.5).tolist() == [0, 23, 46, 69]
    # 3.7 s and 6 frames: n = min(6, 3) = 3, total = 37, step int(37 / 3) = 12 -> 0, 12, 24,
    # the last repeated up to 6 (Map-the-Flow's copy of load_video)
    assert longvideobench_indices(info(100), 6, duration=3.7).tolist() == \
        [0, 12, 24, 24, 24, 24]
    # no duration: the file's, 100 / 10 = 10 s -> total 100, n 5, step 20
    assert longvideobench_indices(info(100), 5).tolist() == [0, 20, 40, 60, 80]
    with pytest.raises(DataError, match=r"duration is 0.5 s"):
        longvideobench_indices(info(100), 4, duration=0.5)   # the official code divides by 0
    # annotation 12 s of a 20-frame file: frame 90 does not exist
    with pytest.raises(DataError, match=r"asks for frame 90 .* video of 20 frames"):
        longvideobench_indices(info(20), 4, duration=12)


def test_video_chatgpt_sampler_by_hand():
    # 10 frames, 4 wanted: seg = 9 / 4 = 2.25; (round(2.25 i) + round(2.25 (i+1))) // 2:
    # (0 + 2)//2 = 1, (2 + 4)//2 = 3 (round(4.5) = 4, half to even), (4 + 7)//2 = 5, (7 + 9)//2 = 8
    assert video_chatgpt_indices(info(10), 4).tolist() == [1, 3, 5, 8]
    # 3 frames, 4 wanted: seg = 0.5: (0+0)//2, (0+1)//2, (1+2)//2, (2+2)//2 = 0, 0, 1, 2
    assert video_chatgpt_indices(info(3), 4).tolist() == [0, 0, 1, 2]
    # a [0.5 s, 1.5 s] window at 10 fps is frames 5..15 (11 frames): seg = 10 / 2 = 5:
    # (0 + 5)//2 = 2, (5 + 10)//2 = 7 -> 5 + 2, 5 + 7
    assert video_chatgpt_indices(info(20), 2, bounds=(0.5, 1.5)).tolist() == [7, 12]


def test_videomme_sampler_is_lmms_evals_linspace():
    # np.linspace(0, n - 1, k, dtype=int): 0, 3, 6, 9 for 10 frames and 4
    assert linspace_indices(info(10), 4).tolist() == [0, 3, 6, 9]


def test_read_video_decodes_the_official_frames(tmp_path):
    mp4 = write_mp4(tmp_path / "clip.mp4", n_frames=20, fps=10)  # frame i is grey 8 i
    clip = read_video(mp4, 4, sampler="longvideobench", duration=2.0, reader="pyav")
    # duration 2 s: n = min(4, 2) = 2, total 20, step 10 -> 0, 10, 10, 10
    assert clip.indices.tolist() == [0, 10, 10, 10]
    assert np.abs(clip.frames[:, 16, 16, 0].astype(int) - [0, 80, 80, 80]).max() <= 3
    clip = read_video(mp4, 4, sampler="video-chatgpt", reader="pyav")
    # seg = 19 / 4 = 4.75: (0+5)//2, (5+10)//2 (round(9.5) = 10), (10+14)//2, (14+19)//2
    assert clip.indices.tolist() == [2, 7, 12, 16]
    with pytest.raises(ValueError, match="whole video"):
        read_video(mp4, 4, sampler="longvideobench", bounds=(0.0, 1.0))


# ------------------------------------------------------------------ the registry chooses
VIDEOMME_ROWS = [
    {"video_id": "001", "duration": "short", "domain": "Knowledge", "sub_category": "Humanity",
     "url": "https://www.youtube.com/watch?v=fFjv93ACGo8", "videoID": "fFjv93ACGo8",
     "question_id": "001-1", "task_type": "Counting Problem",
     "question": "How many red socks are above the fireplace?",
     "options": ["A. 0.", "B. 1.", "C. 3.", "D. 4."], "answer": "C"},
]

SRT = """1
00:00:00,000 --> 00:00:00,500
<font color="white" size=".72c">hello</font>

2
00:00:00,500 --> 00:00:01,200
<font color="white" size=".72c">world</font>

3
00:00:01,500 --> 00:00:01,900
<font color="white" size=".72c">late</font>

4
00:00:00,000 --> 00:00:02,000
plain text without the font tag
"""


@pytest.fixture
def videomme(tmp_path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "Video-MME"
    (root / "videomme").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(VIDEOMME_ROWS),
                   root / "videomme" / "test-00000-of-00001.parquet")
    write_mp4(root / "data" / "fFjv93ACGo8.mp4", n_frames=20, fps=10)
    return root


def test_registry_gives_each_benchmark_its_official_sampler(videomme, tmp_path):
    sample = load_dataset("videomme", videomme)[0]
    assert sample.frame_sampler == "linspace" and sample.subtitles is None   # off by default
    assert load_dataset("videomme", videomme, frame_sampler="midpoints")[0].frame_sampler == \
        "midpoints"                                                          # the user's choice
    with pytest.raises(DataError, match="frame sampler 'nearest' is not one of"):
        load_dataset("videomme", videomme, frame_sampler="nearest")
    # TVBench: the family's own (the paper's runs: midpoints, VideoLLaMA3 linspace)
    from mapflow_tl.data.datasets import DATASETS
    assert DATASETS["tvbench"].frame_sampler is None
    assert DATASETS["vcgbench"].frame_sampler == "video-chatgpt"
    assert DATASETS["longvideobench"].frame_sampler == "longvideobench"
    with pytest.raises(DataError, match="dataset 'tvbench' has no subtitles"):
        load_dataset("tvbench", tmp_path, subtitles=True)


# ------------------------------------------------------------------ Video-MME subtitles
def test_videomme_subtitle_lines_by_hand(tmp_path):
    path = tmp_path / "v.srt"
    path.write_text(SRT)
    track = Subtitles("videomme", path)
    # at 10 fps the cues cover frames [0, 5), [5, 12), [15, 19), [0, 20) (int(t * fps)); frames
    # 0, 6, 13, 19 hit cues 1, 2 and 4; cue 4 has no <font> text, so the official regex drops it
    assert track.lines([0, 6, 13, 19], 10.0) == ["hello", "world"]
    assert track.context([0, 6, 13, 19], 10.0) == \
        "This video's subtitles are listed below: \nhello\nworld"
    assert track.lines([16], 10.0) == ["late"]
    assert Subtitles("videomme", None).context([0], 10.0) == \
        "This video's subtitles are listed below: \nNo subtitles available"


@pytest.mark.parametrize("text, message", [
    ("1\n00:00:00,000 --> 00:00:0x,500\nhi\n", "block 1: time '00:00:0x,500' is not"),
    ("1\n00:00:00,000 00:00:01,000\nhi\n", "block 1 is not 'index / start --> end / text'"),
])
def test_bad_srt_is_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.srt"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as error:
        read_srt(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_videomme_subtitles_reach_the_prompt(videomme):
    import mapflow_tl as mf

    (videomme / "subtitle").mkdir()
    (videomme / "subtitle" / "fFjv93ACGo8.srt").write_text(SRT)
    sample = load_dataset("videomme", videomme, subtitles=True)[0]
    assert sample.subtitles.path == videomme / "subtitle" / "fFjv93ACGo8.srt"
    vlm = mf.load_videollm("synthtv-video-ft")
    x = vlm.prepare(sample)
    # 20 frames at 10 fps, the family's frame count T: linspace(0, 19, T, dtype=int); the cues
    # kept are those a frame falls in, by hand below
    n = len(x.frames)
    frames = np.linspace(0, 19, n, dtype=int)
    expected = [text for (lo, hi), text in (((0, 5), "hello"), ((5, 12), "world"),
                                            ((15, 19), "late"))
                if any(lo <= f < hi for f in frames)]
    block = "This video's subtitles are listed below: \n" + "\n".join(expected) + \
        "\nQuestion: How many red socks are above the fireplace?"
    assert block in x.prompt and x.meta["frame_sampler"] == "linspace"
    # without subtitles the prompt has no subtitle block; the spans still name the question
    plain = vlm.prepare(load_dataset("videomme", videomme)[0])
    assert "subtitles" not in plain.prompt
    assert plain.segments.n_positions < x.segments.n_positions
    # a load option chosen by the user wins over the benchmark's rule
    assert mf.load_videollm("synthtv-video-ft", frame_sampler="midpoints").prepare(
        sample).meta["frame_sampler"] == "midpoints"


def test_videomme_subtitles_without_the_folder_is_one_line(videomme, capsys):
    with pytest.raises(DataError, match="subtitle: not found; Video-MME subtitles are "
                                        "subtitle/<videoID>.srt"):
        load_dataset("videomme", videomme, subtitles=True)
    assert main(["data", "check", "--dataset", "videomme", "--data-root", str(videomme),
                 "--subtitles"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "subtitle/<videoID>.srt" in err[0]


def test_data_check_reads_the_subtitle_files(videomme, capsys):
    (videomme / "subtitle").mkdir()
    srt = videomme / "subtitle" / "fFjv93ACGo8.srt"
    srt.write_text(SRT)
    assert main(["data", "check", "--dataset", "videomme", "--data-root", str(videomme),
                 "--subtitles"]) == 0
    capsys.readouterr()
    srt.write_text("1\n00:00:00,000 --> soon\nhi\n")
    assert main(["data", "check", "--dataset", "videomme", "--data-root", str(videomme),
                 "--subtitles", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    [problem] = report["problems"]
    assert problem["field"] == "subtitles" and problem["file"] == str(srt)
    assert "time 'soon' is not HH:MM:SS,mmm" in problem["reason"]


# ------------------------------------------------------------------ LongVideoBench subtitles
LVB_SUBTITLES = [
    {"start": "00:00:01.000", "end": "00:00:03.500", "line": "a"},
    {"start": "00:00:04.800", "end": "00:00:05.000", "line": "b"},
    {"timestamp": [8.0, None], "text": "c"},
    {"timestamp": [6.5, 7.5], "text": "d"},
]


def test_longvideobench_subtitle_lines_by_hand(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(LVB_SUBTITLES))
    track = Subtitles("longvideobench", path, offset=1.0, duration=10.0)
    # frames 0, 20, 40, 60 at 10 fps are at 0, 2, 4, 6 s. Shifted by 1 s the cues are
    # a [0, 2.5] (holds 2), b [3.8, 4.0] widened to [3.4, 4.4] (holds 4), c [7, 9] (end None ->
    # duration 10; holds none), d [5.5, 6.5] (holds 6); "strictly inside": a does not hold 0
    assert track.lines([0, 20, 40, 60], 10.0) == ["a", "b", "d"]
    assert track.context([0, 20, 40, 60], 10.0) == "a\nb\nd"
    assert track.lines([0], 10.0) == []


def test_longvideobench_subtitles_load_and_fail_in_one_line(tmp_path, capsys):
    mp4 = write_mp4(tmp_path / "src" / "clip.mp4")
    root = tmp_path / "LongVideoBench"
    dump(root / "lvb_val.json", LVB_ENTRIES)
    for entry in LVB_ENTRIES:
        place(mp4, root / "videos" / entry["video_path"])
    with pytest.raises(DataError, match=r"field 'subtitle_path': .*86CxyhFV9MI_en.json not "
                                        r"found"):
        load_dataset("longvideobench", root, subtitles=True)
    for entry in LVB_ENTRIES:
        dump(root / "subtitles" / entry["subtitle_path"], LVB_SUBTITLES)
    samples = load_dataset("longvideobench", root, subtitles=True)
    assert samples[0].subtitles == Subtitles("longvideobench",
                                             root / "subtitles" / "86CxyhFV9MI_en.json", 0.0, 2.0)
    (root / "subtitles" / "86CxyhFV9MI_en.json").write_text("{not json")
    assert main(["data", "check", "--dataset", "longvideobench", "--data-root", str(root),
                 "--subtitles", "--json"]) == 1
    [problem] = json.loads(capsys.readouterr().out)["problems"]
    assert problem["field"] == "subtitles" and "cannot read the subtitle JSON" in \
        problem["reason"]


def test_context_goes_before_the_question_and_the_spans_follow():
    from mapflow_tl.models.prompt import render_prompt

    def template(block, media):
        return f"USER: {media}\n{block} ASSISTANT:"

    context = "This video's subtitles are listed below: \nhello"
    rendered = render_prompt("Why?", ["yes", "no"], template=template, media="<video>",
                             answer=1, context=context)
    assert rendered.text.startswith(f"USER: <video>\n{context}\nQuestion: Why?\nOptions:\n")
    assert rendered.question.of(rendered.text) == "Why?"
    assert [o.of(rendered.text) for o in rendered.options] == ["(A) yes", "(B) no"]
    assert rendered.question_with_options.of(rendered.text).startswith("Question: Why?")


def test_an_edited_video_keeps_the_subtitles_of_the_clean_frames(videomme):
    import mapflow_tl as mf
    from mapflow_tl.counterfactuals import counterfactual

    (videomme / "subtitle").mkdir()
    (videomme / "subtitle" / "fFjv93ACGo8.srt").write_text(SRT)
    sample = load_dataset("videomme", videomme, subtitles=True)[0]
    # 4 frames by the sample's rule, linspace(0, 19, 4) = 0, 6, 12, 19: cues 1 and 2 (hand)
    edit = counterfactual(sample, "reverse", num_frames=4)
    context = "This video's subtitles are listed below: \nhello\nworld"
    assert edit.original.subtitles == edit.sample.subtitles == context
    vlm = mf.load_videollm("synthtv-video-ft")
    # the prepared sample records the text it used, which analyses hand to their edits
    assert vlm.prepare(sample).meta["subtitles"].startswith("This video's subtitles")
    assert context + "\nQuestion:" in vlm.prepare(edit.sample).prompt


def test_eval_with_subtitles_on_a_benchmark_without_them_is_one_line(tmp_path, monkeypatch,
                                                                       capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    out = tmp_path / "run"
    code = main(["eval", "--out", str(out), "--dataset", "tvbench", "--data-root",
                 str(tmp_path), "--subtitles"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "dataset 'tvbench' has no subtitles to read" in err[-1]
    assert not out.exists()


def test_the_frame_sampler_and_subtitles_are_part_of_a_runs_identity():
    from mapflow_tl.runs import identity_differences

    then = {"dataset": "videomme", "frame_sampler": "linspace"}
    assert identity_differences(then, {**then, "frame_sampler": "midpoints"}) == \
        ["frame_sampler: 'linspace' then, 'midpoints' now"]
    assert identity_differences(then, {**then, "subtitles": True}) == \
        ["subtitles: None then, True now"]
