"""Every README/docs snippet marked ``<!-- offline -->`` runs as written (the convention: docs/index.md).

A python block runs in a fresh interpreter, a bash block in ``bash -euo pipefail`` with this
interpreter's ``bin/`` (the installed ``vtr`` command) first on PATH; both in an empty directory, offline,
with this checkout first on PYTHONPATH. A block marked ``<!-- output -->`` right after an offline block
is what that block prints: it must equal the real stdout.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OFFLINE = "<!-- offline -->"
OUTPUT = "<!-- output -->"
LANGUAGES = {"python", "bash"}
# a fence opening at the start of a line, its info string, its body, the closing fence
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int
    language: str
    code: str
    expected_stdout: str | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def _marker_before(text: str, start: int) -> str | None:
    """The HTML comment on the last non-blank line before ``start``, if any."""
    lines = [line.strip() for line in text[:start].splitlines() if line.strip()]
    return lines[-1] if lines and lines[-1] in (OFFLINE, OUTPUT) else None


def snippets(path: Path) -> list[Snippet]:
    """The offline snippets of one Markdown file, each with the output block that follows it, if any.

    A marker before anything but a python/bash fence (or an output block with no offline block before it)
    is an error, so a typo cannot silently leave a snippet untested."""
    text = path.read_text()
    fences = list(FENCE.finditer(text))
    found: list[Snippet] = []
    for i, fence in enumerate(fences):
        marker = _marker_before(text, fence.start())
        line = text.count("\n", 0, fence.start()) + 1
        if marker == OUTPUT:
            previous = fences[i - 1] if i else None
            if previous is None or _marker_before(text, previous.start()) != OFFLINE:
                raise AssertionError(f"{path}:{line}: {OUTPUT} must follow an offline snippet")
            continue
        if marker != OFFLINE:
            continue
        language = fence.group(1).strip()
        if language not in LANGUAGES:
            raise AssertionError(f"{path}:{line}: {OFFLINE} before a {language!r} fence; use python or bash")
        following = fences[i + 1] if i + 1 < len(fences) else None
        expected = (following.group(2) if following is not None
                    and _marker_before(text, following.start()) == OUTPUT else None)
        found.append(Snippet(path, line, language, fence.group(2), expected))
    return found


ALL = [s for path in DOCS for s in snippets(path)]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
               TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def test_the_readme_and_the_docs_have_offline_snippets():
    names = {s.path.name for s in ALL}
    assert "README.md" in names, "the README's quick start must be marked offline"
    assert any(s.language == "bash" for s in ALL) and any(s.expected_stdout is not None for s in ALL)


@pytest.mark.parametrize("snippet", ALL, ids=lambda s: s.name)
def test_offline_snippet_runs_as_written(snippet: Snippet, tmp_path: Path):
    command = ([sys.executable, "-c", snippet.code] if snippet.language == "python"
               else ["bash", "-euo", "pipefail", "-c", snippet.code])
    result = subprocess.run(command, cwd=tmp_path, env=_environment(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, (f"{snippet.name} failed (exit {result.returncode}):\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    if snippet.expected_stdout is not None:
        assert result.stdout.rstrip("\n") == snippet.expected_stdout.rstrip("\n"), (
            f"{snippet.name} prints something else than the docs show:\n{result.stdout}")


def test_a_marker_before_a_non_code_fence_is_an_error(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(f"{OFFLINE}\n```text\nvtr methods\n```\n")
    with pytest.raises(AssertionError, match="use python or bash"):
        snippets(page)


def test_an_output_block_is_tied_to_the_offline_snippet_before_it(tmp_path: Path):
    page = tmp_path / "page.md"
    page.write_text(f"{OFFLINE}\n```python\nprint(1)\n```\n\nprints\n\n{OUTPUT}\n```\n1\n```\n\n```python\nx\n```\n")
    (snippet,) = snippets(page)
    assert (snippet.code, snippet.expected_stdout, snippet.line) == ("print(1)\n", "1\n", 2)
    page.write_text(f"```python\nprint(1)\n```\n\n{OUTPUT}\n```\n1\n```\n")
    with pytest.raises(AssertionError, match="must follow an offline snippet"):
        snippets(page)
