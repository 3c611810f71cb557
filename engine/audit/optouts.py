"""The opt-out list: users who refused AI processing, checked on every request.

A plain text file, one user id per line (`#` comments and blank lines ignored), so operators
can edit it by hand or with `engine audit optout add|remove|list`. `contains` costs one
`stat`: the file is re-read only when its mtime, size or inode changes, so an edit takes
effect on the next request in every replica without a restart. A missing file means nobody
opted out. `add` and `remove` rewrite the file atomically under a lock beside it, so two
concurrent edits never lose one another and readers never see half a file.
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from engine.audit.records import AuditError
from engine.audit.segments import replace

__all__ = ["OptOuts"]


class OptOuts:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._users: frozenset[str] = frozenset()

    def contains(self, user: str) -> bool:
        return user in self._current()

    def users(self) -> list[str]:
        return sorted(self._current())

    def add(self, user: str) -> bool:
        """Opt `user` out; False if they already were."""
        return self._edit(_checked(user), add=True)

    def remove(self, user: str) -> bool:
        """Opt `user` back in; False if they were not opted out."""
        return self._edit(_checked(user), add=False)

    def _current(self) -> frozenset[str]:
        try:
            info = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (info.st_mtime_ns, info.st_size, info.st_ino)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._users = self._read() if stamp is not None else frozenset()
                self._stamp = stamp
            return self._users

    def _read(self) -> frozenset[str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return frozenset()
        except (OSError, UnicodeDecodeError) as exc:
            raise AuditError(f"{self.path}: cannot read the opt-out list ({exc})") from exc
        return frozenset(line.strip() for line in text.splitlines()
                         if line.strip() and not line.lstrip().startswith("#"))

    def _edit(self, user: str, *, add: bool) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(f".{self.path.name}.lock"), os.O_RDWR | os.O_CREAT,
                     0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if (user in self._read()) == add:
                return False
            text = self.path.read_bytes() if self.path.exists() else b""
            if add:
                replace(self.path, [text.rstrip(b"\n"), b"\n" if text.strip() else b"",
                                    user.encode(), b"\n"])
            else:
                replace(self.path, [raw for raw in text.splitlines(keepends=True)
                                    if raw.decode("utf-8").strip() != user])
            return True
        finally:
            os.close(fd)


def _checked(user: str) -> str:
    stripped = user.strip()
    if not stripped or stripped.startswith("#") or "\n" in stripped or "\r" in stripped:
        raise AuditError(f"not a user id: {user!r} (one line, not blank, not starting with #)")
    return stripped
