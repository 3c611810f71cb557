"""A live `engine serve` app on 127.0.0.1 (uvicorn in the test's event loop) in front of the
chaos stub provider, and the pipelines and key files the tests serve."""

from __future__ import annotations

import asyncio
import socket
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from engine.providers.stub import StubProvider
from engine.providers.stub_config import FaultProfile, StubConfig
from engine.serve import Gateway, ServeConfig, create_app
from engine.serve.keys import hash_key
from engine.serve.server import uvicorn_config

KEYS = {"alice": "sk-alice-0123456789", "bob": "sk-bob-0123456789"}


@pytest.fixture
async def stub() -> AsyncIterator[StubProvider]:
    config = StubConfig(seed=1, models={"slow": FaultProfile(latency=0.4)})
    async with StubProvider(config) as provider:
        yield provider


def pipeline_text(stub: StubProvider, name: str = "echo", *, model: str = "fast",
                  stream: bool = True, timeout: str = "5s", api_key: str = "stub") -> str:
    return textwrap.dedent(f"""\
        version: 1
        name: {name}
        models:
          tier: {{model: openai/{model}, api_base: "{stub.base_url}", api_key: "{api_key}",
                  timeout: 2s}}
        defaults: {{timeout: {timeout}, retry: {{attempts: 1}}}}
        resources:
          responses: {{type: cache, backend: memory}}
        input:
          schema:
            type: object
            required: [question]
            properties:
              question: {{type: string, minLength: 1}}
              user_id: {{type: string}}
        stages:
          lookup:
            type: cache
            with: {{resource: responses, key: "{{{{ input.question }}}}"}}
          answer:
            type: generate
            needs: [lookup]
            with:
              models: [tier]
              messages: [{{role: user, content: "{{{{ input.question }}}}"}}]
              stream: {str(stream).lower()}
        output:
          reply: "{{{{ stages.answer.output.text }}}}"
          asked_by: "{{{{ input.user_id }}}}"
        """)


@pytest.fixture
def pipelines(tmp_path: Path, stub: StubProvider) -> Path:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "echo.yaml").write_text(pipeline_text(stub))
    (folder / "batch.yaml").write_text(pipeline_text(stub, "batch", stream=False))
    (folder / "slow.yaml").write_text(pipeline_text(stub, "slow", model="slow"))
    return folder


def key_file(folder: Path, **extra: dict[str, Any]) -> Path:
    """alice (tenant acme, every pipeline) and bob (tenant other, only `batch`)."""
    entries: dict[str, dict[str, Any]] = {"alice": {"user": "alice", "tenant": "acme"},
               "bob": {"user": "bob", "tenant": "other", "pipelines": ["batch"]}}
    lines = ["keys:"]
    for who, entry in entries.items():
        entry = {**entry, **extra.get(who, {})}
        lines.append(f"  - sha256: {hash_key(KEYS[who])}")
        lines += [f"    {k}: {v if not isinstance(v, list) else '[' + ', '.join(v) + ']'}"
                  for k, v in entry.items()]
    path = folder / "keys.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Live:
    url: str
    gateway: Gateway

    def headers(self, who: str = "alice", **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEYS[who]}", **extra}


Serve = Callable[..., AbstractAsyncContextManager[Live]]


@pytest.fixture
def serve(pipelines: Path, tmp_path: Path) -> Serve:
    """`async with serve(**options) as live:` a server with these ServeConfig options."""

    @asynccontextmanager
    async def start(**options: Any) -> AsyncIterator[Live]:
        options.setdefault("files", tuple(sorted(pipelines.glob("*.yaml"))))
        if "keys" not in options:
            options["keys"] = key_file(tmp_path)
        options.setdefault("store", tmp_path / "runs")
        config = ServeConfig(port=free_port(), **options)
        gateway = Gateway.build(config)
        server = uvicorn.Server(uvicorn_config(config, create_app(gateway)))
        server.config.log_level = "warning"
        task = asyncio.ensure_future(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        scheme = "https" if config.tls_cert else "http"
        try:
            yield Live(f"{scheme}://127.0.0.1:{config.port}", gateway)
        finally:
            server.should_exit = True
            await task

    return start
