"""`opened(...)`: a `Resources` that is closed when the test ends (its connections to a stub
or a Redis that the test also stops, and its background stores). A pytest plugin module,
enabled in tests/conftest.py like `redis_server`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from engine.resources import Resources

_OPENED: list[Resources] = []


def opened(**kwargs: Any) -> Resources:
    resources = Resources(**kwargs)
    _OPENED.append(resources)
    return resources


@pytest.fixture(autouse=True)
async def _close_opened_resources() -> AsyncIterator[None]:
    yield
    while _OPENED:
        await _OPENED.pop().aclose()
