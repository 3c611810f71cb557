"""Retention and erasure: purge drops exactly the expired records, forget exactly one user's
content, and the chains verify afterwards; appends continue through both."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from audit_helpers import DAY, Clock, entry, segment

from engine.audit import AuditLog

MakeLog = Callable[..., AuditLog]


def test_purge_drops_exactly_the_expired_records(make_log: MakeLog, clock: Clock) -> None:
    writer = make_log(retention_days=1000)
    for day in range(40):
        writer.append(entry(request_id=str(day)))
        writer.append(entry(request_id=f"{day}b", time=clock() + 0.5 * DAY))
        clock.advance(1)
    clock.advance(0.25)  # the cutoff falls inside a day's segment: it is rewritten
    keeper = make_log(retention_days=30, writer="keeper")
    cutoff = clock() - 30 * DAY
    expired = sum(1 for r in writer.records() if r["time"] < cutoff)
    assert keeper.purge() == expired == 21
    times = [r["time"] for r in writer.records()]
    assert len(times) == 80 - expired and min(times) >= cutoff
    report = keeper.verify()
    assert report.ok and report.records == 80 - expired
    writer.append(entry(request_id="after"))
    assert keeper.verify().ok


def test_purging_everything_keeps_the_chain(make_log: MakeLog, clock: Clock,
                                            tmp_path: Path) -> None:
    log = make_log(retention_days=1)
    log.append(entry())
    log.append(entry())
    clock.advance(2)
    assert log.purge() == 2
    assert list(log.records()) == []
    log.append(entry())
    report = log.verify()
    assert report.ok and report.records == 1 and report.heads[0].seq == 3


def test_appends_purge_at_most_hourly(make_log: MakeLog, clock: Clock) -> None:
    log = make_log(retention_days=1)
    log.append(entry(request_id="old"))
    clock.advance(1.01)
    log.append(entry(request_id="new"))  # the first append after an hour purges
    assert [r["request_id"] for r in log.records()] == ["new"]
    clock.advance(0.5 / 24)
    log.append(entry(request_id="newer", time=clock() - 2 * DAY))
    assert len(list(log.records())) == 2  # within the hour: no purge yet
    assert log.verify().ok


def test_opening_purges(make_log: MakeLog, clock: Clock) -> None:
    make_log(retention_days=1).append(entry())
    clock.advance(2)
    make_log(retention_days=1, writer="later").open()
    assert list(make_log(writer="reader").records()) == []


def test_forget_erases_exactly_that_users_content(make_log: MakeLog, tmp_path: Path) -> None:
    log = make_log()
    for n in range(6):
        log.append(entry(user=f"u-{n % 3}", input_text=f"words of u-{n % 3} #{n}"))
    pseudonym = next(r["user"] for r in log.records("u-1"))
    assert log.forget("u-1") == 2
    assert log.forget("u-1") == 0
    raw = segment(tmp_path).read_bytes()
    assert pseudonym.encode() not in raw
    records = list(log.records())
    erased = [r for r in records if r["user"] is None]
    assert len(erased) == 2 and all("content" not in r for r in erased)
    kept = {r["content"]["input"] for r in records if r["user"] is not None}
    assert kept == {"words of u-0 #0", "words of u-2 #2", "words of u-0 #3", "words of u-2 #5"}
    report = log.verify()
    assert report.ok and report.erased == 2 and report.records == 6


def test_forget_and_purge_while_appending(make_log: MakeLog, clock: Clock) -> None:
    """Rewrites lock the segment and replace it; the writer reopens and nothing is lost."""
    log = make_log(retention_days=1)
    operator = make_log(retention_days=1, writer="operator")
    log.append(entry(user="gone"))
    done = threading.Event()

    def appends() -> None:
        for n in range(300):
            log.append(entry(user="gone" if n % 10 == 0 else "stays"))
        done.set()

    thread = threading.Thread(target=appends)
    thread.start()
    erased = 0
    while not done.is_set():
        erased += operator.forget("gone")
        operator.purge()
    thread.join()
    erased += operator.forget("gone")
    report = operator.verify()
    assert report.ok and report.records == 301
    assert erased == report.erased == 31
