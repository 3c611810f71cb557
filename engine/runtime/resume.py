"""Resumable batches: an output file says which records are done, and an interrupted run —
Ctrl-C, a crash, `kill -9` — picks up where it stopped, redoing nothing and losing nothing.

Every output line names the input line it answers (`index`, and the record's `id`). Lines
are written whole, one `write` system call each on an append-only descriptor, so a killed
process leaves at worst one torn last line, never a torn line in the middle. `--resume`
reads the earlier output: complete lines are kept (the first line of an index, should
there be two), a torn or unreadable line is dropped, and with `--retry-errors` so are the
records that errored; the file is rewritten with what is kept (atomically: a temporary file,
then a rename) and the run appends the missing records. An input whose records no longer
match the ids already written is refused rather than merged.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.runtime.batch import InputRecord

__all__ = ["Done", "InputChanged", "LineWriter", "done_in", "remaining"]


class InputChanged(Exception):
    """The input's record at an index is not the one the earlier output answered."""


@dataclass(slots=True)
class Done:
    """What an earlier output already answers."""

    ids: dict[int, Any] = field(default_factory=dict)
    """Input index → the record id written for it."""
    dropped: int = 0
    """Lines dropped to be redone: torn, unreadable, or errored under `--retry-errors`."""
    errors: int = 0
    """Kept lines of records that errored: the resumed run still reports them."""


def done_in(path: Path, *, retry_errors: bool) -> Done:
    """Read `path` (an earlier run's output) and rewrite it keeping only the lines that
    stand; a missing file is an empty one."""
    done, kept = Done(), []
    with contextlib.suppress(FileNotFoundError), path.open("rb") as handle:
        for raw in handle:
            row = _row(raw)
            if row is None or row["index"] in done.ids or (
                    retry_errors and row.get("status") == "error"):
                done.dropped += 1
                continue
            done.ids[row["index"]] = row.get("id")
            done.errors += row.get("status") == "error"
            kept.append(raw)
    if path.exists():
        _replace(path, kept)
    return done


def remaining(items: Iterable[InputRecord], done: Done) -> Iterator[InputRecord]:
    """The records not answered yet; raises InputChanged when an answered index now holds
    a record with another id."""
    for item in items:
        if item.index not in done.ids:
            yield item
        elif item.id is not None and done.ids[item.index] not in (None, item.id):
            raise InputChanged(f"input line {item.index + 1} has id {item.id!r}, but the "
                               f"output answered id {done.ids[item.index]!r} there")


class LineWriter:
    """Appends whole lines, each with one `write` call on an unbuffered descriptor: a killed
    process never leaves half a line in the middle of the file."""

    def __init__(self, path: Path, *, append: bool) -> None:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        self.fd = os.open(path, flags, 0o644)

    def write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8"))
        while data:  # a regular file takes it all at once; a full disk may not
            data = data[os.write(self.fd, data):]

    def flush(self) -> None:
        """Nothing buffered: every line is with the kernel when `write` returns."""

    def close(self) -> None:
        os.close(self.fd)


def _row(raw: bytes) -> dict[str, Any] | None:
    """A complete, readable output line, else None (a torn last line, say)."""
    if not raw.endswith(b"\n"):
        return None
    try:
        row = json.loads(raw)
    except ValueError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("index"), int) else None


def _replace(path: Path, lines: list[bytes]) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.writelines(lines)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
