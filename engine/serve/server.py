"""Running the app under uvicorn: one process, or `--workers N` processes sharing the socket.

One worker serves the `Gateway` built (and checked) by the command. With several, uvicorn
starts N fresh processes; each rebuilds the settings from `ENGINE_SERVE_CONFIG`, compiles
the pipelines once and warms them up (`app_from_env`, a uvicorn app factory). Workers share
nothing in memory: with `--redis` they share rate limits, idempotency keys, breaker state,
budgets and caches; without it each keeps its own. `/metrics` is per worker too: a scrape
is answered by whichever worker takes the connection, with that worker's counts only. For
exact metrics run one worker per replica (the usual setup behind a load balancer or on
Kubernetes) and scale with replicas sharing `--redis`; use `--workers` for CPU, not for
monitoring.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from engine.serve.app import create_app
from engine.serve.config import ENV_VAR, ServeConfig
from engine.serve.gateway import Gateway
from engine.serve.protocol import HeaderTimeoutConfig

__all__ = ["app_from_env", "run", "uvicorn_config"]


def app_from_env() -> Any:
    """A worker's app: the settings the parent left in `ENGINE_SERVE_CONFIG`."""
    config = ServeConfig.model_validate_json(os.environ[ENV_VAR])
    return create_app(Gateway.build(config))


def uvicorn_config(config: ServeConfig, app: Any) -> HeaderTimeoutConfig:
    tls: dict[str, Any] = {}
    if config.tls_cert is not None and config.tls_key is not None:
        tls = {"ssl_certfile": str(config.tls_cert), "ssl_keyfile": str(config.tls_key)}
    return HeaderTimeoutConfig(
        app, header_timeout=config.header_timeout, host=config.host, port=config.port,
        workers=config.workers, factory=isinstance(app, str),
        proxy_headers=False,  # X-Forwarded-For is read by engine.serve.limits, trusted or not
        server_header=False, access_log=False, timeout_keep_alive=config.keep_alive,
        timeout_graceful_shutdown=30, lifespan="on", **tls)


def run(config: ServeConfig, gateway: Gateway) -> None:
    """Serve until interrupted; `gateway` (already compiled) serves when there is one worker.
    With several it was the check of the settings: closed before the workers build their own."""
    if config.workers == 1:
        uvicorn.Server(uvicorn_config(config, create_app(gateway))).run()
        return
    asyncio.run(gateway.close())
    os.environ[ENV_VAR] = config.model_dump_json()
    settings = uvicorn_config(config, "engine.serve.server:app_from_env")
    socket = settings.bind_socket()
    Multiprocess(settings, sockets=[socket]).run()
