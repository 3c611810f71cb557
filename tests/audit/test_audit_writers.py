"""Several writers in one directory: threads share a log, processes each own a chain."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from audit_helpers import entry

from engine.audit import AuditLog

MakeLog = Callable[..., AuditLog]
ROOT = Path(__file__).resolve().parents[2]

WRITE = """
import sys
from pathlib import Path
from engine.audit import AuditEntry, AuditLog
log = AuditLog(Path(sys.argv[1]), writer=sys.argv[2], key=bytes.fromhex(sys.argv[3]),
               content=True)
for n in range(int(sys.argv[4])):
    log.append(AuditEntry(user=f"u-{n % 7}", pipeline="p", version="v", outcome="ok",
                          input_text=f"{sys.argv[2]} {n}"))
"""


def test_threads_share_one_writer(make_log: MakeLog) -> None:
    log = make_log()

    def appends(name: str) -> None:
        for n in range(200):
            log.append(entry(request_id=f"{name}-{n}"))

    threads = [threading.Thread(target=appends, args=(str(t),)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = log.verify()
    assert report.ok and report.records == 800
    assert len({r["request_id"] for r in log.records()}) == 800


def test_processes_write_side_by_side(make_log: MakeLog, tmp_path: Path, key: bytes) -> None:
    directory = str(tmp_path / "audit")
    children = [subprocess.Popen([sys.executable, "-c", WRITE, directory, name, key.hex(),
                                  "300"], env={**os.environ, "PYTHONPATH": str(ROOT)})
                for name in ("replica-1", "replica-2")]
    log = make_log(clock=time.time)  # the children purge by the real clock
    for _ in range(300):
        log.append(entry())
    assert [child.wait(timeout=60) for child in children] == [0, 0]
    report = log.verify()
    assert report.ok and report.records == 900
    assert sorted(head.writer for head in report.heads) == ["main", "replica-1", "replica-2"]
    assert log.forget("u-3") == 2 * 43
    assert log.verify().ok
