"""What the serve tests share besides fixtures (they live in conftest.py): the API keys, the
pipelines and key files served, a free port, and the handle of a live server. A module of
its own: a test importing `conftest` by name gets whichever conftest was imported first."""

from __future__ import annotations

import socket
import textwrap
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.providers.stub import StubProvider
from engine.serve import Gateway
from engine.serve.keys import hash_key

KEYS = {"alice": "sk-alice-0123456789", "bob": "sk-bob-0123456789"}


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
