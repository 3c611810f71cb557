"""`AuditLog`: the writer `engine serve` appends one record per request to, and the handle
for purge, forget and verify.

An append builds the record (hashes, pseudonym, sealed content), then writes it as one line
with one `write` on an O_APPEND descriptor: the kernel has it once `append` returns, so a crash
of the process loses nothing, and a line is never interleaved with another. Durability against
a crash of the machine is bounded by `sync_seconds` (default 1): the first append after that
interval calls `fdatasync`, so per-request cost stays in microseconds while at most about a
second of records (or the kernel's own writeback delay, ~30 s, when traffic stops) can be lost
with the power. `sync_seconds=0` syncs every append, for a few milliseconds each on disks.

The writer opens lazily (on the first append, or `open()` to fail fast at startup): it claims
`<directory>/<writer>/.writer.lock`, purges, and continues its chain from the last segment,
sealing a line a crash cut (replaced by a `repair` record naming its length and hash).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from engine.audit.keys import ENV, Keys, key_from_env
from engine.audit.maintain import forget, purge
from engine.audit.records import (
    AuditEntry,
    AuditError,
    dumps,
    entry_record,
    link_record,
    start_record,
)
from engine.audit.segments import (
    WRITER_NAME,
    locked,
    parse,
    read_lines,
    replace,
    same_file,
    segment_number,
    segment_path,
    segments,
    tail,
    writer_dirs,
)
from engine.audit.verify import VerifyReport, check_key, verify

__all__ = ["PURGE_EVERY", "SEGMENT_SECONDS", "AuditLog"]

SEGMENT_SECONDS = 86_400.0
"""A writer starts a new segment file after a day, so purging deletes whole files."""
PURGE_EVERY = 3_600.0
"""Appends purge expired records at most this often (seconds of the log's clock)."""
DAY = 86_400.0

_log = logging.getLogger(__name__)


class AuditLog:
    """An audit directory, and this process's writer in it (named `writer`, unique per
    process: one chain per writer, see `engine.audit.segments`)."""

    def __init__(self, directory: Path, *, writer: str = "main", retention_days: float = 30,
                 content: bool = False, key: bytes | None = None,
                 clock: Callable[[], float] = time.time, sync_seconds: float = 1.0) -> None:
        if not WRITER_NAME.fullmatch(writer):
            raise AuditError(f"audit writer name {writer!r}: use up to 64 letters, digits, '.', "
                             "'_' or '-' (e.g. the replica's name)")
        if not retention_days > 0:
            raise AuditError(f"retention_days must be above 0, not {retention_days}")
        if content and key is None:
            raise AuditError(f"storing request content needs a key in {ENV} to encrypt it; "
                             "make one with `engine audit keygen`")
        self.directory, self.writer = Path(directory), writer
        self.retention_days, self.content = retention_days, content
        self._keys = Keys(key)
        self._clock, self._sync_seconds = clock, sync_seconds
        self._lock = threading.Lock()
        self._claim: int | None = None
        self._fd: int | None = None
        self._path = self.directory / writer
        self._stale = False  # the segment must be re-read before the next append
        self._seq, self._prev, self._last_time, self._started = 1, "", 0.0, 0.0
        self._next_purge = 0.0
        self._synced = time.monotonic()

    @classmethod
    def from_env(cls, directory: Path, *, writer: str = "main", retention_days: float = 30,
                 content: bool = False, clock: Callable[[], float] = time.time,
                 sync_seconds: float = 1.0,
                 environ: Mapping[str, str] = os.environ) -> AuditLog:
        """The log with its key from ENGINE_AUDIT_KEY (optional unless `content`)."""
        return cls(directory, writer=writer, retention_days=retention_days, content=content,
                   key=key_from_env(environ), clock=clock, sync_seconds=sync_seconds)

    def open(self) -> None:
        """Claim the writer and purge now rather than on the first append."""
        with self._lock:
            if self._fd is None:
                self._open()

    def append(self, entry: AuditEntry) -> str:
        """Record one request; returns the record's hash (a reference to it). Thread-safe."""
        with self._lock:
            if self._fd is None:
                self._open()
            now = self._clock()
            if now >= self._next_purge:
                self._auto_purge(now)
            if now - self._started >= SEGMENT_SECONDS:
                self._rotate(now)
            fd = self._locked_segment()
            try:
                record = entry_record(self._keys, entry, seq=self._seq, prev=self._prev,
                                      time=now if entry.time is None else entry.time,
                                      content=self.content)
                self._write(fd, record)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            return str(record["hash"])

    def purge(self) -> int:
        """Drop the records older than the retention, in every writer's files."""
        return purge(self.directory, self._keys, cutoff=self._cutoff(self._clock()))

    def verify(self) -> VerifyReport:
        return verify(self.directory, self._keys, cutoff=self._cutoff(self._clock()))

    def forget(self, user: str) -> int:
        """Erase `user`'s pseudonym and stored content in every writer's files."""
        return forget(self.directory, self._keys, user)

    def records(self, user: str | None = None) -> Iterator[dict[str, Any]]:
        """The stored request records (all, or `user`'s), content decrypted when stored."""
        pseudonym = self._keys.pseudonym(user) if user is not None else None
        for writer_dir in writer_dirs(self.directory):
            for path in segments(writer_dir):
                with locked(path, exclusive=False) as fd:
                    lines = read_lines(fd) if fd is not None else []
                for raw in lines:
                    record = parse(raw)
                    if record and record.get("kind") == "entry" and (
                            pseudonym is None or record.get("user") == pseudonym):
                        yield self._decrypted(record)

    def close(self) -> None:
        with self._lock:
            for fd in (self._fd, self._claim):
                if fd is not None:
                    os.close(fd)
            self._fd = self._claim = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def _cutoff(self, now: float) -> float:
        return now - self.retention_days * DAY

    def _decrypted(self, record: dict[str, Any]) -> dict[str, Any]:
        if record.get("content") is not None:
            plain = self._keys.open(str(record["content"]), str(record["hash"]))
            record["content"] = json.loads(plain)
        return record

    def _open(self) -> None:
        writer_dir = self.directory / self.writer
        writer_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._claim = _claim(writer_dir)
        self._auto_purge(self._clock())
        existing = segments(writer_dir)
        if existing:
            self._path, self._stale = existing[-1], True
            self._fd = os.open(self._path, os.O_RDWR | os.O_APPEND)
            fcntl.flock(self._locked_segment(), fcntl.LOCK_UN)  # loads the chain's tail
        else:
            self._create(segment_path(writer_dir, 1), None, self._clock())

    def _auto_purge(self, now: float) -> None:
        """Retention is an obligation, not a request path: a purge that fails is logged and
        retried an hour later, never raised into the request being recorded."""
        self._next_purge = now + PURGE_EVERY
        try:
            dropped = purge(self.directory, self._keys, cutoff=self._cutoff(now))
        except (AuditError, OSError) as exc:
            _log.warning("audit log purge skipped: %s", exc)
            return
        if dropped:
            _log.info("audit log: purged %d record(s) older than %g days", dropped,
                      self.retention_days)

    def _rotate(self, now: float) -> int:
        number = segment_number(self._path) + 1
        return self._create(segment_path(self._path.parent, number), self._prev, now)

    def _create(self, path: Path, prev: str | None, now: float) -> int:
        """Start a segment: its start line links to the last record before it (or begins a
        new chain); it appears complete or not at all (written aside, then renamed)."""
        start = start_record(self._keys, writer=self.writer, seq=self._seq, prev=prev,
                             prev_time=self._last_time if prev else None, time=now)
        replace(path, [dumps(start) + b"\n"])
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._path = os.open(path, os.O_RDWR | os.O_APPEND), path
        self._prev, self._started, self._stale = prev or start["hash"], now, False
        return self._fd

    def _locked_segment(self) -> int:
        """The current segment under its lock, reopened if purge or forget replaced it."""
        while True:
            fd = self._current_fd()
            fcntl.flock(fd, fcntl.LOCK_EX)
            if same_file(self._path, fd):
                if self._stale:
                    self._load(fd)
                return fd
            os.close(fd)  # releases the lock
            self._fd, self._stale = None, True

    def _current_fd(self) -> int:
        if self._fd is not None:
            return self._fd
        try:
            self._fd = fd = os.open(self._path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:  # deleted by hand: continue the chain in a new file
            fd = self._rotate(self._clock())
        return fd

    def _load(self, fd: int) -> None:
        """Continue the chain from the segment's last line; seal a line a crash cut."""
        start = parse(os.pread(fd, 1 << 16, 0).split(b"\n", 1)[0])
        last, torn = tail(fd)
        record = parse(last) if last else None
        if start is None or start.get("kind") != "start" or record is None:
            raise AuditError(f"{self._path}: damaged; run `engine audit verify "
                             f"{self.directory}`, then move the file aside to start a new one")
        check_key(start, self._keys, self._path)
        self._started = float(start["time"])
        if record.get("kind") == "start":
            self._seq, self._prev = record["seq"], record["prev"] or record["hash"]
            self._last_time = record["prev_time"] or 0.0
        else:
            self._seq, self._prev, self._last_time = record["seq"] + 1, record["hash"], \
                record["time"]
        self._stale = False
        if torn:
            self._seal(fd, torn)

    def _seal(self, fd: int, torn: bytes) -> None:
        _log.warning("audit log %s: sealing a torn last line (%d bytes) left by a crash",
                     self._path, len(torn))
        os.ftruncate(fd, os.fstat(fd).st_size - len(torn))
        fields = {"kind": "repair", "time": self._clock(), "torn_bytes": len(torn),
                  "torn_sha256": hashlib.sha256(torn).hexdigest()}
        self._write(fd, link_record(self._keys, fields, seq=self._seq, prev=self._prev))

    def _write(self, fd: int, record: dict[str, Any]) -> None:
        line = dumps(record) + b"\n"
        try:
            written = os.write(fd, line)
        except OSError as exc:
            self._stale = True
            raise AuditError(f"{self._path}: cannot append ({exc.strerror})") from exc
        if written != len(line):
            self._stale = True
            raise AuditError(f"{self._path}: only {written} of {len(line)} bytes written "
                             "(disk full?)")
        self._seq, self._prev, self._last_time = record["seq"] + 1, record["hash"], \
            record["time"]
        if time.monotonic() - self._synced >= self._sync_seconds:
            os.fdatasync(fd)
            self._synced = time.monotonic()


def _claim(writer_dir: Path) -> int:
    """Hold the writer's lock for the life of the log: two processes appending to one chain
    would fork it, so the second one is refused with a fix."""
    fd = os.open(writer_dir / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AuditError(f"{writer_dir}: audit writer {writer_dir.name!r} is in use by another "
                         "process; give each `engine serve` replica its own writer name") from None
    return fd
