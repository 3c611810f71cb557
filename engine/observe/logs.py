"""JSON-line logs: one line per record, one per stage that failed or was stopped, scrubbed.

```python
logs = JsonLogs(sys.stderr, run_id=run_id)     # a results consumer: observe(...), close()
configure(sys.stderr, logging.INFO, run_id=run_id)   # engine's own `logging` calls, as JSON
```

A line joins its trace on `trace_id`: the record's W3C `traceparent` trace id when the
record carries a valid one (its run is a child of that trace, see `engine.observe.tracing`),
else `RunResult.trace_id`; the result's own id is then kept as `result_trace_id`. The
traceparent parser lives here, not in the tracing module, because both consumers must agree
on that id and this module must not import OpenTelemetry.

What a line never holds: the record or the output (only counts, names and outcomes), the
raw user id (`user` is a keyed BLAKE2b pseudonym), secrets or PII. Every free-text string
goes through `scrub` first: values of secret-looking environment variables and well-known
key shapes become `[SECRET]`; e-mail addresses, phone, card, IBAN, SSN and IP values become
`<EMAIL>`-style placeholders, found by the guard's `PiiScanner` (loaded on the first string
that could hold one: call `warm_up()` in a thread at start-up to keep the ~3 s off the event
loop), then by a coarse net for what its context rules let through (`_coarse_redact`). Ids
this module writes itself (`ts`, `level`, `event`, `run_id`, `trace_id`, `result_trace_id`,
`user`) are not scanned: a hex id must not turn into `<NUMBER>`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from engine.observe.observers import Failures
from engine.observe.traceparent import parent_of
from engine.results import RunResult, StageEvent

__all__ = [
    "JsonFormatter",
    "JsonLogs",
    "configure",
    "env_secrets",
    "pseudonym",
    "scrub",
    "trace_id_for",
    "warm_up",
]

logger = logging.getLogger("engine.observe")

SALT_ENV = "ENGINE_LOG_SALT"
PII_ENTITIES = ("EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "US_SSN", "IP_ADDRESS")
"""The structured entities: pattern recognizers only, no NER model to load."""

_TRUSTED = frozenset({"ts", "level", "event", "run_id", "trace_id", "result_trace_id", "user"})
_FAILED = frozenset({"error", "timeout", "recovered"})


# --- W3C trace context ----------------------------------------------------------------------

def trace_id_for(record: object, result: RunResult) -> str:
    """The id logs and traces share: the traceparent's trace id, else the result's own."""
    parent = parent_of(record)
    return parent.trace_id if parent is not None else result.trace_id


# --- scrubbing -------------------------------------------------------------------------------

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|SALT", re.IGNORECASE)
_MIN_SECRET = 8
_KEY_SHAPES = re.compile(
    r"\bsk-[A-Za-z0-9_-]{8,}"                                      # OpenAI, Anthropic
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"                              # AWS access key ids
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}"                               # GitHub
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"                             # Slack
    r"|\bAIza[0-9A-Za-z_-]{30,}"                                   # Google
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"  # JWTs
)
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
_ASSIGNED = re.compile(
    r"""(?i)\b((?:api[_-]?key|token|secret|password|passwd|authorization)["']?\s*[=:]\s*["']?)"""
    r"""([^\s"',;}]{8,})""")
_MAYBE_PII = re.compile(r"[0-9@:]")
"""Every structured entity needs a digit, an `@` (e-mail) or a `:` (IPv6): text without
one is returned as is, so names and outcomes never load the scanner."""


def env_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of secret-looking environment variables, longest first (so a secret that
    contains another is replaced whole). A key set later still counts: the process's
    environment is compared with the one the list was made from at each call (its raw
    items, ~2 µs), and read again (~45 µs) only when it changed."""
    if environ is not None:
        return _secrets_in(environ)
    raw = getattr(os.environ, "_data", None)  # CPython's bytes mapping behind os.environ
    if not isinstance(raw, dict):
        return _secrets_in(os.environ)
    global _env_cache
    snapshot = tuple(raw.items())
    if snapshot != _env_cache[0]:  # the list is made from this very snapshot
        decoded = {os.fsdecode(key): os.fsdecode(value) for key, value in snapshot}
        _env_cache = (snapshot, _secrets_in(decoded))
    return list(_env_cache[1])


_env_cache: tuple[tuple[Any, ...] | None, list[str]] = (None, [])
"""The raw environment last read, and its secrets: replaced whole, never half-updated."""


def _secrets_in(env: Mapping[str, str]) -> list[str]:
    values = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_SECRET}
    return sorted(values, key=len, reverse=True)


def scrub(text: str, known: Sequence[str] | None = None) -> str:
    """`text` with secrets as `[SECRET]` and PII as `<EMAIL>`-style placeholders.

    `known`: the secret values to remove, from `env_secrets()` when not given (pass it when
    scrubbing many strings of one line).
    """
    for value in env_secrets() if known is None else known:
        text = text.replace(value, "[SECRET]")
    text = _KEY_SHAPES.sub("[SECRET]", text)
    text = _BEARER.sub(r"\1 [SECRET]", text)
    text = _ASSIGNED.sub(r"\1[SECRET]", text)
    return _redact_pii(text) if _MAYBE_PII.search(text) else text


_scanner_lock = threading.Lock()
_redactor: Callable[[str], str] | None = None


def warm_up() -> None:
    """Build the PII scanner now (it imports Presidio: seconds), not on the first line."""
    _pii_redactor()


def _redact_pii(text: str) -> str:
    return _coarse_redact(_pii_redactor()(text))


def _pii_redactor() -> Callable[[str], str]:
    """The guard's scanner, built once per process (identity if it cannot load)."""
    global _redactor
    with _scanner_lock:
        if _redactor is None:
            _redactor = _build_redactor()
        return _redactor


def _build_redactor() -> Callable[[str], str]:
    try:
        from engine.guard.pii import PiiScanner

        scanner = PiiScanner(PII_ENTITIES)
    except ImportError as exc:
        logger.warning("logs: the PII scanner is unavailable (%s; install 'engine[guard]'); "
                       "only the coarse net redacts e-mails and long numbers", exc)
        return str

    def redact(text: str) -> str:
        return scanner.apply(text, scanner.find(text), "redact").text

    return redact


_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
_DIGITS = re.compile(r"\+?\d[\d .()-]{5,}\d")
_MIN_DIGITS = 7
"""The shortest phone number worth hiding; shorter runs (counts, codes, ports) stay."""


def _coarse_redact(text: str) -> str:
    """The net behind the guard's detector, which is tuned not to mangle user text: it
    vetoes a number after a cue like "no", "order" or "version", and wants a known e-mail
    domain. A log line would rather lose an order number than leak a phone number, so what
    is left that looks like an e-mail, an IPv4 address or a run of 7+ digits goes too."""
    text = _EMAIL.sub("<EMAIL>", text)
    text = _IPV4.sub("<IP_ADDRESS>", text)
    return _DIGITS.sub(_long_number, text)


def _long_number(match: re.Match[str]) -> str:
    found = match.group()
    return "<NUMBER>" if sum(c.isdigit() for c in found) >= _MIN_DIGITS else found


def _scrubbed(payload: dict[str, Any]) -> dict[str, Any]:
    """Every string value scrubbed but the ids this module wrote itself."""
    known = env_secrets()
    return {key: value if key in _TRUSTED else _scrub_value(value, known)
            for key, value in payload.items()}


def _scrub_value(value: Any, known: Sequence[str]) -> Any:
    if isinstance(value, str):
        return scrub(value, known)
    if isinstance(value, list | tuple):
        return [_scrub_value(item, known) for item in value]
    if isinstance(value, dict):
        return {str(k): _scrub_value(v, known) for k, v in value.items()}
    return value


def _line(payload: dict[str, Any]) -> str:
    return json.dumps(_scrubbed(payload), ensure_ascii=False, default=str)


def _timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


# --- pseudonyms ------------------------------------------------------------------------------

_process_salt = secrets.token_hex(32)
"""Used when no salt is configured. A fixed default would let anyone holding the code hash
candidate ids (e-mails, account numbers: few enough to enumerate) and reverse the
pseudonyms; a random one keeps them joinable within this process's lines only. Set
ENGINE_LOG_SALT (a secret) to join a user's lines across runs and processes."""


def pseudonym(user_id: object, salt: str) -> str:
    """`u_` + 16 hex digits of BLAKE2b(user id) keyed with the salt: stable, not reversible
    without the salt."""
    key = hashlib.blake2b(salt.encode(), digest_size=32).digest()
    digest = hashlib.blake2b(str(user_id).encode(), key=key, digest_size=8).hexdigest()
    return f"u_{digest}"


# --- the results consumer --------------------------------------------------------------------

class JsonLogs:
    """Writes a run's JSON lines to `stream` as records complete; never raises."""

    def __init__(self, stream: TextIO, *, run_id: str, salt: str | None = None) -> None:
        self.stream = stream
        self.run_id = run_id
        self.salt = salt or os.environ.get(SALT_ENV) or _process_salt
        self._failures = Failures(logger, "JSON logs")

    def observe(self, pipeline: str, record: Any, result: RunResult) -> None:
        try:
            lines = self.lines(pipeline, record, result)
            self.stream.write("".join(line + "\n" for line in lines))
            self.stream.flush()
        except Exception:
            self._failures(result.index)

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing to save
            self.stream.flush()

    def lines(self, pipeline: str, record: Any, result: RunResult) -> list[str]:
        """This record's lines: the run, then each stage worth a line."""
        base = self._base(pipeline, record, result)
        lines = [_line({**base, **_run_fields(result)})]
        lines += [_line({**base, **fields}) for fields in _stage_fields(result.events)]
        return lines

    def _base(self, pipeline: str, record: Any, result: RunResult) -> dict[str, Any]:
        ended = (result.started_at + result.duration) if result.started_at else None
        base: dict[str, Any] = {
            "ts": _timestamp(ended if ended is not None else time.time()),
            "run_id": self.run_id, "trace_id": trace_id_for(record, result),
            "pipeline": pipeline, "record_index": result.index, "user": self._user(record)}
        if base["trace_id"] != result.trace_id:
            base["result_trace_id"] = result.trace_id
        return base

    def _user(self, record: Any) -> str | None:
        user_id = record.get("user_id") if isinstance(record, dict) else None
        return None if user_id is None else pseudonym(user_id, self.salt)


def _run_fields(result: RunResult) -> dict[str, Any]:
    error = result.error or {}
    fields: dict[str, Any] = {
        "level": "error" if result.status == "error" else "info", "event": "run",
        "status": result.status, "duration_ms": round(result.duration * 1000, 3),
        "finished_by": result.finished_by, "error_type": error.get("type")}
    if error:
        fields["error_stage"] = error.get("stage")
        fields["error"] = str(error.get("message", ""))
    if result.degraded:
        fields["degraded"] = list(result.degraded)
    return fields


def _stage_fields(events: Iterable[StageEvent]) -> list[dict[str, Any]]:
    """A line for each stage that failed, was blocked or raised a flag; the rest are in
    the trace."""
    out = []
    for event in events:
        notes = event.notes or {}
        flags = _flags(notes)
        blocked = notes.get("blocked")
        if event.outcome not in _FAILED and not blocked and not flags:
            continue
        fields: dict[str, Any] = {
            "level": "error" if event.outcome in ("error", "timeout") else "warning",
            "event": "stage", "stage": event.stage, "outcome": event.outcome,
            "duration_ms": round(event.duration * 1000, 3), "detail": event.detail}
        if blocked:
            fields["blocked"] = str(blocked)
        if flags:
            fields["flags"] = flags
        out.append(fields)
    return out


def _flags(notes: Mapping[str, Any]) -> list[str]:
    """What a guard or validate stage noticed without stopping the run: names only, never
    the values or snippets the notes may hold."""
    flags = [f"pii:{entity}" for entity in sorted(
        {str(f.get("entity")) for f in notes.get("pii") or () if isinstance(f, dict)})]
    injection = notes.get("injection")
    if isinstance(injection, dict) and injection.get("blocked") and not notes.get("blocked"):
        flags.append("injection")
    flags += [f"filter:{name}" for name in notes.get("filters") or () if isinstance(name, str)]
    if isinstance(notes.get("hallucinations"), int) and notes["hallucinations"] > 0:
        flags.append("hallucinations")
    return flags


# --- engine's own logging --------------------------------------------------------------------

class JsonFormatter(logging.Formatter):
    """A `logging` record as one scrubbed JSON line; the message is formatted with its args
    first, so a secret passed as an argument is scrubbed like one in the text."""

    _EXTRAS = ("pipeline", "stage", "record_index")

    def __init__(self, run_id: str | None = None) -> None:
        super().__init__()
        self.run_id = run_id

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": _timestamp(record.created), "level": record.levelname.lower(),
            "event": "log", "run_id": getattr(record, "run_id", self.run_id),
            "trace_id": getattr(record, "trace_id", None), "logger": record.name,
            "message": _message(record)}
        payload.update({k: getattr(record, k) for k in self._EXTRAS if hasattr(record, k)})
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return _line(payload)


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except (TypeError, ValueError):  # args that do not fit the format: keep both, scrubbed
        return f"{record.msg!s} {record.args!r}"


class _JsonHandler(logging.StreamHandler[TextIO]):
    """Marks the handler `configure` installed, so calling it again replaces it."""


def configure(stream: TextIO, level: int | str = logging.INFO, *, run_id: str | None = None,
              loggers: Sequence[str] = ("engine", "opentelemetry")) -> logging.Handler:
    """Send these loggers' records to `stream` as JSON lines (replacing an earlier call's
    handler). They stop propagating to the root logger, whose handlers would write them
    unscrubbed. `opentelemetry` is included so a failing span exporter says so in JSON too.
    """
    handler = _JsonHandler(stream)
    handler.setFormatter(JsonFormatter(run_id))
    for name in loggers:
        target = logging.getLogger(name)
        for old in [h for h in target.handlers if isinstance(h, _JsonHandler)]:
            target.removeHandler(old)
        target.addHandler(handler)
        target.setLevel(level)
        target.propagate = False
    return handler
