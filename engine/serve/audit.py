"""The audit trail of served requests: one `engine.audit` record per request admitted to a
pipeline — answered, refused by its guard or the opt-out list, or failed — and the opt-out
list. Requests turned away before (no key, a rate limit, an unknown pipeline) never reach a
pipeline or a model: the metrics count them, the audit log does not.

Input and answer reach the log (hashed always, stored encrypted with `--audit-content`)
with personal data redacted by the guard's PII patterns first, as the audit log requires:
the run result does not carry the guard's pseudonymized text, and the final answer has its
pseudonyms restored.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engine.audit import AuditEntry, AuditError, AuditLog, OptOuts
from engine.results import RunResult

if TYPE_CHECKING:
    from engine.guard.pii import PiiScanner

__all__ = ["Auditor", "Request", "writer_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _check_writable(directory: Path) -> None:
    """What claiming a chain would find wrong with the folder, without claiming one."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        probe = directory / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise AuditError(f"cannot write the audit folder {directory}: "
                         f"{exc.strerror or exc}") from None


def writer_name() -> str:
    """This process's chain in the audit directory: host and pid (each worker has its own)."""
    return _UNSAFE.sub("-", f"{socket.gethostname()}-{os.getpid()}")[-64:]


@dataclass(slots=True)
class Request:
    """What the audit log needs to know of one request, filled in as it goes."""

    request_id: str
    pipeline: str
    version: str
    user: str | None = None
    tenant: str | None = None
    input_text: str = ""
    output_text: str = ""
    findings: list[str] = field(default_factory=list)
    result: RunResult | None = None
    """The run, when this request ran one (not for a refusal or a replay)."""


class Auditor:
    def __init__(self, directory: Path, *, content: bool, opt_out: Path | None,
                 claim: bool = True) -> None:
        """`claim=False`: check the key and the folder only, claiming no chain — for the
        parent of `--workers`, which serves nothing (each worker claims its own)."""
        self.log = AuditLog.from_env(directory, writer=writer_name(), content=content)
        if claim:
            self.log.open()  # a bad key, folder or lock fails start-up, not every request
        else:
            _check_writable(directory)
        self.opt_outs = OptOuts(opt_out) if opt_out is not None else None
        self._scanner: PiiScanner | None = None

    def opted_out(self, user: str) -> bool:
        return self.opt_outs is not None and self.opt_outs.contains(user)

    def record(self, request: Request, outcome: str) -> None:
        """Append one record; `outcome`: the run's status, `replayed`, or the refusal's HTTP
        status code."""
        result = request.result
        tiers: list[str] = []
        tokens_in = tokens_out = 0
        cost = 0.0
        if result is not None:
            request.findings += [f"blocked:{event.notes['blocked']}" for event in result.events
                                 if event.notes and event.notes.get("blocked")]
            tiers = [str(call["tier"]) for call in result.calls() if call.get("tier")]
            tokens_in, tokens_out, cost = result.usage()
        tokens = {"input": tokens_in, "output": tokens_out}
        self.log.append(AuditEntry(
            user=request.user, tenant=request.tenant, pipeline=request.pipeline,
            version=request.version, outcome=outcome, tiers=tiers, tokens=tokens,
            cost_usd=cost, guard_findings=request.findings, request_id=request.request_id,
            input_text=self._redacted(request.input_text),
            output_text=self._redacted(request.output_text)))

    def _redacted(self, text: str) -> str:
        if not text:
            return ""
        if self._scanner is None:
            from engine.guard.pii import PiiScanner
            from engine.stages.guard import STRUCTURED_ENTITIES

            self._scanner = PiiScanner(list(STRUCTURED_ENTITIES))
        return self._scanner.apply(text, self._scanner.find(text), "redact").text

    def close(self) -> None:
        self.log.close()
