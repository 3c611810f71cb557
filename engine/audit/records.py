"""What one line of an audit file holds, and which of its fields the hash chain covers.

A file is a *start line* followed by *records*, one canonical JSON object per line::

    {"kind": "start", "writer": "r1", "seq": 1, "prev": null, "prev_time": null, ...}
    {"kind": "entry", "seq": 1, "prev": "<hash of the line before>", "time": ..., "tenant": ...,
     "pipeline": ..., "version": ..., "tiers": [...], "tokens": {...}, "cost_usd": ...,
     "guard_findings": [...], "outcome": "ok", "request_id": ..., "input_sha256": ...,
     "output_sha256": ..., "user_commit": "<sha256(salt + pseudonym)>",
     "user": "<pseudonym>", "salt": "...", "content": "<AES-GCM token>", "hash": "..."}

Why the chain covers everything *except* `user`, `salt` and `content`: those are the fields
`engine audit forget` must be able to erase, and erasing them must not break the chain. They
stay tamper-evident anyway: `user_commit` (chained) binds the pseudonym, and the content is
encrypted with the record's hash as associated data and must match the chained content
hashes. An erased record carries an `erased` mark only the key holder can compute.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.errors import EngineError

if TYPE_CHECKING:
    from engine.audit.keys import Keys

__all__ = [
    "AuditEntry",
    "AuditError",
    "chain_hash",
    "dumps",
    "entry_record",
    "erased_mark",
    "link_record",
    "start_record",
    "text_sha256",
    "user_commit",
]

FORMAT = 1
"""The start line's `format`: bumped when a line's meaning changes."""
ERASABLE = frozenset({"user", "salt", "content"})
UNCHAINED = ERASABLE | {"hash", "erased"}


class AuditError(EngineError):
    """The audit log cannot do what was asked: a missing or wrong key, a writer name already in
    use, a damaged file. The message says what to do; it never contains a key or content."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One served request as the audit log records it.

    `input_text` and `output_text` must already be pseudonymized (the guard's PII pass): the log
    hashes them always and stores them, encrypted, only when content logging is on.
    """

    user: str | None
    pipeline: str
    version: str
    outcome: str
    time: float | None = None  # None: the log's clock at append
    tenant: str | None = None
    tiers: list[str] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0
    guard_findings: list[str] = field(default_factory=list)
    request_id: str = ""
    input_text: str = ""
    output_text: str = ""


def dumps(record: dict[str, Any]) -> bytes:
    """The one serialization used both to store a line and to hash it: sorted keys, no spaces,
    ASCII only, so the same record always gives the same bytes."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def chain_hash(keys: Keys, record: dict[str, Any]) -> str:
    """The hash of a record's chained fields; `prev` is among them, which makes the chain."""
    return keys.digest(dumps({k: v for k, v in record.items() if k not in UNCHAINED}))


def user_commit(salt: str, pseudonym: str) -> str:
    """A salted commitment to the pseudonym: chained in its place, so the pseudonym can be
    erased, and unlinkable once the salt is erased with it."""
    return hashlib.sha256(bytes.fromhex(salt) + pseudonym.encode()).hexdigest()


def erased_mark(keys: Keys, record_hash: str) -> str:
    """Proof that `forget` (a key holder) erased the record, not someone editing the file."""
    return keys.digest(b"erased:" + record_hash.encode())


def start_record(keys: Keys, *, writer: str, seq: int, prev: str | None,
                 prev_time: float | None, time: float) -> dict[str, Any]:
    """A file's first line. `prev` is the hash of the record before this file (in the writer's
    previous file, or purged), None for a new chain; `seq` is the next record's number."""
    record: dict[str, Any] = {
        "kind": "start", "format": FORMAT, "writer": writer, "seq": seq, "prev": prev,
        "prev_time": prev_time, "time": time, "chain": keys.chain, "key_id": keys.id}
    record["hash"] = chain_hash(keys, record)
    return record


def link_record(keys: Keys, fields: dict[str, Any], *, seq: int, prev: str) -> dict[str, Any]:
    """A chained record of any kind (`entry`, or `repair` after a crash cut a line)."""
    record = {**fields, "seq": seq, "prev": prev}
    record["hash"] = chain_hash(keys, record)
    return record


def entry_record(keys: Keys, entry: AuditEntry, *, time: float, seq: int, prev: str,
                 content: bool) -> dict[str, Any]:
    """The stored form of `entry`: hashes always, pseudonymous user, content sealed if asked."""
    pseudonym = keys.pseudonym(entry.user) if entry.user is not None else None
    salt = os.urandom(16).hex() if pseudonym is not None else None
    fields = {
        "kind": "entry", "time": time, "tenant": entry.tenant, "pipeline": entry.pipeline,
        "version": entry.version, "tiers": list(entry.tiers), "tokens": dict(entry.tokens),
        "cost_usd": entry.cost_usd, "guard_findings": list(entry.guard_findings),
        "outcome": entry.outcome, "request_id": entry.request_id,
        "input_sha256": text_sha256(entry.input_text),
        "output_sha256": text_sha256(entry.output_text),
        "user_commit": user_commit(salt, pseudonym) if salt and pseudonym else None}
    record = link_record(keys, fields, seq=seq, prev=prev)
    record["user"], record["salt"] = pseudonym, salt
    if content:
        plain = dumps({"input": entry.input_text, "output": entry.output_text})
        record["content"] = keys.seal(plain, record["hash"])
    return record


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
