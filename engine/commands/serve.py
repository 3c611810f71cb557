"""`engine serve`: check the settings and every pipeline, then serve until interrupted.

A pipeline that does not compile stops start-up with the diagnostics `engine validate`
prints (exit code 2), before any port is bound. Without API keys (`--keys` or
`ENGINE_API_KEYS`) the server only starts on a loopback address, or with `--no-auth`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from engine.commands import EXIT_BAD_SPEC, EXIT_OK, print_diagnostics, stderr
from engine.errors import SpecError
from engine.serve.config import ConfigError, ServeConfig


def expand(paths: list[Path]) -> tuple[Path, ...]:
    """Files as given; a folder stands for its *.yaml and *.yml files."""
    files: list[Path] = []
    for path in paths:
        files += sorted([*path.glob("*.yaml"), *path.glob("*.yml")]) if path.is_dir() else [path]
    return tuple(files)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(config: ServeConfig) -> int:
    err = stderr()
    from engine.audit import AuditError
    from engine.serve.gateway import Gateway
    from engine.serve.server import run

    try:
        config.check()
        if not config.files:
            raise ConfigError("no pipeline files: give files or a folder holding *.yaml")
        gateway = Gateway.build(config, serving=config.workers == 1)
        if not gateway.keys and not config.no_auth and not _loopback(config.host):
            raise ConfigError(f"no API keys (--keys or $ENGINE_API_KEYS) while listening on "
                              f"{config.host}: anyone could call; add keys, or --no-auth")
    except (ConfigError, AuditError) as exc:
        err.print(f"error: {exc}", style="red", markup=False)
        return EXIT_BAD_SPEC
    except SpecError as exc:
        print_diagnostics(err, exc.diagnostics)
        return EXIT_BAD_SPEC
    for served in gateway.served.values():
        print_diagnostics(err, served.pipeline.warnings)
        if served.chat.problem:
            err.print(f"warning: {served.chat.problem}", style="yellow", markup=False)
    names = ", ".join(sorted(gateway.served))
    scheme = "https" if config.tls_cert else "http"
    err.print(f"serving {names} on {scheme}://{config.host}:{config.port}/v1 "
              f"({config.workers} worker(s), keys: {len(gateway.keys) or 'none'})", markup=False)
    run(config, gateway)
    return EXIT_OK
