"""A throwaway real `redis-server` for tests: 127.0.0.1, a free port, no persistence.

Enable with `pytest_plugins = ["redis_server"]` in tests/conftest.py (tests/ is on sys.path
because its conftest sits in a directory without `__init__.py`). Fixtures:

- `redis_server` (session): started on first use, stopped at the end of the session.
- `redis_url` (per test): the server's URL, with the database flushed first so tests do not
  see each other's keys.

`make test` installs `redis-server` (apt-get) when it is missing; without it these tests
fail, saying so, rather than skip and prove nothing. A real server, not a fake:
the point is to test Lua scripts, `TIME` and several processes sharing one budget.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

__all__ = ["RedisServer", "redis_server", "redis_url", "start_redis"]


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def stop(self) -> None:
        """Stop this server only (by its own process handle)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(binary: str = "redis-server", attempts: int = 3) -> RedisServer:
    """Start a server in the foreground (a child we can stop by handle, never by name) and wait
    until it answers PING. Retries on another port if the chosen one was taken meanwhile."""
    path = shutil.which(binary)
    if path is None:
        raise FileNotFoundError(f"{binary} is not installed")
    for _ in range(attempts):
        port = _free_port()
        process = subprocess.Popen(
            [path, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        server = RedisServer(process, port)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and process.poll() is None:
            if _ping(port):
                return server
            time.sleep(0.02)
        server.stop()
    raise RuntimeError(f"{binary} did not start after {attempts} attempts")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: `make test` installs it "
                    "(apt-get install -y redis-server)")
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    with socket.create_connection((redis_server.host, redis_server.port), timeout=2) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        if not sock.recv(16).startswith(b"+OK"):
            raise RuntimeError("FLUSHALL failed on the test redis-server")
    return redis_server.url
