"""`engine cache clear|stats` on a pipeline whose cache is shared through Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from engine.cli import main
from engine.compile import compile_file


def pipeline(tmp_path: Path, backend: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(f"""\
version: 1
name: cli-cache
resources:
  responses: {{type: cache, backend: "{backend}"}}
stages:
  lookup:
    type: cache
    with: {{resource: responses, key: "{{{{ input.q }}}}", scope: ["{{{{ input.t }}}}"]}}
  answer: {{type: template, needs: [lookup], with: {{output: "a {{{{ input.q }}}}"}}}}
output: "{{{{ stages.answer.output }}}}"
""")
    return path


async def fill(path: Path) -> None:
    compiled = compile_file(path)
    for q, t in [("one", "acme"), ("two", "acme"), ("three", "globex")]:
        await compiled.run({"q": q, "t": t})
    await compiled.resources.aclose()


def test_clear_by_scope_then_all(tmp_path: Path, redis_url: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = pipeline(tmp_path, redis_url)
    asyncio.run(fill(path))  # the CLI runs its own event loop, so this test has none
    assert main(["cache", "stats", str(path)]) == 0
    assert "entries 3" in capsys.readouterr().out
    assert main(["cache", "clear", str(path), "--scope", "acme"]) == 0
    assert "responses: 2 entries removed" in capsys.readouterr().out
    assert main(["cache", "clear", str(path)]) == 0
    assert "responses: 1 entries removed" in capsys.readouterr().out


def test_a_memory_cache_says_where_it_lives(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "clear", str(pipeline(tmp_path, "memory"))]) == 0
    assert "lives in the serving process" in capsys.readouterr().out


def test_an_unreachable_redis_is_reported(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cache", "clear", str(pipeline(tmp_path, "redis://127.0.0.1:1/0"))]) == 1
    assert "responses:" in capsys.readouterr().err
