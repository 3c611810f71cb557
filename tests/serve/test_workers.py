"""`engine serve --workers 2`: two processes share the listening socket, each compiled the
pipelines itself and answers, each keeps its own run-store file and audit chain (the parent,
which only checked the settings, claims none), and one signal to the command stops them all
(the port is free again)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from serve_helpers import free_port

PIPELINE = """\
version: 1
name: burn
input:
  schema: {type: object, required: [question], properties: {question: {type: string}}}
stages:
  burn:
    type: template
    with:
      output: "{% for i in range(80) %}{% for j in range(1000) %}{% endfor %}{% endfor %}\
{{ input.question }}"
output:
  reply: "{{ stages.burn.output }}"
"""
START_TIMEOUT = 60.0


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"engine serve --workers 2 not ready:\n{log.read_text()[-3000:]}")


async def _ask_many(url: str, start: int, count: int) -> list[tuple[int, str]]:
    """`count` requests at once, each on a connection of its own."""
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        answers = await asyncio.gather(*(
            http.post("/v1/pipelines/burn/runs", json={"question": f"q{start + i}"})
            for i in range(count)))
    return [(answer.status_code, answer.json()["output"]["reply"]) for answer in answers]


def _serving_files(store: Path) -> list[Path]:
    """The run-store files that hold at least one run (line 1 is the header)."""
    return [file for file in (store / "burn").glob("*.jsonl")
            if len(file.read_text().splitlines()) > 1]


def test_two_workers_share_the_socket_and_stop_together(tmp_path: Path) -> None:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "burn.yaml").write_text(PIPELINE)
    port, store, log = free_port(), tmp_path / "runs", tmp_path / "serve.log"
    audit = tmp_path / "audit"
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", str(tmp_path / "pipelines"), "--host",
             "127.0.0.1", "--port", str(port), "--workers", "2", "--store", str(store),
             "--audit-dir", str(audit)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_ready(url, process, log)
        asked, deadline = 0, time.monotonic() + START_TIMEOUT
        while len(_serving_files(store)) < 2 and time.monotonic() < deadline:  # both answer
            answers = asyncio.run(_ask_many(url, asked, 16))
            assert answers == [(200, f"q{asked + i}") for i in range(16)]
            asked += 16
        assert len(_serving_files(store)) == 2, log.read_text()[-3000:]
        chains = sorted(path.name for path in audit.iterdir() if path.is_dir())
        assert len(chains) == 2 and not any(name.endswith(f"-{process.pid}")
                                            for name in chains), chains
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    with socket.socket() as probe:  # no worker is left holding the port
        probe.bind(("127.0.0.1", port))


def test_an_unwritable_audit_folder_stops_the_start_before_any_worker(tmp_path: Path) -> None:
    """The parent claims no chain, but still finds what claiming one would: exit 2, one line."""
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines" / "burn.yaml").write_text(PIPELINE)
    not_a_folder = tmp_path / "audit"
    not_a_folder.write_text("a file where the folder should be\n")
    done = subprocess.run(
        [sys.executable, "-m", "engine", "serve", str(tmp_path / "pipelines"), "--host",
         "127.0.0.1", "--port", str(free_port()), "--workers", "2", "--audit-dir",
         str(not_a_folder)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "error: cannot write the audit folder" in done.stderr
    assert "Traceback" not in done.stderr
