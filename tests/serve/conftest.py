"""A live `engine serve` app on 127.0.0.1 (uvicorn in the test's event loop) in front of the
chaos stub provider, and the pipelines and key files the tests serve."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from serve_helpers import Live, Serve, free_port, key_file, pipeline_text

from engine.providers.stub import StubProvider
from engine.providers.stub_config import FaultProfile, StubConfig
from engine.serve import Gateway, ServeConfig, create_app
from engine.serve.server import uvicorn_config


@pytest.fixture
async def stub() -> AsyncIterator[StubProvider]:
    config = StubConfig(seed=1, models={"slow": FaultProfile(latency=0.4)})
    async with StubProvider(config) as provider:
        yield provider


@pytest.fixture
def pipelines(tmp_path: Path, stub: StubProvider) -> Path:
    folder = tmp_path / "pipelines"
    folder.mkdir()
    (folder / "echo.yaml").write_text(pipeline_text(stub))
    (folder / "batch.yaml").write_text(pipeline_text(stub, "batch", stream=False))
    (folder / "slow.yaml").write_text(pipeline_text(stub, "slow", model="slow"))
    return folder


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
