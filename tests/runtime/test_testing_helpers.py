"""`engine.testing`: the sample stages and `compile_text` that users' tests rely on."""

from __future__ import annotations

from typing import Any

import pytest

import engine.testing as testing
from engine.errors import SpecError
from engine.runtime.context import StageContext
from engine.stages.base import Stage, StageConfig
from engine.testing import compile_text, outcomes, sample_registry

HEADER = "version: 1\nname: helpers\n"


def test_public_names_are_sorted_and_exist() -> None:
    assert testing.__all__ == sorted(testing.__all__)
    assert all(hasattr(testing, name) for name in testing.__all__)


def test_registry_holds_builtins_and_samples() -> None:
    names = sample_registry().names()
    assert {"template", "route", "fallback", "sleep", "fail", "hang", "finish"} <= set(names)


class _ShoutConfig(StageConfig):
    text: str


class _Shout(Stage[_ShoutConfig]):
    Config = _ShoutConfig

    async def run(self, ctx: StageContext) -> Any:
        return self.config.text.upper()


async def test_compile_text_accepts_extra_stage_types() -> None:
    pipeline = compile_text(HEADER + "stages:\n  s: {type: shout, with: {text: hey}}\n",
                            {"shout": _Shout})
    assert (await pipeline.run({})).output == "HEY"


async def test_compile_text_resolves_env_from_the_given_mapping_only() -> None:
    text = HEADER + 'stages:\n  s: {type: template, with: {output: "${WHO:-nobody}"}}\n'
    assert (await compile_text(text).run({})).output == "nobody"
    assert (await compile_text(text, env={"WHO": "ann"}).run({})).output == "ann"


async def test_sleep_accepts_durations_and_renders_its_output() -> None:
    pipeline = compile_text(HEADER + """
stages:
  s: {type: sleep, with: {seconds: 5ms, output: {echo: "{{ input.x }}", n: 1}}}
""")
    result = await pipeline.run({"x": [1, 2]})
    assert result.output == {"echo": [1, 2], "n": 1}


async def test_finish_can_mark_a_hand_off() -> None:
    pipeline = compile_text(HEADER + """
stages:
  f: {type: finish, with: {output: bye, handed_off: true}}
""")
    result = await pipeline.run({})
    assert (result.status, result.output, result.handed_off) == ("finished", "bye", True)
    assert outcomes(result) == {"f": "finished"}


def test_finish_is_terminal_so_it_draws_no_unused_output_warning() -> None:
    pipeline = compile_text(HEADER + """
stages:
  a: {type: template, with: {output: A}}
  f: {type: finish, needs: [a], if: "false"}
  b: {type: template, needs: [a], with: {output: B}}
output: "{{ stages.b.output }}"
""")
    assert pipeline.warnings == ()


@pytest.mark.parametrize(
    "stage",
    [
        "{type: sleep, with: {secs: 1}}",  # typo in a key
        "{type: sleep, with: {seconds: soon}}",  # not a duration
        "{type: fail, with: {message: '{{ oops'}}",  # template syntax
        "{type: hang, with: {seconds: 1}}",  # hang takes nothing
        "{type: nap}",  # unknown type
    ],
)
def test_sample_configs_are_validated(stage: str) -> None:
    with pytest.raises(SpecError):
        compile_text(HEADER + f"stages:\n  s: {stage}\n")
