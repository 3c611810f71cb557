"""A local alert receiver for tests of webhooks (budgets, canary): `webhook` yields its URL
on 127.0.0.1 and the list of JSON bodies POSTed to it.

Enabled with `pytest_plugins` in tests/conftest.py, like redis_server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

__all__ = ["webhook"]


@pytest.fixture
async def webhook() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    posted: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        posted.append(await request.json())
        return web.Response()

    app = web.Application()
    app.router.add_post("/alert", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/alert", posted
    finally:
        await runner.cleanup()
