"""W3C trace context for a run: the `traceparent` a record may carry (the caller's span),
the run's root span id, and the header that names that span — what the tracing consumer
uses for the spans it builds after the run, what the logs carry, and what the model calls
send while the run is going on, so a provider's spans join the run's trace.

The root span's id is derived from the run's (random) trace id, so it is known before any
span exists: that is what lets a model call made mid-run name its parent.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, NamedTuple

__all__ = ["TraceParent", "header", "parent_of", "parse_traceparent", "root_span_id"]


class TraceParent(NamedTuple):
    trace_id: str
    """32 lowercase hex digits."""
    span_id: str
    """16 lowercase hex digits: the caller's span, the parent of the run's root span."""
    flags: int


_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def parse_traceparent(value: object) -> TraceParent | None:
    """A valid W3C `traceparent` header value, else None (it is then ignored, not an error).

    Per the spec: lowercase hex only; version `ff` is invalid; version `00` has exactly four
    fields (later versions may append more, which are ignored); all-zero ids are invalid.
    """
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if set(trace_id) == {"0"} or set(span_id) == {"0"}:
        return None
    return TraceParent(trace_id, span_id, int(flags, 16))


def parent_of(record: object) -> TraceParent | None:
    """The record's `traceparent` field, when it is a dict holding a valid one."""
    return parse_traceparent(record.get("traceparent")) if isinstance(record, dict) else None


def root_span_id(trace_id: str) -> int:
    """The run's root span id: 64 bits of BLAKE2b of the run's own trace id, so it is known
    before, during and after export, and unique per run even under a caller's traceparent."""
    digest = hashlib.blake2b(trace_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


def header(trace_id: str, record: Any = None) -> str:
    """The `traceparent` naming the run's root span: in the caller's trace (and with its
    sampled flag) when the record carries a traceparent, else in the run's own."""
    parent = parent_of(record)
    trace = parent.trace_id if parent is not None else trace_id
    if len(trace) != 32:
        raise ValueError("a run has no trace id")
    sampled = parent.flags & 1 if parent is not None else 1
    return f"00-{trace}-{root_span_id(trace_id):016x}-{sampled:02x}"
