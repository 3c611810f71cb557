"""The opt-out list: edits by hand or by `add`/`remove` show on the next `contains`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from engine.audit import AuditError, OptOuts


def test_a_missing_file_means_nobody(tmp_path: Path) -> None:
    assert not OptOuts(tmp_path / "optouts.txt").contains("u-1")


def test_add_and_remove(tmp_path: Path) -> None:
    path = tmp_path / "lists" / "optouts.txt"
    optouts = OptOuts(path)
    assert optouts.add("u-1") and not optouts.add("u-1") and optouts.add(" u-2 ")
    assert optouts.contains("u-1") and optouts.contains("u-2")
    assert OptOuts(path).users() == ["u-1", "u-2"]
    assert optouts.remove("u-1") and not optouts.remove("u-1")
    assert not optouts.contains("u-1") and path.read_text() == "u-2\n"


def test_a_hand_edit_is_seen_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "optouts.txt"
    path.write_text("# users who said no\nu-1\n\n")
    optouts = OptOuts(path)
    assert optouts.contains("u-1") and not optouts.contains("# users who said no")
    path.write_text("# users who said no\nu-2\n\n")  # same size: the mtime tells
    later = os.stat(path).st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(later, later))
    assert optouts.contains("u-2") and not optouts.contains("u-1")
    path.unlink()
    assert not optouts.contains("u-2")


def test_a_bad_user_id(tmp_path: Path) -> None:
    for bad in ("", "  ", "a\nb", "#x"):
        with pytest.raises(AuditError, match="not a user id"):
            OptOuts(tmp_path / "o.txt").add(bad)
