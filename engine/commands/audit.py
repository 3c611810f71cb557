"""`engine audit verify|purge|forget|optout|keygen`: operate an audit directory by hand.

The key comes from ENGINE_AUDIT_KEY, as for the serving replicas; a missing or wrong key is a
usage error (exit 2) naming the key the files need, never a wall of broken lines.
"""

from __future__ import annotations

from pathlib import Path

from engine.audit import AuditError, AuditLog, OptOuts, VerifyReport, generate_key
from engine.commands import EXIT_BAD_SPEC, EXIT_OK, EXIT_RECORD_ERRORS, stderr, stdout

EXIT_VERIFY_FAILED = EXIT_RECORD_ERRORS


def verify(directory: Path, retention_days: float) -> int:
    try:
        report = _log(directory, retention_days).verify()
    except AuditError as exc:
        return _usage(exc)
    _print_report(directory, report)
    return EXIT_OK if report.ok else EXIT_VERIFY_FAILED


def purge(directory: Path, retention_days: float) -> int:
    try:
        dropped = _log(directory, retention_days).purge()
    except AuditError as exc:
        return _usage(exc)
    stdout().print(f"{directory}: {dropped} record(s) older than {retention_days:g} days "
                   "dropped", markup=False)
    return EXIT_OK


def forget(directory: Path, user: str) -> int:
    try:
        erased = _log(directory).forget(user)
    except AuditError as exc:
        return _usage(exc)
    stdout().print(f"{directory}: erased the user and stored content of {erased} record(s); "
                   "the chains still verify", markup=False)
    return EXIT_OK


def optout(action: str, file: Path, user: str | None) -> int:
    optouts = OptOuts(file)
    try:
        if action == "list":
            for name in optouts.users():
                stdout().print(name, markup=False)
            return EXIT_OK
        if user is None:
            return _usage(AuditError(f"`engine audit optout {action}` needs a USER"))
        changed = optouts.add(user) if action == "add" else optouts.remove(user)
    except AuditError as exc:
        return _usage(exc)
    said = {("add", True): "opted out", ("add", False): "was already opted out",
            ("remove", True): "opted back in", ("remove", False): "was not opted out"}
    stdout().print(f"{user} {said[action, changed]}", markup=False)
    return EXIT_OK


def keygen() -> int:
    stdout().print(generate_key(), markup=False)
    return EXIT_OK


def _log(directory: Path, retention_days: float = 30) -> AuditLog:
    if not directory.is_dir():
        raise AuditError(f"{directory}: no audit log there (not a directory)")
    return AuditLog.from_env(directory, retention_days=retention_days)


def _usage(exc: AuditError) -> int:
    stderr().print(f"error: {exc}", style="red", markup=False)
    return EXIT_BAD_SPEC


def _print_report(directory: Path, report: VerifyReport) -> None:
    out = stdout()
    for head in report.heads:
        out.print(f"  {head.writer}: last record {head.seq}, hash {head.hash}", markup=False)
    summary = (f"{report.records} record(s) in {report.files} file(s), "
               f"{report.erased} erased by forget")
    if report.ok:
        out.print(f"ok {directory}: {summary}", markup=False)
        return
    err = stderr()
    for problem in report.problems:
        err.print(f"broken {problem}", style="red", markup=False)
    err.print(f"FAILED {directory}: {summary} verified before the first break",
              style="red", markup=False)
