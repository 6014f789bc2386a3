"""`vtr show`: the commands of the issue write a PNG of what each method kept; user errors are one line."""

from __future__ import annotations

import sys

import numpy as np
from PIL import Image

from vtr import testing
from vtr.cli import main

RED = (230, 20, 20)


def _scene(path) -> None:
    """Grey noise with one red square: the square's colour must survive into the picture."""
    pixels = np.asarray(testing.random_image(32, 32, seed=4)) // 4 + 96
    pixels[8:20, 12:24] = RED
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def test_show_an_image(tmp_path, capsys):
    _scene(tmp_path / "photo.png")
    out = tmp_path / "kept.png"
    assert main(["show", "--model", "llava", "--image", str(tmp_path / "photo.png"), "--question",
                 "what is on the sign ?", "--methods", "divprune,fastv", "--budgets", "0.25,0.11", "--out",
                 str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    picture = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert picture.shape[0] > picture.shape[1]  # three rows (none, divprune, fastv) of two budgets
    red = (np.abs(picture - RED).max(-1) <= 3).sum()
    assert red > 500  # the unreduced cell shows the whole square, at least


def _video(path, frames: int = 6) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in testing.random_video(frames, 32, 32, seed=1):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_show_a_video(tmp_path, capsys):
    _video(tmp_path / "clip.mp4")
    out = tmp_path / "kept_video.png"
    assert main(["show", "--model", "llava_onevision", "--video", str(tmp_path / "clip.mp4"), "--frames", "4",
                 "--methods", "holitom,divprune", "--budgets", "0.1", "--out", str(out)]) == 0
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[1] > 2 * picture.shape[0] / 3  # one wide strip of 4 frames per row


def test_user_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert main(["show", "--model", "llava", "--image", "x.png", "--methods", "divprnue"]) == 2
    assert "unknown ['divprnue']" in capsys.readouterr().err
    assert main(["show", "--model", "llava", "--image", "x.png", "--budgets", "1.5"]) == 2
    assert capsys.readouterr().err.startswith("vtr show: error: --budgets 1.5:")
    assert main(["show", "--model", "llava", "--image", str(tmp_path / "missing.png")]) == 2
    assert "image file not found" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    assert main(["show", "--model", "llava", "--image", "x.png"]) == 2
    error = capsys.readouterr().err
    assert "matplotlib, which is not installed: pip install matplotlib" in error and "Traceback" not in error


def test_the_readme_picture_is_the_one_its_command_writes_and_small():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    command = "vtr show --scene 3 --methods divprune,tome,fastv --budgets 0.11 --out docs/assets/kept.png"
    assert command in readme and "](docs/assets/kept.png)" in readme
    picture = root / "docs" / "assets" / "kept.png"
    assert picture.stat().st_size < 100_000
    assert np.asarray(Image.open(picture)).shape[0] > 400  # four rows: none, divprune, tome, fastv


def test_show_a_synthetic_scene(tmp_path, capsys):
    out = tmp_path / "scene.png"
    assert main(["show", "--model", "llava", "--scene", "0", "--methods", "divprune", "--budgets", "0.5",
                 "--out", str(out)]) == 0
    assert np.asarray(Image.open(out)).shape[0] > 200
    assert main(["show", "--model", "llava", "--scene", "-1"]) == 2
    assert "scenes are numbered from 0" in capsys.readouterr().err
