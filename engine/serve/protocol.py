"""The header timeout uvicorn lacks: a connection whose request headers are not complete
within `--header-timeout` seconds gets 408 and is closed (slowloris: many connections each
sending a header byte now and then, holding sockets forever).

The clock starts when the connection opens and again when each response is complete, so the
headers of every request on a kept-alive connection must arrive in time (uvicorn's own
keep-alive timer stops at the first byte of the next request, which a slow client sends at
once). The value travels on uvicorn's `Config` (`HeaderTimeoutConfig`), which workers receive
pickled.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn import Config
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["HeaderTimeoutConfig", "HeaderTimeoutProtocol"]

_LATE = b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


class HeaderTimeoutConfig(Config):
    def __init__(self, app: Any, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, http=HeaderTimeoutProtocol, **kwargs)
        self.header_timeout = header_timeout


class HeaderTimeoutProtocol(H11Protocol):
    _timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_clock()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._start_clock()

    def _start_clock(self) -> None:
        timeout = getattr(self.config, "header_timeout", None)
        if self._timer is not None:
            self._timer.cancel()
        if timeout:
            self._timer = self.loop.call_later(timeout, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)

    def _headers_late(self) -> None:
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.write(_LATE)
            self.transport.close()
