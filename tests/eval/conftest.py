"""Fixtures for the lmms-eval integration: tiny checkpoints saved with save_pretrained, run offline."""

from __future__ import annotations

import os

import pytest

from vtr import testing

# read by the lmms-eval subprocesses the sweep starts
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """``checkpoint(name)`` -> directory holding a tiny model and its processor, saved once per session."""
    saved = {}

    def get(name: str) -> str:
        if name not in saved:
            model, processor = testing.build(name)
            directory = tmp_path_factory.mktemp(name)
            model.save_pretrained(directory)
            processor.save_pretrained(directory)
            saved[name] = str(directory)
        return saved[name]

    return get
