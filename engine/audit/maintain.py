"""Retention and erasure: the two operations that rewrite audit files, keeping chains valid.

Both work under the segment's lock and replace the file atomically, so a writer appending at
the same moment waits a few milliseconds and then continues in the new file (see
`segments.py`). Neither changes a remaining record's chained fields, so every writer's last
hash stays what it was and appends continue the chain.

- `purge` drops the records older than the cutoff, oldest first: whole segments are deleted
  (the next segment's start line already names the last record before it); in the segment
  where old records end, a new start line takes their place, naming the last dropped record
  (its hash, number and time) so `verify` starts from there.
- `forget` erases one user's pseudonym, salt and content from every record and adds the
  erasure mark; hashes of input and output stay, as the chain covers them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.audit.keys import Keys
from engine.audit.records import AuditError, dumps, erased_mark, start_record
from engine.audit.segments import (
    locked,
    parse,
    read_lines,
    replace,
    segments,
    sync_dir,
    writer_dirs,
)
from engine.audit.verify import check_key

__all__ = ["forget", "purge"]


def purge(directory: Path, keys: Keys, *, cutoff: float) -> int:
    """Drop every writer's records older than `cutoff` (epoch seconds); the number dropped.
    A record stays while one written before it is still young, so chains stay whole."""
    return sum(_purge_writer(writer_dir, keys, cutoff) for writer_dir in writer_dirs(directory))


def forget(directory: Path, keys: Keys, user: str) -> int:
    """Erase `user`'s pseudonym and content everywhere; the number of records erased."""
    pseudonym = keys.pseudonym(user)
    erased = 0
    for writer_dir in writer_dirs(directory):
        for path in segments(writer_dir):
            with locked(path) as fd:
                if fd is None:
                    continue
                lines = read_lines(fd)
                count = _erase(_Segment.read(path, lines, keys), pseudonym, keys)
                if count:
                    replace(path, lines)
                    erased += count
    return erased


@dataclass(slots=True)
class _Segment:
    """A segment's lines split into its start line, its records, and torn bytes (kept as
    they are: `verify` reports them, and only the writer may seal them)."""

    path: Path
    lines: list[bytes]
    start: dict[str, Any]
    records: list[dict[str, Any]]
    torn: bytes

    @classmethod
    def read(cls, path: Path, lines: list[bytes], keys: Keys) -> _Segment:
        torn = lines.pop() if lines and not lines[-1].endswith(b"\n") else b""
        parsed = [parse(raw) for raw in lines]
        if not parsed:
            raise AuditError(f"{path}: empty file; run `engine audit verify`")
        for number, record in enumerate(parsed, 1):
            if record is None or (number == 1) != (record.get("kind") == "start"):
                raise AuditError(f"{path}:{number}: damaged line; run `engine audit verify` "
                                 "and move the damaged file aside before purging or forgetting")
        start, *records = [record for record in parsed if record is not None]
        check_key(start, keys, path)
        return cls(path, lines, start, records, torn)


def _erase(segment: _Segment, pseudonym: str, keys: Keys) -> int:
    count = 0
    for index, record in enumerate(segment.records, 1):
        if record.get("user") != pseudonym:
            continue
        record.update(user=None, salt=None, erased=erased_mark(keys, str(record.get("hash"))))
        record.pop("content", None)
        segment.lines[index] = dumps(record) + b"\n"
        count += 1
    if count:
        segment.lines.append(segment.torn)
    return count


def _purge_writer(writer_dir: Path, keys: Keys, cutoff: float) -> int:
    dropped = 0
    paths = segments(writer_dir)
    for index, path in enumerate(paths):
        with locked(path) as fd:
            if fd is None:
                continue
            segment = _Segment.read(path, read_lines(fd), keys)
            old = _old_prefix(segment.records, cutoff)
            if old == len(segment.records) and index < len(paths) - 1:
                os.unlink(path)
                sync_dir(writer_dir)
                dropped += old
                continue
            if old:
                replace(path, _drop_front(segment, old, keys))
            return dropped + old
    return dropped


def _old_prefix(records: list[dict[str, Any]], cutoff: float) -> int:
    for count, record in enumerate(records):
        when = record.get("time")
        if not isinstance(when, int | float) or when >= cutoff:
            return count
    return len(records)


def _drop_front(segment: _Segment, old: int, keys: Keys) -> list[bytes]:
    """The segment without its first `old` records, a new start line naming the last one."""
    last = segment.records[old - 1]
    start = start_record(keys, writer=str(segment.start.get("writer")), seq=last["seq"] + 1,
                         prev=last["hash"], prev_time=last["time"],
                         time=segment.start["time"])
    return [dumps(start) + b"\n", *segment.lines[old + 1:], segment.torn]
