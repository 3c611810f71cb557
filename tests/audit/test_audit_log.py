"""The audit log's basic contract: records chain and verify, content is sealed, keys are
checked, a writer continues its chain across restarts and days, and is claimed by one process."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from audit_helpers import Clock, entry, lines, segment

from engine.audit import AuditError, AuditLog, generate_key

MakeLog = Callable[..., AuditLog]


def test_records_chain_and_verify(make_log: MakeLog, tmp_path: Path) -> None:
    log = make_log()
    hashes = [log.append(entry(request_id=str(n))) for n in range(5)]
    report = log.verify()
    assert report.ok and report.records == 5 and report.files == 1
    assert report.broken is None and report.why is None
    stored = lines(segment(tmp_path))
    assert [r["kind"] for r in stored] == ["start"] + ["entry"] * 5
    assert [r["seq"] for r in stored[1:]] == [1, 2, 3, 4, 5]
    assert [r["prev"] for r in stored[2:]] == hashes[:-1]
    assert report.heads[0].seq == 5 and report.heads[0].hash == hashes[-1]


def test_a_record_holds_the_metadata_and_hashes(make_log: MakeLog, tmp_path: Path) -> None:
    make_log().append(entry(input_text="hello", output_text="bye"))
    record = lines(segment(tmp_path))[1]
    assert record["tenant"] == "acme" and record["pipeline"] == "support-triage"
    assert record["version"] == "v1" and record["tiers"] == ["cheap"]
    assert record["tokens"] == {"input": 10, "output": 5} and record["cost_usd"] == 0.0001
    assert record["guard_findings"] == ["pii:email"] and record["outcome"] == "ok"
    assert record["input_sha256"] == (
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
    assert record["user"] != "u-1" and len(record["user"]) == 32


def test_content_is_unreadable_without_the_key(make_log: MakeLog, tmp_path: Path) -> None:
    log = make_log()
    log.append(entry(user="alice@example.com", input_text="my card is 4111-1111",
                     output_text="we will call you back"))
    raw = segment(tmp_path).read_bytes()
    for plaintext in (b"4111-1111", b"call you back", b"alice@example.com"):
        assert plaintext not in raw
    (record,) = log.records()
    assert record["content"] == {"input": "my card is 4111-1111",
                                 "output": "we will call you back"}
    stranger = AuditLog(tmp_path / "audit", key=os.urandom(32))
    with pytest.raises(AuditError, match="audit key id"):
        stranger.verify()


def test_content_off_stores_only_hashes(make_log: MakeLog, tmp_path: Path) -> None:
    make_log(content=False).append(entry(input_text="private words"))
    record = lines(segment(tmp_path))[1]
    assert "content" not in record and b"private words" not in segment(tmp_path).read_bytes()


def test_content_needs_a_valid_key(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="ENGINE_AUDIT_KEY"):
        AuditLog(tmp_path, content=True)
    with pytest.raises(AuditError, match="ENGINE_AUDIT_KEY"):
        AuditLog.from_env(tmp_path, content=True, environ={})
    with pytest.raises(AuditError, match="base64 or hex") as raised:
        AuditLog.from_env(tmp_path, content=True, environ={"ENGINE_AUDIT_KEY": "hunter2"})
    assert "hunter2" not in str(raised.value)
    log = AuditLog.from_env(tmp_path, content=True,
                            environ={"ENGINE_AUDIT_KEY": generate_key()})
    assert log.content


def test_without_a_key_metadata_is_still_chained(make_log: MakeLog) -> None:
    log = make_log(content=False, key=None)
    log.append(entry())
    assert log.verify().ok


def test_a_keyed_log_needs_its_key_to_verify(make_log: MakeLog, tmp_path: Path) -> None:
    make_log().append(entry())
    with pytest.raises(AuditError, match="set ENGINE_AUDIT_KEY"):
        AuditLog(tmp_path / "audit").verify()


def test_reopening_continues_the_chain(make_log: MakeLog, key: bytes) -> None:
    first = make_log()
    first.append(entry())
    first.close()
    second = make_log()
    second.append(entry())
    report = second.verify()
    assert report.ok and report.records == 2 and report.heads[0].seq == 2


def test_one_writer_name_per_process(make_log: MakeLog) -> None:
    make_log().open()
    with pytest.raises(AuditError, match="in use by another process"):
        make_log().open()
    make_log(writer="replica-2").open()


def test_bad_writer_name(make_log: MakeLog) -> None:
    with pytest.raises(AuditError, match="writer name"):
        make_log(writer="../escape")


def test_a_new_segment_each_day_links_to_the_last(
        make_log: MakeLog, clock: Clock, tmp_path: Path) -> None:
    log = make_log()
    for _ in range(3):
        log.append(entry())
        clock.advance(1.01)
    assert [p.name for p in sorted((tmp_path / "audit" / "main").glob("*.jsonl"))] == [
        "00000001.jsonl", "00000002.jsonl", "00000003.jsonl"]
    report = log.verify()
    assert report.ok and report.records == 3 and report.files == 3


def test_a_missing_segment_is_named(make_log: MakeLog, clock: Clock, tmp_path: Path) -> None:
    log = make_log()
    for _ in range(3):
        log.append(entry())
        clock.advance(1.01)
    segment(tmp_path, number=2).unlink()
    report = log.verify()
    assert report.broken == f"{segment(tmp_path, number=3)}:1"
    assert report.why is not None and "missing before this file" in report.why
    segment(tmp_path, number=1).unlink()
    report = log.verify()
    assert report.broken == f"{segment(tmp_path, number=3)}:1"
    assert report.why is not None and "younger than the retention" in report.why
