"""`engine audit verify`: walk every writer's chain and name the first line that breaks it.

What a chain catches: an edited field (the hash no longer matches), a deleted or reordered
record (the `seq` or the `prev` link is off), a removed start line or segment, records removed
from the front although younger than the retention, a user or content erased by anything but
`forget`, content that was swapped or edited. With ENGINE_AUDIT_KEY the chain is an HMAC, so
a forger cannot recompute it; without a key only accidents and naive edits are caught.

What no chain can catch on its own: cutting whole records off the *end*. The report lists each
writer's head (last seq and hash) so they can be compared with a copy kept elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.audit.keys import Keys
from engine.audit.records import (
    AuditError,
    chain_hash,
    erased_mark,
    text_sha256,
    user_commit,
)
from engine.audit.segments import locked, parse, read_lines, segments, writer_dirs

__all__ = ["Head", "Problem", "VerifyReport", "check_key", "verify"]


@dataclass(frozen=True, slots=True)
class Problem:
    location: str  # file:line
    reason: str

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Head:
    """A writer's last record: keep a copy elsewhere to detect records cut off the end."""

    writer: str
    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    records: int
    files: int
    erased: int
    heads: tuple[Head, ...]
    problems: tuple[Problem, ...]  # at most one per writer: its first broken line

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def broken(self) -> str | None:
        """`file:line` of the first broken record, None when all verify."""
        return self.problems[0].location if self.problems else None

    @property
    def why(self) -> str | None:
        return self.problems[0].reason if self.problems else None


def check_key(start: dict[str, Any], keys: Keys, where: Path) -> None:
    """A file sealed with another key (or with none) cannot be checked or rewritten with
    these keys: say which key it needs instead of reporting every line as broken."""
    if start.get("key_id") is not None and keys.id is None:
        raise AuditError(f"{where}: sealed with audit key id {start['key_id']}; set "
                         "ENGINE_AUDIT_KEY to that key")
    if start.get("key_id") not in (None, keys.id):
        raise AuditError(f"{where}: sealed with audit key id {start['key_id']}, but "
                         f"ENGINE_AUDIT_KEY has id {keys.id}; use the key the log was written "
                         "with")


def verify(directory: Path, keys: Keys, *, cutoff: float) -> VerifyReport:
    """Check every writer's chain; records older than `cutoff` (epoch seconds) may have been
    purged, younger ones must all be there."""
    records = files = erased = 0
    heads: list[Head] = []
    problems: list[Problem] = []
    for writer_dir in writer_dirs(directory):
        walk = _Walk(keys, cutoff)
        for path in segments(writer_dir):
            with locked(path, exclusive=False) as fd:
                lines = read_lines(fd) if fd is not None else None
            if lines is None:
                continue  # purged while we were listing
            files += 1
            problem = walk.segment(path, lines)
            if problem is not None:
                problems.append(problem)
                break
        else:
            if walk.prev is not None:
                heads.append(Head(writer_dir.name, walk.seq - 1, walk.prev))
        records, erased = records + walk.records, erased + walk.erased
    return VerifyReport(records, files, erased, tuple(heads), tuple(problems))


class _Walk:
    """One writer's chain, followed across its segments until the first broken line."""

    def __init__(self, keys: Keys, cutoff: float) -> None:
        self.keys, self.cutoff = keys, cutoff
        self.prev: str | None = None
        self.seq = 0
        self.records = self.erased = 0

    def segment(self, path: Path, lines: list[bytes]) -> Problem | None:
        if not lines:
            return Problem(f"{path}:1", "empty file: its start line is missing")
        for number, raw in enumerate(lines, 1):
            reason = self.line(path, number, raw)
            if reason is not None:
                return Problem(f"{path}:{number}", reason)
        return None

    def line(self, path: Path, number: int, raw: bytes) -> str | None:
        if not raw.endswith(b"\n"):
            return (f"torn last line: an incomplete write (the writer crashed while appending, "
                    f"or the file was cut); the {number - 1} lines before it verify, and "
                    "reopening the log with this writer seals the file")
        record = parse(raw)
        if record is None:
            return "not a JSON record: the line was edited or the file damaged"
        if number == 1:
            return self.start(path, record)
        return self.record(record)

    def start(self, path: Path, record: dict[str, Any]) -> str | None:
        if record.get("kind") != "start":
            return "the file does not begin with a start line: lines were removed from its front"
        check_key(record, self.keys, path)
        if record.get("hash") != chain_hash(self.keys, record):
            return "the start line's hash does not match its fields: it was edited"
        if not isinstance(record.get("seq"), int) or not isinstance(record.get("prev"),
                                                                     str | None):
            return "the start line lacks its `seq` or `prev`: it was edited"
        if self.prev is None:
            if record["prev"] is not None and not _older(record.get("prev_time"), self.cutoff):
                return (f"records before this file were removed although younger than the "
                        f"retention (the last one is from {_when(record.get('prev_time'))})")
        elif record["prev"] != self.prev or record.get("seq") != self.seq:
            return (f"records are missing before this file: it continues from record "
                    f"{record.get('seq')}, but the previous file ends before record {self.seq}")
        self.prev = record["prev"] or record["hash"]
        self.seq = record["seq"]
        return None

    def record(self, record: dict[str, Any]) -> str | None:
        record_hash = chain_hash(self.keys, record)
        if record.get("hash") != record_hash:
            return "its hash does not match its fields: the record was edited"
        if record.get("seq") != self.seq:
            return (f"record {record.get('seq')} where record {self.seq} was expected: records "
                    "were deleted or reordered")
        if record.get("prev") != self.prev:
            return "it does not link to the line before it: records were deleted or reordered"
        reason = self.user(record, record_hash) or self.content(record, record_hash)
        if reason is None:
            self.prev, self.seq, self.records = record_hash, self.seq + 1, self.records + 1
        return reason

    def user(self, record: dict[str, Any], record_hash: str) -> str | None:
        commit, user, salt = record.get("user_commit"), record.get("user"), record.get("salt")
        if user is not None:
            try:
                matches = isinstance(salt, str) and user_commit(salt, str(user)) == commit
            except ValueError:
                matches = False
            return None if matches else "its user does not match the chained commitment: edited"
        if commit is None:
            return None
        if record.get("erased") != erased_mark(self.keys, record_hash):
            return "its user was removed, but not by `engine audit forget` (no valid erasure mark)"
        self.erased += 1
        return None

    def content(self, record: dict[str, Any], record_hash: str) -> str | None:
        token = record.get("content")
        if token is None or self.keys.id is None:
            return None
        try:
            plain = json.loads(self.keys.open(str(token), record_hash))
        except AuditError:
            return "its content does not decrypt: edited, or moved from another record"
        hashes = (text_sha256(str(plain.get("input"))), text_sha256(str(plain.get("output"))))
        if hashes != (record.get("input_sha256"), record.get("output_sha256")):
            return "its content does not match the chained input and output hashes"
        return None


def _older(when: Any, cutoff: float) -> bool:
    return isinstance(when, int | float) and when < cutoff


def _when(when: Any) -> str:
    if not isinstance(when, int | float):
        return "an unknown time"
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
