"""Video paths given to a transformers processor decode with decord, then PyAV, with the processor's sampling."""

from __future__ import annotations

import numpy as np
import pytest

from vtr import testing
from vtr.errors import VideoDecodeError
from vtr.eval.models.videos import decode_with_local_backends
from vtr.eval.tasks.utils import _video_file


def every_other(metadata, **kwargs):
    return np.arange(0, metadata.total_num_frames, 2)


@pytest.fixture
def video_processor():
    processor = testing.gemma4_processor().video_processor
    decode_with_local_backends(processor)
    return processor


def test_paths_decode_with_the_processors_sampling_and_metadata(video_processor):
    path = str(_video_file("red"))  # 8 frames of one color
    frames, metadata = video_processor.fetch_videos(path, sample_indices_fn=every_other)
    assert frames.shape[0] == 4 and frames.dtype == np.uint8
    assert list(metadata.frames_indices) == [0, 2, 4, 6] and metadata.total_num_frames == 8
    both, metadatas = video_processor.fetch_videos([path, str(_video_file("blue"))], sample_indices_fn=every_other)
    assert len(both) == len(metadatas) == 2
    assert both[0][0, 0, 0, 0] > both[0][0, 0, 0, 2] and both[1][0, 0, 0, 2] > both[1][0, 0, 0, 0]  # red, blue


def test_pyav_reads_what_decord_cannot(video_processor, monkeypatch):
    import transformers.video_utils

    real = transformers.video_utils.load_video
    used = []

    def load_video(video, backend, **kwargs):
        used.append(backend)
        if backend == "decord":
            raise RuntimeError("decord cannot read this container")
        return real(video, backend=backend, **kwargs)

    monkeypatch.setattr(transformers.video_utils, "load_video", load_video)
    frames, _ = video_processor.fetch_videos(str(_video_file("red")), sample_indices_fn=every_other)
    assert used == ["decord", "pyav"] and frames.shape[0] == 4


def test_a_file_no_decoder_reads_names_each_failure(video_processor, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(VideoDecodeError, match=r"broken\.mp4.*decord: .*pyav: .*pip install decord av"):
        video_processor.fetch_videos(str(broken))
