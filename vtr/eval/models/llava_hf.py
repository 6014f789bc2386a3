"""``vtr_llava_hf``: lmms-eval's llava_hf (llava, llava_next, llava_onevision checkpoints), reduced."""

from typing import Any

from lmms_eval.models.chat.llava_hf import LlavaHf as LlavaHfChat
from lmms_eval.models.simple.llava_hf import LlavaHf

from vtr.eval.models.base import Reduced
from vtr.io.video import load_video


class VtrLlavaHf(Reduced, LlavaHf):
    """Simple variant (``--force_simple``; needed for loglikelihood / multiple-choice tasks)."""


class VtrLlavaHfChat(Reduced, LlavaHfChat):
    """Chat variant (lmms-eval's default when both exist), with videos decoded to frames first."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._image_processor = FrameDecodingProcessor(self._image_processor, self.max_frames_num)


class FrameDecodingProcessor:
    """The processor, called the way transformers 5 can serve lmms-eval's llava_hf chat class.

    That class calls ``processor(images=[], videos=[path, ...], ...)`` for a video document: the
    OneVision image processor fails on the empty image list (``images[0]``), and a video path makes
    transformers decode it with torchcodec. Here an empty image list becomes ``None`` and each video
    path becomes ``max_frames_num`` frames sampled evenly (``vtr.io.video``: decord, then PyAV), as
    lmms-eval's simple class samples them. Everything else is the processor's own.
    """

    def __init__(self, processor: Any, max_frames_num: int) -> None:
        self.processor, self.max_frames_num = processor, max_frames_num

    def __call__(self, *args: Any, images: Any = None, videos: Any = None, **kwargs: Any):
        if videos is not None:
            videos = [load_video(video, num_frames=self.max_frames_num).frames if isinstance(video, str) else video
                      for video in videos]
        if isinstance(images, list) and not images:
            images = None
        return self.processor(*args, images=images, videos=videos, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name == "processor":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.processor, name)
