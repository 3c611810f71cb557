"""`engine stub-provider`: serve the chaos stub provider on 127.0.0.1 until Ctrl-C.

Flags override the global part of `--config` (a YAML `StubConfig`); per-model profiles come
from the file only. Each request is logged to stderr as one line unless `--quiet`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import yaml
from pydantic import ValidationError

from engine.commands import EXIT_BAD_SPEC, EXIT_OK, stderr, stdout
from engine.providers.stub import RecordedRequest, StubProvider
from engine.providers.stub_config import StubConfig, parse_faults
from engine.spec.types import parse_duration


def stub_provider(
    port: int,
    config_path: Path | None,
    latency: str | None,
    failure_rate: float | None,
    faults: str | None,
    seed: int | None,
    quiet: bool = False,
) -> int:
    err = stderr()
    try:
        config = _config(config_path, latency, failure_rate, faults, seed)
    except (OSError, yaml.YAMLError, ValueError) as exc:  # ValidationError is a ValueError
        detail = str(exc) if not isinstance(exc, ValidationError) else _errors(exc)
        err.print(f"error: {detail}", style="red", markup=False)
        return EXIT_BAD_SPEC
    if faults and not config.failure_rate:
        err.print("note: --faults without --failure-rate injects nothing (failure rate 0)",
                  style="yellow", markup=False)
    try:
        asyncio.run(_serve(config, port, quiet))
    except KeyboardInterrupt:
        err.print("stub provider stopped", markup=False)
        return EXIT_OK
    except OSError as exc:  # port in use, ...
        err.print(f"error: cannot listen on 127.0.0.1:{port}: {exc}", style="red", markup=False)
        return EXIT_BAD_SPEC
    return EXIT_OK


def _config(
    path: Path | None, latency: str | None, failure_rate: float | None, faults: str | None,
    seed: int | None,
) -> StubConfig:
    config = StubConfig.from_yaml(path) if path is not None else StubConfig()
    data = config.model_dump(exclude_unset=True)
    if latency is not None:
        data["latency"] = latency if ".." in latency else parse_duration(latency)
    if failure_rate is not None:
        data["failure_rate"] = failure_rate
    if faults is not None:
        data["faults"] = parse_faults(faults)
    if seed is not None:
        data["seed"] = seed
    return StubConfig.model_validate(data)


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'config'}: {error['msg']}"
        for error in exc.errors()
    )


async def _serve(config: StubConfig, port: int, quiet: bool) -> None:
    err = stderr()

    def log(request: RecordedRequest) -> None:
        stamp = time.strftime("%H:%M:%S", time.localtime(request.time))
        stream = " stream" if request.stream else ""
        err.print(f"{stamp} {request.model or '?'}{stream} → {request.outcome}", markup=False)

    stub = StubProvider(config, port=port, on_request=None if quiet else log)
    await stub.start()
    try:
        out = stdout()
        url = stub.base_url
        out.print(f"stub provider listening on {url}  (Ctrl-C to stop)", markup=False)
        out.print("point a pipeline at it:", markup=False)
        out.print(f"  models: {{x: {{model: openai/x, api_base: {url}, api_key: stub}}}}",
                  markup=False)
        out.print(f"behaviour: {config.describe()}", markup=False)
        for name, profile in config.models.items():
            out.print(f"  model {name}: {config.profile_for(name).describe()}"
                      f" (sets {', '.join(sorted(profile.model_fields_set))})", markup=False)
        if config.rules:
            out.print(f"  {len(config.rules)} reply rule(s); otherwise echo", markup=False)
        await asyncio.Event().wait()
    finally:
        await stub.stop()
