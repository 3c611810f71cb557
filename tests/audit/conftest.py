"""Fixtures for the audit log tests: a key, a clock the test moves, logs closed afterwards."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import Clock

from engine.audit import AuditLog


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_log(tmp_path: Path, key: bytes, clock: Clock) -> Iterator[Callable[..., AuditLog]]:
    """An AuditLog in tmp_path/audit (content on, the test key and clock unless told)."""
    logs: list[AuditLog] = []

    def make(**options: Any) -> AuditLog:
        settings: dict[str, Any] = {"content": True, "key": key, "clock": clock, **options}
        log = AuditLog(tmp_path / "audit", **settings)
        logs.append(log)
        return log

    yield make
    for log in logs:
        log.close()
