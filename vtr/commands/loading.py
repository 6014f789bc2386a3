"""``--model`` for the commands: the shipped trained model, a built-in random tiny model, or a checkpoint.

A name that is none of these gets a one-line error naming what was tried and the built-in names,
before transformers sees it (whose message for a missing local path is about hub repo ids).
"""

from __future__ import annotations

import os
from pathlib import Path

from vtr.assets import NAME as TRAINED
from vtr.commands.common import CommandError


def builtin_names() -> list[str]:
    """The names ``--model`` accepts without a checkpoint."""
    from vtr import testing

    return [TRAINED, *testing.BUILDERS]


def _looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything with a leading ``.``, ``/`` or ``~``, a backslash,
    more than one ``/`` or a file suffix is meant as a path."""
    return (name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1
            or Path(name).suffix in (".json", ".safetensors", ".bin"))


def check_checkpoint(name: str, also: list[str] = ()) -> None:
    """Raise ``CommandError`` when ``name`` (not a built-in) cannot be a checkpoint: a missing path, a
    directory without ``config.json``, or a bare word that is no built-in name (``also``: the command's
    other names, e.g. presets)."""
    known = ", ".join([*builtin_names(), *also])
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise CommandError(f"--model {name}: {'a directory' if path.is_dir() else 'a file'} without "
                               f"config.json, not a checkpoint saved with save_pretrained (built-in models: "
                               f"{known})")
        return
    if _looks_like_path(name):
        raise CommandError(f"--model {name}: the path does not exist; pass a checkpoint directory saved with "
                           f"save_pretrained, or a built-in model: {known}")
    if "/" not in name:
        raise CommandError(f"--model {name}: not a built-in model ({known}), an existing directory or a hub "
                           f"id (org/name)")


def load(name: str, device: str = "cpu", dtype=None, also: list[str] = ()):
    """``(model, processor)`` from ``TRAINED``, a tiny builder name (``vtr.testing.BUILDERS``), a
    checkpoint directory or a hub id (downloaded where the hub can be reached). ``also``: the command's
    other model names, listed when ``name`` is none of these."""
    import torch

    from vtr import testing

    dtype = torch.float32 if dtype is None else dtype
    if name in testing.BUILDERS:
        model, processor = testing.build(name)
        return model.to(device=device, dtype=dtype), processor
    if name == TRAINED:
        from vtr.assets import tiny_llava_synth

        source = str(tiny_llava_synth())
    else:
        check_checkpoint(name, also)
        source = os.path.expanduser(name)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype).to(device).eval()
        return model, AutoProcessor.from_pretrained(source)
    except (OSError, ValueError) as error:  # not on the hub / offline / not an image-text-to-text model
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CommandError(f"--model {name}: could not load it ({first_line}); built-in models: "
                           f"{', '.join([*builtin_names(), *also])}") from None


def demo_image(model, seed: int = 0):
    """A random-noise image sized for the model's processor (its adapter's ``demo_image_size``)."""
    from vtr import testing
    from vtr.adapters import adapter_class

    width, height = adapter_class(model.config).demo_image_size
    return testing.random_image(width, height, seed=seed)


def demo_inputs(model, processor, question: str = "what is in the image ?"):
    """``demo_image`` and a chat-formatted question, as processor inputs."""
    from vtr import testing

    prompt = testing.prompt(processor, question)
    return processor(images=[demo_image(model)], text=[prompt], return_tensors="pt").to(model.device)
