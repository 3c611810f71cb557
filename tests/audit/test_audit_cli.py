"""`engine audit verify|purge|forget|optout|keygen` through `main(argv)`: exit codes, messages."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from audit_helpers import Clock, entry, segment

from engine.audit import AuditLog
from engine.cli import main

MakeLog = Callable[..., AuditLog]


@pytest.fixture
def audit_dir(make_log: MakeLog, tmp_path: Path, key: bytes, clock: Clock,
              monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three records written 40, 20 and 0 days ago by real time; the key in the env."""
    monkeypatch.setenv("ENGINE_AUDIT_KEY", base64.b64encode(key).decode())
    clock.now = time.time() - 40 * 86_400
    log = make_log(retention_days=1000)
    for user in ("u-1", "u-2", "u-1"):
        log.append(entry(user=user))
        clock.advance(20)
    log.close()
    return tmp_path / "audit"


def test_verify_ok(audit_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", str(audit_dir), "--retention-days", "1000"]) == 0
    out = capsys.readouterr().out
    assert f"ok {audit_dir}: 3 record(s) in 3 file(s)" in out
    assert "main: last record 3, hash " in out


def test_verify_names_the_broken_line(audit_dir: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = segment(tmp_path, number=2)
    path.write_text(path.read_text().replace('"outcome":"ok"', '"outcome":"no"'))
    assert main(["audit", "verify", str(audit_dir), "--retention-days", "1000"]) == 1
    err = capsys.readouterr().err
    assert f"broken {path}:2: its hash does not match its fields" in err
    assert "FAILED" in err


def test_verify_usage_errors(audit_dir: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["audit", "verify", str(tmp_path / "nowhere")]) == 2
    assert "no audit log there" in capsys.readouterr().err
    monkeypatch.delenv("ENGINE_AUDIT_KEY")
    assert main(["audit", "verify", str(audit_dir)]) == 2
    assert "set ENGINE_AUDIT_KEY" in capsys.readouterr().err
    monkeypatch.setenv("ENGINE_AUDIT_KEY", "short")
    assert main(["audit", "verify", str(audit_dir)]) == 2
    assert "base64 or hex" in capsys.readouterr().err


def test_purge(audit_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "purge", str(audit_dir), "--retention-days", "30"]) == 0
    assert "1 record(s) older than 30 days dropped" in capsys.readouterr().out
    assert main(["audit", "verify", str(audit_dir)]) == 0
    assert "2 record(s)" in capsys.readouterr().out
    assert main(["audit", "purge", str(audit_dir), "--retention-days", "0"]) == 2
    assert "retention_days must be above 0" in capsys.readouterr().err


def test_forget(audit_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "forget", str(audit_dir), "--user", "u-1"]) == 0
    assert "of 2 record(s)" in capsys.readouterr().out
    assert main(["audit", "verify", str(audit_dir), "--retention-days", "1000"]) == 0
    assert "2 erased by forget" in capsys.readouterr().out


def test_optout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = str(tmp_path / "optouts.txt")
    assert main(["audit", "optout", "add", file, "u-1"]) == 0
    assert main(["audit", "optout", "add", file, "u-2"]) == 0
    assert main(["audit", "optout", "remove", file, "u-2"]) == 0
    capsys.readouterr()
    assert main(["audit", "optout", "list", file]) == 0
    assert capsys.readouterr().out == "u-1\n"
    assert main(["audit", "optout", "add", file]) == 2
    assert "needs a USER" in capsys.readouterr().err
    assert main(["audit", "optout", "drop", file, "u-1"]) == 2


def test_keygen(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["audit", "keygen"]) == 0
    key = capsys.readouterr().out.strip()
    log = AuditLog.from_env(tmp_path, content=True, environ={"ENGINE_AUDIT_KEY": key})
    log.append(entry())
    assert log.verify().ok
    log.close()
