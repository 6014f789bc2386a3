"""A sweep directory's durable state: ``sweep.json`` (its setup) and ``results.jsonl`` (finished configs),
and ``sweep.lock``, which keeps a second live sweep out of it.

Every write replaces the whole file through a temporary file and ``os.replace``, so an interrupted
sweep leaves either the old or the new file, never a torn line. A config counts as done exactly when
its line is in ``results.jsonl``: deleting a line makes the next run redo that config only.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from vtr.eval.plan import Config, SweepError, SweepSetup

SETUP_FILE = "sweep.json"
RESULTS_FILE = "results.jsonl"
LOCK_FILE = "sweep.lock"


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step (same-directory temp file, fsync, rename)."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


class SweepLock:
    """``DIR/sweep.lock`` holding the owner's pid, for as long as the ``with`` block runs.

    A second sweep on the same directory would rewrite run folders the first is still writing; it is
    refused while the owner lives. A lock whose owner is gone (killed with SIGKILL, machine reset) is
    taken over. The lock file appears with its pid in it (a hard link of a finished temporary file),
    so a reader never sees it empty.
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE

    def __enter__(self) -> "SweepLock":
        fd, temporary = tempfile.mkstemp(prefix=f".{LOCK_FILE}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(f"{os.getpid()}\n")
            while True:
                try:
                    os.link(temporary, self.path)
                    return self
                except FileExistsError:
                    owner = self.owner()
                    if owner is not None and owner != os.getpid() and _alive(owner):
                        raise SweepError(
                            f"another vtr sweep (pid {owner}) is running on {self.path.parent}; wait for it to "
                            f"finish or stop it (kill {owner}), or use another --out"
                        ) from None
                    self.path.unlink(missing_ok=True)  # its sweep is gone
        finally:
            os.unlink(temporary)

    def __exit__(self, *exc_info) -> None:
        if self.owner() == os.getpid():
            self.path.unlink()

    def owner(self) -> int | None:
        try:
            return int(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class ResultStore:
    """``DIR/results.jsonl`` plus the setup check that keeps one sweep's results together."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / RESULTS_FILE

    def claim(self, setup: SweepSetup) -> None:
        """Record ``setup`` in a new directory, or check that it is the one this directory was swept with.

        Adding methods or budgets to a sweep is fine; changing what every run shares (model, checkpoint,
        tasks, limit, model args) would mix incomparable numbers in one table.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / SETUP_FILE
        wanted = setup.as_dict()
        if not path.exists():
            write_atomic(path, json.dumps(wanted, indent=2) + "\n")
            return
        recorded = json.loads(path.read_text(encoding="utf-8"))
        changed = [f"{key}: {recorded.get(key)!r} there, {value!r} now" for key, value in wanted.items()
                   if recorded.get(key) != value]
        if changed:
            raise SweepError(
                f"{self.directory} holds a sweep with another setup ({'; '.join(changed)}). Use a new --out "
                f"directory, or delete {path} and {self.path} to start this one over"
            )

    def rows(self) -> list[dict[str, Any]]:
        """The finished configs, in the order they finished."""
        if not self.path.exists():
            return []
        rows = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise SweepError(
                    f"{self.path} line {number} is not JSON ({error.msg}); fix or delete that line (its config "
                    f"then runs again)"
                ) from None
        return rows

    def done(self) -> set[tuple[str, str | None]]:
        return {Config(row["method"], row["budget"]).key for row in self.rows()}

    def append(self, row: dict[str, Any]) -> None:
        existing = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        if existing and not existing.endswith("\n"):
            existing += "\n"
        write_atomic(self.path, existing + json.dumps(row) + "\n")
