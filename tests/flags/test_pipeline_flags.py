"""`flag()` in pipelines: the `flags:` block, conditions that switch without a restart, the
compiler's checks, unknown flags, and a provider class plugged in by configuration."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType, Reason
from openfeature.provider import AbstractProvider, Metadata

from engine.compile import CompiledPipeline, compile_pipeline
from engine.errors import Diagnostic, SpecError
from engine.registry import Registry
from engine.spec import parse_spec

FILE_BLOCK = """\
flags:
  path: flags.yaml
  refresh: 0s
  targeting_key: "{{ input.user }}"
  attributes: {tenant: "{{ input.tenant }}"}
"""

PIPELINE = "version: 1\nname: flagged\n" + FILE_BLOCK + """\
stages:
  summarize:
    type: template
    if: "flag('summarize')"
    with: {output: "summary of {{ input.text }}"}
  pick:
    type: route
    with:
      routes:
        - {when: "flag('beta')", to: beta}
        - {to: stable}
  beta:
    type: template
    needs: [pick]
    with: {output: "beta"}
  stable:
    type: template
    needs: [pick]
    with: {output: "{{ flag('prompt', 'v1') }}"}
output:
  summary: "{{ stages.summarize.output }}"
  answer: "{{ stages.beta.output or stages.stable.output }}"
"""

FLAGS = """\
flags:
  summarize: false
  beta: {rules: [{tenants: [acme], variant: on}]}
  prompt: {variants: {v1: v1, v2: v2}, default: v2}
