"""How vtr's lmms-eval model classes load a checkpoint: one set of loading keys for every family.

lmms-eval's classes disagree on loading: llava_hf defaults to ``device_map=""`` (which transformers 5
rejects), the Qwen classes hard-code ``bfloat16`` and take no ``dtype``, qwen2_vl has no
``attn_implementation``, and every class puts rank i of a data-parallel run on ``cuda:i``. vtr's
classes take ``device``, ``device_map``, ``dtype`` and ``attn_implementation`` themselves
(``Loading``), hand the device to the lmms-eval class, and apply all four to the one
``from_pretrained`` call the class makes (``Loading.applied``), so the same ``--model_args`` mean
the same thing for every family. Without any of them the model goes to the only GPU (GPU 0 when
there are several, rank i's GPU in a data-parallel run), else the CPU; ``Loading.describe`` says
which and why, and the model class logs it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch

LOADING_KEYS = ("device", "device_map", "dtype", "attn_implementation")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")
# device_map values that spread the model: its inputs go to the first device
_SPREADING = ("auto", "balanced", "balanced_low_0", "sequential")


@dataclass(frozen=True)
class Loading:
    """Where and how the checkpoint loads; ``reason`` says why when vtr chose the device."""

    device: str
    device_map: str
    dtype: str | None = None  # None: the lmms-eval class's own choice
    attn_implementation: str | None = None
    reason: str = "set in --model_args"

    @classmethod
    def resolve(cls, given: dict[str, Any], rank: int, world_size: int) -> "Loading":
        """The loading keys a user gave (any subset of ``LOADING_KEYS``), completed; ``ValueError`` if invalid."""
        dtype, attention = given.get("dtype"), given.get("attn_implementation")
        if dtype is not None and str(dtype) not in DTYPES:
            raise ValueError(f"dtype={dtype!r} is not one of {', '.join(DTYPES)}")
        if attention is not None and attention not in ATTENTION:
            raise ValueError(f"attn_implementation={attention!r} is not one of {', '.join(ATTENTION)}")
        device, device_map = given.get("device"), given.get("device_map")
        device, device_map = (str(device) if device else None), (str(device_map) if device_map else None)
        if device is None and device_map is None:
            device, reason = default_device(rank, world_size)
            return cls(device, device, dtype, attention, reason)
        if device is None:
            device = _first_device() if device_map in _SPREADING else device_map
        return cls(device, device_map or device, dtype and str(dtype), attention)

    def describe(self) -> str:
        spread = f", device_map={self.device_map}" if self.device_map != self.device else ""
        return f"{self.device}{spread} ({self.reason}); dtype {self.dtype or 'the lmms-eval class default'}"

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block, every ``from_pretrained`` of a transformers model loads as this says."""
        from transformers import PreTrainedModel

        overrides: dict[str, Any] = {"device_map": self.device_map}
        if self.dtype is not None:
            overrides["dtype"] = self.dtype if self.dtype == "auto" else getattr(torch, self.dtype)
        if self.attn_implementation is not None:
            overrides["attn_implementation"] = self.attn_implementation
        original = PreTrainedModel.__dict__["from_pretrained"]
        load = original.__func__

        def from_pretrained(model_class, *args: Any, **kwargs: Any):
            if "dtype" in overrides:
                kwargs.pop("torch_dtype", None)
            return load(model_class, *args, **{**kwargs, **overrides})

        PreTrainedModel.from_pretrained = classmethod(from_pretrained)
        try:
            yield
        finally:
            PreTrainedModel.from_pretrained = original


def default_device(rank: int, world_size: int) -> tuple[str, str]:
    """(device, why): the GPU of this rank, the only (or first) GPU, or the CPU."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if world_size > 1:
        if gpus == 0:
            return "cpu", f"rank {rank} of {world_size}, no GPU found"
        if gpus < world_size:
            raise ValueError(f"{world_size} data-parallel processes need {world_size} GPUs, found {gpus}; run fewer "
                             f"processes or set device_map= in --model_args")
        return f"cuda:{rank}", f"rank {rank} of {world_size}: GPU {rank}"
    if gpus == 0:
        return "cpu", "no GPU found"
    if gpus == 1:
        return "cuda:0", "the only GPU"
    return "cuda:0", f"GPU 0 of {gpus}; device_map=auto spreads the model, --num-processes runs data parallel"


def _first_device() -> str:
    return "cuda:0" if torch.cuda.is_available() else "cpu"
