"""The stage registry: a broken plugin is reported by name and breaks nothing else."""

from __future__ import annotations

from typing import Any

import pytest

from engine.cli import main
from engine.compile import compile_pipeline
from engine.errors import PluginError, SpecError
from engine.registry import Registry, StageType
from engine.spec import parse_spec
from engine.stages.base import StageConfig
from engine.stages.template import TemplateStage


def _missing_module() -> Any:
    raise ModuleNotFoundError("No module named 'acme_missing'")


class NotAStage:
    Config = StageConfig

    async def run(self, ctx: object) -> None:
        return None


class SyncRun(TemplateStage):
    def run(self, ctx: object) -> None:  # type: ignore[override]
        return None


def registry() -> Registry:
    return Registry([
        StageType("template", "engine (builtin)", lambda: TemplateStage, builtin=True),
        StageType("acme", "acme-stages 1.2 (acme_missing:Acme)", _missing_module),
        StageType("plain", "plain 0.1 (plain:NotAStage)", lambda: NotAStage),
        StageType("sync", "sync 0.1 (sync:SyncRun)", lambda: SyncRun),
        StageType("twice", "one 1.0 (one:T)", lambda: TemplateStage),
        StageType("twice", "two 2.0 (two:T)", lambda: TemplateStage),
    ])


@pytest.mark.parametrize(("name", "message"), [
    ("acme", "stage type 'acme' from acme-stages 1.2 (acme_missing:Acme) failed to load: "
             "ModuleNotFoundError: No module named 'acme_missing'"),
    ("plain", "stage type 'plain' from plain 0.1 (plain:NotAStage) is not a subclass of "
              "engine.stages.base.Stage"),
    ("sync", "has no `async def run(self, ctx)`"),
    ("twice", "stage type 'twice' is registered more than once: one 1.0 (one:T), two 2.0"),
])
def test_a_broken_stage_type_is_named_with_its_cause(name: str, message: str) -> None:
    found = registry()
    with pytest.raises(PluginError) as caught:
        found.get(name)
    assert message in str(caught.value)
    assert found.get("template") is TemplateStage  # the others still load


async def test_pipelines_not_using_the_broken_plugin_still_compile_and_run() -> None:
    text = "version: 1\nname: ok\nstages:\n  a: {type: template, with: {output: hi}}\n"
    pipeline = compile_pipeline(parse_spec(text), registry())
    assert (await pipeline.run({})).output == "hi"


def test_a_pipeline_using_it_gets_a_located_diagnostic() -> None:
    text = "version: 1\nname: ko\nstages:\n  a: {type: acme}\n"
    with pytest.raises(SpecError) as caught:
        compile_pipeline(parse_spec(text, "p.yaml"), registry())
    [diagnostic] = caught.value.diagnostics
    assert (diagnostic.line, diagnostic.path) == (4, ("stages", "a", "type"))
    assert "acme-stages 1.2" in diagnostic.message
    assert diagnostic.hint == "reinstall or fix the plugin that provides it"


def test_engine_plugins_lists_broken_ones_and_exits_1(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(Registry, "from_entry_points",
                        classmethod(lambda cls, builtin_only=False: registry()))
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["plugins"]) == 1
    out = capsys.readouterr().out
    assert "broken: stage type 'acme'" in out
    template_row = next(line for line in out.splitlines() if " template " in line)
    assert "output*" in template_row
