"""`POST /v1/feedback`: a user's verdict on an answer, kept where `engine report` can join it.

A response id is `chatcmpl-<trace id>` or `run-<trace id>`, and the run store already keeps
every served run's `trace_id`, so a verdict needs no lookup table shared by replicas: each
line names the trace id, and a report joins on it. Lines go to
`<store>/feedback/<UTC time>-<pid>.jsonl`, one file per process (appends never interleave),
in a folder the run reader skips (its files have no run header):

    {"kind": "feedback", "trace_id": "…", "response_id": "chatcmpl-…", "score": 1,
     "tenant": "acme", "time": 1717000000.0}

Only the score is kept, never free text: the store is for measurement, like the runs in it.
A served run is stored with its tenant and a report joins a score to a run only when both
name the same tenant, so a key of one tenant cannot move another tenant's figures.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Feedback", "FeedbackLog", "trace_id_of"]

_RESPONSE_ID = re.compile(r"^(?:chatcmpl|run)-([0-9a-f]{32})$")


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="the response's id: chatcmpl-… or run-…")
    score: float = Field(ge=-1, le=1, description="-1 (bad) to 1 (good); thumbs: -1 or 1")


def trace_id_of(response_id: str) -> str | None:
    match = _RESPONSE_ID.match(response_id)
    return match[1] if match else None


class FeedbackLog:
    def __init__(self, store: Path) -> None:
        self.folder = store / "feedback"
        self._fd: int | None = None

    def write(self, feedback: Feedback, trace_id: str, tenant: str) -> None:
        line = {"kind": "feedback", "trace_id": trace_id, "response_id": feedback.id,
                "score": feedback.score, "tenant": tenant, "time": round(time.time(), 6)}
        if self._fd is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            path = self.folder / f"{stamp}-{os.getpid()}.jsonl"
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(self._fd, (json.dumps(line) + "\n").encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
