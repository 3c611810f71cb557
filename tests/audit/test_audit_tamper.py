"""Every kind of tampering is caught by `verify` and named as file:line with the reason."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import entry, segment

from engine.audit import AuditLog

MakeLog = Callable[..., AuditLog]


def written(make_log: MakeLog, tmp_path: Path, count: int = 5) -> tuple[AuditLog, Path]:
    log = make_log()
    for n in range(count):
        log.append(entry(user=f"u-{n % 2}", request_id=str(n)))
    log.close()
    return log, segment(tmp_path)


def edit(path: Path, number: int, **changes: Any) -> None:
    rows = path.read_text().splitlines(keepends=True)
    record = json.loads(rows[number - 1])
    record.update(changes)
    rows[number - 1] = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    path.write_text("".join(rows))


def rows_of(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_an_untouched_log_verifies(make_log: MakeLog, tmp_path: Path) -> None:
    log, _ = written(make_log, tmp_path)
    assert log.verify().ok


@pytest.mark.parametrize("field, value", [
    ("outcome", "error"), ("cost_usd", 0.0), ("tokens", {"input": 1, "output": 5}),
    ("time", 1.0), ("input_sha256", "0" * 64), ("tenant", "other"), ("seq", 9)])
def test_an_edited_field(make_log: MakeLog, tmp_path: Path, field: str, value: Any) -> None:
    log, path = written(make_log, tmp_path)
    edit(path, 3, **{field: value})
    report = log.verify()
    assert not report.ok
    assert report.broken == f"{path}:3"
    assert report.why is not None and "edited" in report.why


def test_a_deleted_record(make_log: MakeLog, tmp_path: Path) -> None:
    log, path = written(make_log, tmp_path)
    rows = rows_of(path)
    path.write_text("".join(rows[:2] + rows[3:]))
    report = log.verify()
    assert report.broken == f"{path}:3"
    assert report.why is not None and "deleted or reordered" in report.why


def test_reordered_records(make_log: MakeLog, tmp_path: Path) -> None:
    log, path = written(make_log, tmp_path)
    rows = rows_of(path)
    rows[2], rows[3] = rows[3], rows[2]
    path.write_text("".join(rows))
    report = log.verify()
    assert report.broken == f"{path}:3"
    assert report.why is not None and "deleted or reordered" in report.why


def test_a_file_cut_mid_line(make_log: MakeLog, tmp_path: Path) -> None:
    log, path = written(make_log, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-40])
    report = log.verify()
    assert report.broken == f"{path}:6"
    assert report.why is not None and "torn last line" in report.why
    assert report.records == 4


def test_a_removed_start_line(make_log: MakeLog, tmp_path: Path) -> None:
    log, path = written(make_log, tmp_path)
    path.write_text("".join(rows_of(path)[1:]))
    report = log.verify()
    assert report.broken == f"{path}:1"
    assert report.why is not None and "start line" in report.why


def test_a_garbled_line(make_log: MakeLog, tmp_path: Path) -> None:
    log, path = written(make_log, tmp_path)
    rows = rows_of(path)
    rows[2] = "{not json\n"
    path.write_text("".join(rows))
    assert log.verify().broken == f"{path}:3"


def test_an_edited_user(make_log: MakeLog, tmp_path: Path) -> None:
    log, path = written(make_log, tmp_path)
    other = json.loads(rows_of(path)[2])["user"]
    edit(path, 2, user=other)
    report = log.verify()
    assert report.broken == f"{path}:2"
    assert report.why is not None and "commitment" in report.why


def test_a_user_erased_without_forget(make_log: MakeLog, tmp_path: Path) -> None:
    log, path = written(make_log, tmp_path)
    edit(path, 2, user=None, salt=None)
    report = log.verify()
    assert report.broken == f"{path}:2"
    assert report.why is not None and "erasure mark" in report.why


def test_content_moved_between_records(make_log: MakeLog, tmp_path: Path) -> None:
    log, path = written(make_log, tmp_path)
    edit(path, 2, content=json.loads(rows_of(path)[3])["content"])
    report = log.verify()
    assert report.broken == f"{path}:2"
    assert report.why is not None and "does not decrypt" in report.why


def test_a_chain_recomputed_without_the_key(make_log: MakeLog, tmp_path: Path) -> None:
    """A forger who edits a record and recomputes plain SHA-256 hashes from there on is still
    caught: the chain is an HMAC under the key."""
    log, path = written(make_log, tmp_path)
    rows = [json.loads(row) for row in rows_of(path)]
    rows[2]["outcome"] = "error"
    for number in range(2, len(rows)):
        rows[number]["prev"] = rows[number - 1]["hash"]
        chained = {k: v for k, v in rows[number].items()
                   if k not in {"user", "salt", "content", "hash", "erased"}}
        rows[number]["hash"] = hashlib.sha256(json.dumps(
            chained, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    path.write_text("".join(json.dumps(row, sort_keys=True, separators=(",", ":")) + "\n"
                            for row in rows))
    assert log.verify().broken == f"{path}:3"


def test_reopening_seals_a_torn_line(make_log: MakeLog, tmp_path: Path) -> None:
    _, path = written(make_log, tmp_path)
    path.write_bytes(path.read_bytes() + b'{"kind":"entry","se')
    log = make_log()
    log.append(entry())
    report = log.verify()
    assert report.ok and report.records == 7  # 5, the repair record, the new one
    repair = json.loads(rows_of(path)[6])
    assert repair["kind"] == "repair" and repair["torn_bytes"] == 19
