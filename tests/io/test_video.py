"""Video loading on small files written here with PyAV; both backends; clear errors for bad files."""

from __future__ import annotations

import math

import numpy as np
import pytest

import vtr.io.video
from vtr.errors import VideoDecodeError
from vtr.io.video import frame_indices, load_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """24 frames at 8 fps, 64x48, each frame a flat grey level 10*i so frames are identifiable."""
    import av

    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(24):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_uniform_indices_include_first_and_last():
    assert frame_indices(24, 8.0, num_frames=4).tolist() == [0, 8, 15, 23]
    assert frame_indices(3, 8.0, num_frames=10).tolist() == [0, 1, 2]


def test_fps_indices_and_cap():
    assert frame_indices(24, 8.0, fps=2).tolist() == [0, 4, 8, 12, 16, 20]
    assert frame_indices(24, 8.0, fps=2, num_frames=3).tolist() == [0, 8, 20]
    assert frame_indices(24, 8.0, fps=100).tolist() == list(range(24))


@pytest.mark.parametrize("bad", [dict(num_frames=0), dict(fps=0), dict(fps=-1.0)])
def test_bad_sampling_arguments(bad):
    with pytest.raises(ValueError):
        frame_indices(24, 8.0, **bad)


@pytest.mark.parametrize("backend", ["decord", "pyav", "auto"])
def test_backends_decode_the_sampled_frames(clip, backend):
    video = load_video(clip, num_frames=4, backend=backend)
    assert video.frames.shape == (4, 48, 64, 3) and video.frames.dtype == np.uint8
    assert video.source_fps == pytest.approx(8.0)
    np.testing.assert_allclose(video.timestamps, np.array([0, 8, 15, 23]) / 8.0)
    grey = video.frames.reshape(4, -1).mean(1)  # flat frames: grey level 10*i survives lossy coding
    np.testing.assert_allclose(grey, [0, 80, 150, 230], atol=6)


def test_backends_agree(clip):
    a = load_video(clip, fps=2, backend="decord").frames.astype(int)
    b = load_video(clip, fps=2, backend="pyav").frames.astype(int)
    assert a.shape == b.shape == (6, 48, 64, 3)
    assert np.abs(a - b).mean() < 3


def test_corrupt_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 255, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(VideoDecodeError, match=r"broken\.mp4.*decord:.*pyav:.*re-encode"):
        load_video(bad, num_frames=4)


BAD_ARGUMENTS = [
    (dict(num_frames=0), "num_frames must be a positive int"), (dict(num_frames=-3), "num_frames must be"),
    (dict(num_frames=2.5), "num_frames must be"), (dict(num_frames=True), "num_frames must be"),
    (dict(num_frames="4"), "num_frames must be"), (dict(fps=-1), "fps must be a positive, finite number"),
    (dict(fps=0), "fps must be"), (dict(fps=math.nan), "fps must be"), (dict(fps=math.inf), "fps must be"),
    (dict(fps="2"), "fps must be"), (dict(num_frames=4, fps=-1), "fps must be"),
]


@pytest.mark.parametrize("bad,message", BAD_ARGUMENTS)
def test_bad_arguments_on_a_valid_file_are_value_errors_naming_them(clip, monkeypatch, bad, message):
    def never(*args):
        raise AssertionError("decoding started before the arguments were checked")

    with monkeypatch.context() as patched:
        patched.setattr(vtr.io.video, "_read_decord", never)
        patched.setattr(vtr.io.video, "_read_pyav", never)
        with pytest.raises(ValueError, match=f"{message}.*pass e.g."):
            load_video(clip, **bad)
    assert load_video(clip, num_frames=4).frames.shape[0] == 4  # the same file still loads


def test_a_directory_says_it_is_one_and_a_non_path_is_a_value_error(clip, tmp_path):
    with pytest.raises(VideoDecodeError, match=f"{tmp_path.name}.* is a directory, not a video file"):
        load_video(tmp_path, num_frames=4)
    with pytest.raises(ValueError, match="path must be a video file's path"):
        load_video(None, num_frames=4)
    assert load_video(clip, fps=2).frames.shape[0] == 6


def test_missing_file_and_bad_backend(tmp_path):
    with pytest.raises(VideoDecodeError, match="not found.*nope.mp4"):
        load_video(tmp_path / "nope.mp4")
    with pytest.raises(ValueError, match="backend must be one of"):
        load_video(tmp_path / "nope.mp4", backend="opencv")


def test_truncated_file_gives_the_documented_error(clip, tmp_path):
    data = clip.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(VideoDecodeError, match=r"truncated\.mp4.*corrupt or truncated"):
        load_video(truncated, num_frames=4)
