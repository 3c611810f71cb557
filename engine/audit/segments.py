"""The audit directory on disk: one folder per writer, numbered segment files, file locks.

    <directory>/<writer>/00000001.jsonl    a start line, then records
    <directory>/<writer>/00000002.jsonl    started a day later; its start line links to the
                                           last record of 00000001
    <directory>/<writer>/.writer.lock      held by the process appending as <writer>

Why one chain per writer: a chain needs the previous record's hash at every append. With one
file shared by several `engine serve` replicas, each append would have to lock the file and
re-read its tail; with a chain per writer the writer keeps the tail in memory, appends never
wait for another replica, and a crash can only cut its own last line. Why segments: purging
old records then deletes whole files and rewrites at most one day of one writer, instead of
copying the whole log every hour.

Rewrites (purge, forget) and appends to the same segment are serialized by `flock` on the
segment itself; a rewrite replaces the file atomically, and the writer notices the new inode
and reopens it (`Segment.lock`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.audit.records import AuditError

__all__ = [
    "WRITER_NAME",
    "locked",
    "parse",
    "read_lines",
    "replace",
    "same_file",
    "segment_number",
    "segment_path",
    "segments",
    "sync_dir",
    "tail",
    "writer_dirs",
]

WRITER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SEGMENT = re.compile(r"(\d{8})\.jsonl")


def writer_dirs(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise AuditError(f"{directory}: no audit log there (not a directory)")
    return sorted(p for p in directory.iterdir() if p.is_dir() and WRITER_NAME.fullmatch(p.name))


def segments(writer_dir: Path) -> list[Path]:
    """The writer's segment files, oldest first."""
    return sorted(p for p in writer_dir.iterdir() if _SEGMENT.fullmatch(p.name))


def segment_path(writer_dir: Path, number: int) -> Path:
    return writer_dir / f"{number:08d}.jsonl"


def segment_number(path: Path) -> int:
    match = _SEGMENT.fullmatch(path.name)
    return int(match.group(1)) if match else 0


@contextlib.contextmanager
def locked(path: Path, *, exclusive: bool = True) -> Iterator[int | None]:
    """An fd of `path` under flock, or None if the file is gone. Retries when the file was
    replaced while waiting for the lock, so the fd always is the file the path names."""
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            if same_file(path, fd):
                yield fd
                return
        finally:
            os.close(fd)  # closing releases the lock


def same_file(path: Path, fd: int) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def read_lines(fd: int) -> list[bytes]:
    """Every line with its newline; a last line without one is a torn write."""
    with os.fdopen(os.dup(fd), "rb") as file:
        file.seek(0)
        return file.readlines()


def parse(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def tail(fd: int) -> tuple[bytes | None, bytes]:
    """The last complete line and any torn bytes after it, reading only the file's end."""
    size = os.fstat(fd).st_size
    chunk = 1 << 16
    while True:
        begin = max(0, size - chunk)
        data = os.pread(fd, size - begin, begin)
        end = data.rfind(b"\n")
        start = data.rfind(b"\n", 0, end) if end > 0 else -1
        if start == -1 and begin > 0:
            chunk *= 4
            continue
        if end == -1:
            return None, data
        return data[start + 1:end + 1], data[end + 1:]


def replace(path: Path, lines: list[bytes]) -> None:
    """Write `lines` to `path` atomically (new file, fsync, rename): a reader or a crash sees
    the old file or the new one, never a mix. The caller holds the lock on `path`."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        data = memoryview(b"".join(lines))
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    sync_dir(path.parent)


def sync_dir(directory: Path) -> None:
    """Make a rename or unlink durable: it lives in the directory's entry table."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