"""


def build(tmp_path: Path, registry: Registry, pipeline: str = PIPELINE,
          flags: str | None = FLAGS) -> CompiledPipeline:
    if flags is not None:
        (tmp_path / "flags.yaml").write_text(textwrap.dedent(flags))
    loaded = parse_spec(textwrap.dedent(pipeline), str(tmp_path / "p.yaml"), env={},
                        base_dir=tmp_path)
    return compile_pipeline(loaded, registry, env={})


def problems(tmp_path: Path, registry: Registry, pipeline: str = PIPELINE,
             flags: str | None = FLAGS) -> list[Diagnostic]:
    with pytest.raises(SpecError) as info:
        build(tmp_path, registry, pipeline, flags)
    return info.value.diagnostics


async def output(pipeline: CompiledPipeline, **record: Any) -> Any:
    result = await pipeline.run({"user": "u1", "tenant": "globex", "text": "t", **record})
    assert result.status == "ok", result.error
    return result.output


async def test_flags_switch_a_branch_without_restart(tmp_path: Path, registry: Registry
                                                     ) -> None:
    pipeline = build(tmp_path, registry)
    assert await output(pipeline) == {"summary": None, "answer": "v2"}
    assert await output(pipeline, tenant="acme") == {"summary": None, "answer": "beta"}
    (tmp_path / "flags.yaml").write_text(FLAGS.replace("summarize: false", "summarize: true")
                                         .replace("default: v2", "default: v1"))
    assert await output(pipeline) == {"summary": "summary of t", "answer": "v1"}


def test_a_record_sees_one_value_per_flag(tmp_path: Path, registry: Registry) -> None:
    """An `if:` and a later `when:` of one record never disagree, even across an edit."""
    flags = build(tmp_path, registry).flags
    assert flags is not None
    record = {"user": "u1", "tenant": "acme"}
    first = flags.bind(record)
    assert first.value("beta", False) is True
    (tmp_path / "flags.yaml").write_text("flags: {beta: false}\n")
    assert first.value("beta", False) is True
    assert flags.bind(record).value("beta", False) is False


async def test_targeting_key_and_rollout_through_the_pipeline(tmp_path: Path,
                                                              registry: Registry) -> None:
    pipeline = build(tmp_path, registry, flags="""\
        flags:
          summarize: {rules: [{users: [vip], variant: on}, {rollout: {on: 50}}]}
    """)
    assert (await output(pipeline, user="vip"))["summary"] == "summary of t"
    shares = [(await output(pipeline, user=f"u{i}"))["summary"] is not None
              for i in range(400)]
    assert 0.4 < sum(shares) / 400 < 0.6
    assert shares == [(await output(pipeline, user=f"u{i}"))["summary"] is not None
                      for i in range(400)]
    assert (await output(pipeline, user=None))["summary"] is None  # no key: no rollout


async def test_a_record_without_the_targeting_fields_is_not_failed(
        tmp_path: Path, registry: Registry) -> None:
    pipeline = build(tmp_path, registry)
    result = await pipeline.run({"text": "t"})
    assert result.status == "ok", result.error
    assert result.output == {"summary": None, "answer": "v2"}


async def test_an_unknown_flag_is_its_default_with_one_warning(
        tmp_path: Path, registry: Registry, caplog: pytest.LogCaptureFixture) -> None:
    pipeline = build(tmp_path, registry, flags="flags: {}\n")
    assert any("flag('summarize') is not in flags.yaml" in w.message
               for w in pipeline.warnings)
    with caplog.at_level(logging.WARNING, "engine.flags"):
        for _ in range(3):
            assert await output(pipeline) == {"summary": None, "answer": "v1"}
    summarize = [r for r in caplog.records if "'summarize'" in r.getMessage()]
    assert len(summarize) == 1 and "FLAG_NOT_FOUND" in summarize[0].getMessage()


def test_flag_without_a_flags_block_is_a_compile_error(tmp_path: Path,
                                                      registry: Registry) -> None:
    text = PIPELINE.split("flags:\n", 1)[0] + "stages:" + PIPELINE.split("\nstages:", 1)[1]
    found = problems(tmp_path, registry, text)
    assert [(d.message, d.line) for d in found] == [
        ("flag('summarize') is used, but the pipeline has no `flags:` block", 6),
        ("flag('beta') is used, but the pipeline has no `flags:` block", 12),
        ("flag('prompt') is used, but the pipeline has no `flags:` block", 21),
    ]
    assert all(d.file == str(tmp_path / "p.yaml") and d.hint for d in found)


async def test_a_computed_flag_name_without_flags_fails_the_stage_clearly(
        registry: Registry) -> None:
    loaded = parse_spec(textwrap.dedent("""\
        version: 1
        name: computed
        stages:
          a: {type: template, if: "flag(input.name)", with: {output: 1}}
    """), "p.yaml", env={})
    pipeline = compile_pipeline(loaded, registry, env={})
    result = await pipeline.run({"name": "x"})
    assert result.status == "error"
    assert "flag('x') needs a `flags:` block" in result.error["message"]


def test_a_bad_flags_file_is_a_compile_error_in_that_file(tmp_path: Path,
                                                         registry: Registry) -> None:
    found = problems(tmp_path, registry, flags="flags:\n  summarize:\n    default: maybe\n")
    assert [(d.file, d.line) for d in found] == [(str(tmp_path / "flags.yaml"), 3)]
    assert "unknown variant(s) maybe" in found[0].message


@pytest.mark.parametrize(("block", "path", "message"), [
    ("flags: {path: missing.yaml}", ("flags", "path"), "no flags file at"),
    ("flags: {}", ("flags",), "the file provider needs `path:`"),
    ("flags: {provider: nope}", ("flags",), "is `file` or 'package.module:Name'"),
    ("flags: {provider: 'nowhere.at.all:P'}", ("flags", "provider"),
     "cannot import nowhere.at.all:P: No module named 'nowhere'"),
    ("flags: {provider: 'pathlib:Path'}", ("flags", "provider"),
     "pathlib:Path made a PosixPath, not an OpenFeature provider"),
    ("flags: {path: flags.yaml, targeting_key: '{{ stages.a.output }}'}",
     ("flags", "targeting_key"), "may read `input` and `env` only"),
])
def test_a_wrong_flags_block_is_located(tmp_path: Path, registry: Registry, block: str,
                                        path: tuple[str, ...], message: str) -> None:
    text = f"version: 1\nname: w\n{block}\nstages:\n  a: {{type: template, with: {{output: 1}}}}\n"
    found = problems(tmp_path, registry, text)
    assert [(d.path, d.line) for d in found] == [(path, 3)]
    assert message in found[0].message


class TenantProvider(AbstractProvider):
    """A provider of the kind flagd or LaunchDarkly ship: on for one tenant."""

    def __init__(self, tenant: str) -> None:
        super().__init__()
        self.tenant = tenant

    def get_metadata(self) -> Metadata:
        return Metadata(name="tenant")

    def resolve_boolean_details(self, flag_key: str, default_value: bool,
                                evaluation_context: EvaluationContext | None = None
                                ) -> FlagResolutionDetails[bool]:
        attributes = evaluation_context.attributes if evaluation_context else {}
        return FlagResolutionDetails(attributes.get("tenant") == self.tenant,
                                     reason=Reason.TARGETING_MATCH)

    def resolve_string_details(self, flag_key: str, default_value: str,
                               evaluation_context: EvaluationContext | None = None
                               ) -> FlagResolutionDetails[str]:
        return FlagResolutionDetails(f"{flag_key}:{self.tenant}")

    def resolve_integer_details(self, flag_key: str, default_value: int,
                                evaluation_context: EvaluationContext | None = None
                                ) -> FlagResolutionDetails[int]:
        return FlagResolutionDetails(default_value)

    def resolve_float_details(self, flag_key: str, default_value: float,
                              evaluation_context: EvaluationContext | None = None
                              ) -> FlagResolutionDetails[float]:
        return FlagResolutionDetails(default_value)

    def resolve_object_details(
        self, flag_key: str,
        default_value: Sequence[FlagValueType] | Mapping[str, FlagValueType],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[FlagValueType] | Mapping[str, FlagValueType]]:
        return FlagResolutionDetails(default_value)


class BrokenProvider(TenantProvider):
    def initialize(self, evaluation_context: EvaluationContext) -> None:
        raise ConnectionError("flagd is not reachable on 127.0.0.1:8013")


def tenant_provider(tenant: str) -> TenantProvider:
    """A factory, as LaunchDarkly's provider needs: it takes a client object, not options."""
    return TenantProvider(tenant)


