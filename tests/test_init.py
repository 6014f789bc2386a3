"""The package namespace: ``vtr.assets`` is reachable after a plain ``import vtr`` and loaded only on use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import vtr

ROOT = Path(__file__).resolve().parents[1]


def test_assets_are_reachable_after_import_vtr_and_imported_only_on_first_use():
    code = ("import sys, vtr\n"
            "assert 'vtr.assets' not in sys.modules, 'import vtr loaded vtr.assets'\n"
            "print(vtr.assets.tiny_llava_synth().name)\n"
            "assert 'vtr.assets' in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "tiny_llava_synth"


def test_an_unknown_attribute_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_thing'"):
        vtr.not_a_thing  # noqa: B018 - the attribute access is the test
