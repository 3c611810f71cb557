"""The run store: every record's measurements appended to a local file that `engine report` reads.

Layout: `<folder>/<pipeline>/<UTC timestamp>-<run_id>.jsonl`, one file per `engine run`. Line 1
is the run's header; every further line is one record's result::

    {"kind": "run", "format": 1, "run_id": "…", "pipeline": "support-triage",
     "file": "pipelines/support_triage.yaml", "started": 1717000000.0,
     "slo": {"latency_p95": 2.0, …} | null, "stages": {"answer": "generate", …} | null}
    {"index": 0, "status": "ok", "duration_ms": 812.4, "started_at": …, "trace_id": "…",
     "trace": [{"stage": "answer", "start_ms": 0.1, "duration_ms": 812.0, "outcome": "ok",
                "notes": {"llm": [{"tier": "smart", "model": "openai/gpt-4o", …}]}}]}

Why JSON lines rather than SQLite: the writer is an append-only log on the hot path of a run
(one `write` per record, no locks, no schema migration), a crash can at worst cut the last
line (the reader skips it), files from many runs and machines merge by copying them into one
folder, and users can read them with `jq` or pandas. Reports scan whole runs anyway, which
JSONL does at disk speed; SQLite would only pay off for ad-hoc queries we do not offer.

What is *not* stored: the answer (`output`), the record's `id` (an input field), error
messages and failure details (they can quote the input), and notes' free-text fields (the
guard's injection `snippet`s, validate's `errors`…): answers and inputs can hold personal
data, and the store is for measurement. Everything a report needs — statuses, durations,
stage outcomes, tokens, cost, tiers, attempts, cache and parse notes — is kept.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.results import RunResult

if TYPE_CHECKING:
    from engine.compile import CompiledPipeline
    from engine.spec.models import Slo

__all__ = ["DEFAULT_FOLDER", "FORMAT", "RunStore", "StoredRun", "parse_line", "read_runs",
           "stored_record"]

DEFAULT_FOLDER = Path("runs")
"""Where `engine run` stores and `engine report` reads when given no folder."""
FORMAT = 1
"""The header's `format`: bumped when a line's meaning changes, so readers can tell."""

_log = logging.getLogger(__name__)
_PRIVATE_KEYS = frozenset({"snippet", "errors", "unsupported", "text", "value", "message"})
"""Note keys that carry text from the input or the answer; dropped at any depth."""
_FAILED = frozenset({"error", "timeout", "recovered"})
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def stored_record(result: RunResult) -> dict[str, Any]:
    """`result.to_json()` as the store keeps it: no output, no input field, no free text."""
    line = result.to_json()
    line.pop("output", None)
    line.pop("id", None)
    if line.get("error") is not None:
        line["error"] = {k: line["error"].get(k) for k in ("stage", "type")}
    line["trace"] = [_scrub_event(event) for event in line.get("trace", [])]
    return line


def _scrub_event(event: dict[str, Any]) -> dict[str, Any]:
    """A failure's `detail` is `Type: message` and the message can quote the input: keep the
    type. Other details (`if: false`, `to human`) are the framework's own words."""
    if event.get("outcome") in _FAILED and "detail" in event:
        event["detail"] = str(event["detail"]).split(":", 1)[0]
    if "notes" in event:
        event["notes"] = _scrub(event["notes"])
    return event


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in _PRIVATE_KEYS}
    if isinstance(value, list):
        return [_scrub(item) for item in value]
    return value