@pytest.mark.parametrize("name", ["TenantProvider", "tenant_provider"])
async def test_a_provider_plugs_in_by_configuration(tmp_path: Path, registry: Registry,
                                                    name: str) -> None:
    block = (f"flags:\n  provider: '{__name__}:{name}'\n"
             "  options: {tenant: acme}\n  attributes: {tenant: '{{ input.tenant }}'}\n")
    pipeline = build(tmp_path, registry, PIPELINE.replace(FILE_BLOCK, block), None)
    assert await output(pipeline, tenant="acme") == {"summary": "summary of t",
                                                     "answer": "beta"}
    assert await output(pipeline) == {"summary": None, "answer": "prompt:acme"}


def test_a_provider_that_cannot_start_is_a_compile_error(tmp_path: Path,
                                                         registry: Registry) -> None:
    block = (f"flags:\n  provider: '{__name__}:BrokenProvider'\n"
             "  options: {tenant: acme}\n")
    found = problems(tmp_path, registry, PIPELINE.replace(FILE_BLOCK, block), None)
    assert [d.path for d in found] == [("flags", "provider")]
    assert "flagd is not reachable" in found[0].message


async def test_a_default_of_another_type_fails_its_stage_saying_which_types(
        tmp_path: Path, registry: Registry) -> None:
    pipeline = build(tmp_path, registry, PIPELINE.replace("flag('prompt', 'v1')",
                                                          "flag('prompt', [1])"))
    result = await pipeline.run({"user": "u1", "tenant": "globex", "text": "t"})
    assert result.status == "error"
    assert "the default must be a bool, str, int or float, not list" in result.error["message"]
