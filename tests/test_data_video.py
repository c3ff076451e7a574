"""Video reading and frame sampling on small real files written here (PyAV, Pillow).

Frame i of every test video is a flat grey of level 8·i, so the decoded frames tell which source
frame was read. Expected indices are computed by hand from the reference formula
int(start + seg/2 + round(seg·i)), seg = (end - start) / N, round half to even.

Every video-file test runs with each reader (decord where installed, PyAV everywhere); the last
tests compare the two readers with each other and with the source frames on videos with many
keyframes and B-frames, where PyAV seeks.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mapflow_tl.data import DataError, probe_video, read_video
from mapflow_tl.data import video as video_module
from mapflow_tl.data.video import resolve_reader, segment_midpoints

av = pytest.importorskip("av")
Image = pytest.importorskip("PIL.Image")

LEVEL = 8  # grey level step per frame
HAVE_DECORD = importlib.util.find_spec("decord") is not None
READERS = [pytest.param("decord", marks=pytest.mark.skipif(not HAVE_DECORD,
                                                            reason="decord is not installed")),
           "pyav"]


@pytest.fixture(params=READERS)
def reader(request) -> str:
    return request.param


def grey(i: int, size: int = 32) -> np.ndarray:
    return np.full((size, size, 3), (LEVEL * i) % 256, np.uint8)


def noise(i: int, size: int = 64) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, (size, size, 3), dtype=np.uint8)


def write_video(path: Path, n_frames: int = 30, fps: int = 10, codec: str = "libx264",
                options: dict | None = None, frame=grey, size: int = 32,
                gop: int | None = None) -> Path:
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        if gop is not None:  # a keyframe every `gop` frames at most, so that a reader must seek
            stream.codec_context.gop_size = gop
        for i in range(n_frames):
            image = frame(i, size)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def source_frames(frames: np.ndarray) -> list[int]:
    """Which source frame each decoded frame is (from its grey level)."""
    return [int(round(float(frame.mean()) / LEVEL)) for frame in frames]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    files = {
        "mp4": write_video(root / "clip.mp4"),
        "webm": write_video(root / "clip.webm", codec="libvpx"),
        "avi": write_video(root / "clip.avi", codec="mpeg4"),
        "mkv": write_video(root / "clip.mkv"),
        "short": write_video(root / "short.mp4", n_frames=5),
        "faststart": write_video(root / "faststart.mp4", options={"movflags": "faststart"}),
    }
    frames = root / "frames"
    frames.mkdir()
    for number in range(1, 11):  # the reference numbering: 00001.jpg ...
        Image.fromarray(grey(number)).save(frames / f"{number:05d}.jpg", quality=95)
    files["frames"] = frames
    gif = [Image.fromarray(grey(i)) for i in range(12)]
    gif[0].save(root / "clip.gif", save_all=True, append_images=gif[1:], duration=40, loop=0)
    files["gif"] = root / "clip.gif"
    return files


def test_segment_midpoints_by_hand():
    # seg = 29/8 = 3.625: 1.8125 + round(3.625 i), round(3.625 i) = 0, 4, 7, 11, 14 (14.5 rounds
    # to even), 18, 22, 25
    assert segment_midpoints(0, 29, 8).tolist() == [1, 5, 8, 12, 15, 19, 23, 26]
    # seg = 0.5, a range shorter than N: frames repeat
    assert segment_midpoints(0, 4, 8).tolist() == [0, 0, 1, 2, 2, 2, 3, 4]


@pytest.mark.parametrize("kind", ["mp4", "webm", "avi", "mkv"])
def test_uniform_sampling_reads_the_midpoint_frames(videos, kind, reader):
    clip = read_video(videos[kind], reader=reader)
    expected = [1, 5, 8, 12, 15, 19, 23, 26]
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (8, 32, 32, 3)
    assert clip.indices.tolist() == expected
    assert source_frames(clip.frames) == expected
    np.testing.assert_allclose(clip.timestamps, np.array(expected) / 10.0)
    assert clip.info.num_frames == 30 and clip.info.fps == pytest.approx(10.0)


def test_bounds_in_seconds(videos, reader):
    # [1 s, 2 s] at 10 fps = frames 10..20, seg = 1.25
    clip = read_video(videos["mp4"], 8, bounds=(1.0, 2.0), reader=reader)
    assert clip.indices.tolist() == [10, 11, 12, 14, 15, 16, 18, 19]
    assert source_frames(clip.frames) == clip.indices.tolist()
    # an end past the video is clipped to the last frame
    assert read_video(videos["mp4"], 4, bounds=(0.0, 99.0),
                      reader=reader).indices.tolist() == [3, 10, 17, 25]
    to_the_end = read_video(videos["mp4"], 4, bounds=(0.0, float("inf")), reader=reader)
    assert to_the_end.indices.tolist() == [3, 10, 17, 25]


def test_bounds_outside_the_video_name_the_file(videos):
    with pytest.raises(DataError, match="clip.mp4.*select no frame"):
        read_video(videos["mp4"], bounds=(5.0, 6.0))
    with pytest.raises(DataError, match="start=2.0 end=1.0"):
        read_video(videos["mp4"], bounds=(2.0, 1.0))


def test_fps_sampling(videos, reader):
    clip = read_video(videos["mp4"], fps=2.0, reader=reader)  # every 5th frame of a 10 fps video
    assert clip.indices.tolist() == [0, 5, 10, 15, 20, 25]
    assert source_frames(clip.frames) == [0, 5, 10, 15, 20, 25]
    np.testing.assert_allclose(clip.timestamps, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    assert read_video(videos["mp4"], fps=2.0, bounds=(1.0, 2.0)).indices.tolist() == [10, 15, 20]
    # 30 frames at 10 fps is more than max_frames=4: uniform sampling of 4 instead (seg = 7.25)
    assert read_video(videos["mp4"], fps=10.0, max_frames=4).indices.tolist() == [3, 10, 17, 25]


def test_short_video_repeats_or_raises(videos, reader):
    clip = read_video(videos["short"], 8, reader=reader)
    assert clip.frames.shape[0] == 8
    assert clip.indices.tolist() == [0, 0, 1, 2, 2, 2, 3, 4]
    assert source_frames(clip.frames) == [0, 0, 1, 2, 2, 2, 3, 4]
    with pytest.raises(DataError, match=r"short.mp4: only 5 frame\(s\), fewer than the 8"):
        read_video(videos["short"], 8, short_video="error", reader=reader)
    assert read_video(videos["short"], 4, short_video="error", reader=reader).frames.shape[0] == 4


def test_frame_folder_uses_the_reference_numbering(videos):
    # files 00001..00010 at 3 fps; first = 1, last = 10, seg = 2.25 -> file numbers 2, 4, 6, 9
    clip = read_video(videos["frames"], 4)
    assert clip.info.kind == "frames" and clip.info.num_frames == 10
    assert clip.indices.tolist() == [1, 3, 5, 8]  # 0-based positions
    assert source_frames(clip.frames) == [2, 4, 6, 9]
    np.testing.assert_allclose(clip.timestamps, np.array([2, 4, 6, 9]) / 3.0)
    # bounds [1 s, 2 s] -> file numbers 3..6, seg = 0.75 -> 3, 4, 5, 5
    assert source_frames(read_video(videos["frames"], 4, bounds=(1.0, 2.0)).frames) == [3, 4, 5, 5]


def test_gif(videos):
    clip = read_video(videos["gif"], 4)  # 12 frames, seg = 2.75
    assert clip.info.kind == "gif" and clip.info.fps == 25.0
    assert clip.indices.tolist() == [1, 4, 7, 9]
    assert source_frames(clip.frames) == [1, 4, 7, 9]
    assert clip.frames.shape == (4, 32, 32, 3)


def test_probe_is_cheap_and_exact(videos, reader):
    info = probe_video(videos["webm"], reader=reader)
    assert (info.kind, info.num_frames, info.fps, info.duration) == ("video", 30, 10.0, 3.0)


def test_missing_video(tmp_path):
    with pytest.raises(DataError, match="nothere.mp4: no such video file") as caught:
        read_video(tmp_path / "nothere.mp4")
    assert isinstance(caught.value, ValueError)
    assert caught.value.path == str(tmp_path / "nothere.mp4")


@pytest.mark.parametrize("content", [b"", b"this is not a video" * 20], ids=["empty", "garbage"])
def test_corrupt_video(tmp_path, content, reader):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(DataError, match="bad.mp4: cannot open the video"):
        read_video(path, reader=reader)


@pytest.mark.parametrize("kind", ["mp4", "faststart"])
def test_truncated_video(videos, tmp_path, kind, reader):
    data = videos[kind].read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.mp4: cannot open the video.*truncated"):
        probe_video(path, reader=reader)


def test_bad_frame_folder_and_gif(tmp_path, videos):
    empty = tmp_path / "empty_frames"
    empty.mkdir()
    with pytest.raises(DataError, match="empty_frames: the frame folder holds no images"):
        read_video(empty)
    broken = tmp_path / "broken_frames"
    broken.mkdir()
    for number in range(1, 5):
        Image.fromarray(grey(number)).save(broken / f"{number:05d}.jpg")
    (broken / "00003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken_frames: cannot decode frames"):
        read_video(broken, 4)
    gif = tmp_path / "bad.gif"
    gif.write_bytes(videos["gif"].read_bytes()[:20])
    with pytest.raises(DataError, match="bad.gif"):
        read_video(gif, 4)


def test_reader_choice(monkeypatch):
    assert resolve_reader("pyav") == "pyav" and resolve_reader("decord") == "decord"
    assert resolve_reader("auto") == ("decord" if HAVE_DECORD else "pyav")
    # where decord does not install (ARM, macOS), "auto" reads with PyAV
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(video_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "decord" else real_find_spec(name, *a))
    assert resolve_reader("auto") == "pyav"
    with pytest.raises(ValueError, match="video reader 'opencv' is not one of 'auto', 'decord'"):
        read_video("clip.mp4", reader="opencv")


@pytest.fixture(scope="module")
def seeking_videos(tmp_path_factory) -> dict[str, Path]:
    """60 frames of noise, a keyframe every 7 frames at most (B-frames in the H.264 ones): a
    reader must seek and must not confuse decoding order with presentation order."""
    root = tmp_path_factory.mktemp("seeking")
    return {
        "mp4": write_video(root / "gop.mp4", 60, frame=noise, size=64, gop=7),
        "mkv": write_video(root / "gop.mkv", 60, frame=noise, size=64, gop=7),
        "webm": write_video(root / "gop.webm", 60, codec="libvpx", frame=noise, size=64, gop=7),
        "avi": write_video(root / "gop.avi", 60, codec="mpeg4", frame=noise, size=64, gop=7),
    }


def nearest_source(frames: np.ndarray, n_sources: int) -> list[int]:
    """For each decoded frame, the source noise frame it is closest to (mean squared error)."""
    sources = np.stack([noise(i) for i in range(n_sources)]).astype(np.float64)
    return [int(np.argmin(((sources - frame.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))))
            for frame in frames]


@pytest.mark.parametrize("kind", ["mp4", "mkv", "webm", "avi"])
def test_pyav_seeks_to_the_same_frames_as_the_source(seeking_videos, kind):
    # out of order and repeated, as fps sampling and short videos ask
    wanted = [0, 59, 3, 30, 30, 31, 6, 7, 8, 44, 50, 49]
    clip = read_video(seeking_videos[kind], fps=10.0, reader="pyav")  # every frame, in order
    assert clip.indices.tolist() == list(range(60))
    assert nearest_source(clip.frames, 60) == list(range(60))
    picked = video_module._decode_frames(clip.info, np.array(wanted), 1, "pyav")
    assert nearest_source(picked, 60) == wanted


@pytest.mark.skipif(not HAVE_DECORD, reason="decord is not installed")
@pytest.mark.parametrize("kind", ["mp4", "webm", "avi", "mkv", "short", "faststart", "gop-mp4",
                                  "gop-mkv", "gop-webm", "gop-avi"])
def test_decord_and_pyav_agree(videos, seeking_videos, kind):
    path = seeking_videos[kind[4:]] if kind.startswith("gop-") else videos[kind]
    for options in ({}, {"num_frames": 16}, {"fps": 3.0}, {"bounds": (0.5, 2.2)}):
        if "bounds" in options and kind == "short":
            continue  # 5 frames, 0.5 s: nothing in these bounds
        by_decord = read_video(path, reader="decord", **options)
        by_pyav = read_video(path, reader="pyav", **options)
        assert by_decord.info == by_pyav.info
        assert by_pyav.indices.tolist() == by_decord.indices.tolist()
        np.testing.assert_array_equal(by_pyav.timestamps, by_decord.timestamps)
        # both decode with FFmpeg and convert with swscale; codec noise would be a few levels
        difference = np.abs(by_pyav.frames.astype(np.int16) - by_decord.frames.astype(np.int16))
        assert difference.max() <= 2, f"{kind} {options}: max |decord - pyav| {difference.max()}"


# ------------------------------------------------------------------ issue 36: faults in inputs
def test_window_ends_are_rounded_to_the_nearest_frame_not_truncated(videos, reader):
    # start 0.46 s, end 1.46 s at 10 fps: frames 4.6 -> 5 and 14.6 -> 15 (the reference's
    # round(t * fps)); seg = 10 / 2 = 5: int(5 + 2.5) = 7, int(5 + 2.5 + 5) = 12. Truncating
    # would give frames 4..14 and [6, 11].
    clip = read_video(videos["mp4"], 2, bounds=(0.46, 1.46), reader=reader)
    assert clip.indices.tolist() == [7, 12]
    assert source_frames(clip.frames) == [7, 12]
    # the same on a frame folder (3 fps, numbered from 1): 1.2 s -> frame 3.6 -> 4, 2.9 s ->
    # 8.7 -> 9; seg = 2.5: int(4 + 1.25) = 5, int(5.25 + round(2.5) = 2) = 7, 0-based 4 and 6
    # (truncated: frames 3..8 and 0-based [3, 5])
    assert read_video(videos["frames"], 2, bounds=(1.2, 2.9)).indices.tolist() == [4, 6]


def test_fps_above_the_source_rate_gives_every_frame_once(videos, reader):
    clip = read_video(videos["mp4"], fps=100.0, reader=reader)
    assert clip.indices.tolist() == list(range(30))
    assert source_frames(clip.frames) == list(range(30))
    # within a window too: [1 s, 2 s] = frames 10..20, each once
    window = read_video(videos["mp4"], fps=25.0, bounds=(1.0, 2.0), reader=reader)
    assert window.indices.tolist() == list(range(10, 21))


@pytest.mark.parametrize("bounds", [(0.0, 1e308), (1e308, float("inf")), (-1e308, 1.0)])
def test_window_bounds_beyond_any_frame_number_are_a_data_error(videos, bounds):
    # int(round(1e308 * fps)) raised OverflowError (a traceback in runs and data check)
    with pytest.raises(DataError, match=r"clip.mp4: bounds .* beyond any frame number at 10 fps; "
                                        r"fix the sample's start/end"):
        read_video(videos["mp4"], bounds=bounds)


def test_sixteen_bit_png_frames_are_scaled_to_eight_bits(tmp_path):
    folder = tmp_path / "frames16"
    folder.mkdir()
    levels = [0, 40, 129, 200, 255]
    for number, level in enumerate(levels, start=1):
        # 16-bit greyscale: level * 257 is the 16-bit value of the 8-bit level (255 -> 65535)
        values = np.full((8, 8), level * 257, np.uint16)
        values[0, 0] = level * 257 + (128 if level < 255 else -128)  # rounds to the same level
        Image.fromarray(values).save(folder / f"{number:05d}.png")
    assert Image.open(folder / "00002.png").mode.startswith("I")  # really a 16-bit file
    clip = read_video(folder, fps=1.0, frame_folder_fps=1.0)  # every frame once
    assert clip.indices.tolist() == [0, 1, 2, 3, 4]
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (5, 8, 8, 3)
    for frame, level in zip(clip.frames, levels):
        assert np.all(frame == level), (level, np.unique(frame))