class _RunFile:
    """One run's open file: appends whole lines with one unbuffered `write` each, so a crash
    keeps every finished record and can cut at most the line being written."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            self.write(header)
        except BaseException:
            os.close(self.fd)
            raise

    def write(self, line: dict[str, Any]) -> None:
        data = (json.dumps(line, ensure_ascii=False, default=str) + "\n").encode()
        written = os.write(self.fd, data)
        if written != len(data):  # only a full disk does this: say so, do not limp on
            raise OSError(f"short write to {self.path} ({written} of {len(data)} bytes)")

    def close(self) -> None:
        os.fsync(self.fd)  # a finished run survives a power cut too
        os.close(self.fd)


class RunStore:
    """A run-result consumer writing one JSONL file per pipeline per run under `folder`.

    Call `open_pipeline(compiled)` (or `open_run(...)`) once when a run starts, `observe`
    once per record, `close()` at the end. A store that cannot write (read-only disk, full
    disk) logs one warning and stops storing: a run never fails because of its store.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: dict[str, Path] = {}
        """Pipeline name → the file this run writes (for a "stored in …" message)."""
        self.dropped = 0
        """Records not stored because writing failed."""
        self._open: dict[str, _RunFile] = {}
        self._broken = False

    def open_pipeline(self, pipeline: CompiledPipeline) -> str:
        """Start this run's file for a compiled pipeline; returns the run id."""
        stages = {name: stage.type for name, stage in pipeline.stages.items()}
        return self.open_run(pipeline.name, file=pipeline.loaded.file,
                             slo=pipeline.loaded.spec.slo, stages=stages)

    def open_run(self, pipeline: str, *, file: str | None = None, slo: Slo | None = None,
                 stages: Mapping[str, str] | None = None) -> str:
        """Start a run's file and write its header; returns the run id (16 hex digits).

        `stages` (name → stage type) lets the report find validate stages that failed; the
        SLO is copied so a report judges each pipeline by the targets it ran with."""
        run_id = uuid.uuid4().hex[:16]
        started = time.time()
        header = {"kind": "run", "format": FORMAT, "run_id": run_id, "pipeline": pipeline,
                  "file": file, "started": round(started, 6),
                  "slo": slo.model_dump(exclude_none=True) if slo is not None else None,
                  "stages": dict(stages) if stages is not None else None}
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
        path = self.folder / _safe(pipeline) / f"{stamp}-{run_id}.jsonl"
        self._guarded(lambda: self._start(pipeline, path, header))
        return run_id

    def _start(self, pipeline: str, path: Path, header: dict[str, Any]) -> None:
        previous = self._open.pop(pipeline, None)
        if previous is not None:
            previous.close()
        self._open[pipeline] = _RunFile(path, header)
        self.files[pipeline] = path

    def observe(self, pipeline: str, record: Any, result: RunResult,
                extra: Mapping[str, Any] | None = None) -> None:
        """Append one record's line (never `record` itself); never raises. `extra` adds
        measurements made outside the run (a golden case's verdict, say) to its line: the
        caller keeps them free of personal data."""
        if pipeline not in self._open and not self._broken:
            self.open_run(pipeline)  # a caller that skipped open_run still gets a header
        run = self._open.get(pipeline)
        line = stored_record(result) if extra is None else {**stored_record(result), **extra}
        if run is None or not self._guarded(lambda: run.write(line)):
            self.dropped += 1

    def close(self) -> None:
        """Flush to disk and close every file; warn if records were dropped."""
        while self._open:
            _, run = self._open.popitem()
            self._guarded(run.close)
        if self.dropped:
            _log.warning("run store: %d record(s) were not stored", self.dropped)

    def _guarded(self, action: Callable[[], object]) -> bool:
        """Run `action`; on failure log once, stop writing, and say it failed."""
        if self._broken:
            return False
        try:
            action()
        except (OSError, TypeError, ValueError) as exc:
            self._broken = True
            _log.warning("run store under %s disabled for this run: %s", self.folder, exc)
            return False
        return True


def _safe(name: str) -> str:
    """A pipeline name as a folder name (names are slugs already; this is for odd callers)."""
    return _UNSAFE.sub("_", name).lstrip(".") or "_"


@dataclass
class StoredRun:
    """One stored run as read back: its header, its record lines, and lines skipped."""

    path: Path
    header: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0
    """Lines that were not JSON objects: a line cut by a crash, normally the last one."""

    @property
    def pipeline(self) -> str:
        return str(self.header.get("pipeline") or "?")

    @property
    def started(self) -> float:
        value = self.header.get("started")
        return float(value) if isinstance(value, int | float) else 0.0


def read_runs(path: Path) -> Iterator[StoredRun]:
    """Stored runs in `path`: a run file, or a folder searched recursively (by file name, so
    by pipeline then start time). Files whose first line is not a run header are ignored."""
    files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    for file in files:
        run = _read_file(file)
        if run is not None:
            yield run


def _read_file(path: Path) -> StoredRun | None:
    with path.open("rb") as handle:
        lines = iter(handle)
        header = parse_line(next(lines, b""))
        if header is None or header.get("kind") != "run":
            return None
        run = StoredRun(path, header)
        for raw in lines:
            line = parse_line(raw)
            if line is None:
                run.skipped += 1 if raw.strip() else 0
            else:
                run.records.append(line)
    return run


def parse_line(raw: bytes) -> dict[str, Any] | None:
    """A JSON object from one line, or None (a torn or foreign line: readers skip it)."""
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None
