"""The file provider's semantics through the OpenFeature SDK: on/off, targeting, rollouts,
reloads, and what a broken file does at load time and later."""

from __future__ import annotations

import logging
import os
import textwrap
from pathlib import Path

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode

from engine.errors import SpecError
from engine.flags.file_provider import FileProvider

FLAGS = """\
flags:
  everyone: true
  nobody: false
  killed: {enabled: false, default: off, rules: [{variant: on}]}
  beta:
    default: off
    rules:
      - {users: [alice, "42"], variant: on}
      - {tenants: [acme], variant: on}
      - {match: {plan: [pro, team], region: eu}, variant: on}
  canary:
    rules: [{rollout: {on: 30}}]
  prompt:
    variants: {a: "prompts/a.j2", b: "prompts/b.j2", c: "prompts/c.j2"}
    default: a
    rules: [{tenants: [acme], rollout: {b: 50, c: 50}}, {rollout: {b: 10}}]
"""


def client_for(path: Path, text: str, refresh: float = 0.0) -> tuple[OpenFeatureClient,
                                                                      FileProvider]:
    path.write_text(textwrap.dedent(text))
    provider = FileProvider(path, refresh)
    api.set_provider_and_wait(provider, f"test:{path}")
    return api.get_client(f"test:{path}"), provider


def on(client: OpenFeatureClient, name: str, key: str | None = None, **attributes: str
       ) -> bool:
    return client.get_boolean_value(name, False, EvaluationContext(key, attributes))


def test_on_off_and_disabled(tmp_path: Path) -> None:
    client, _ = client_for(tmp_path / "f.yaml", FLAGS)
    assert on(client, "everyone") and not on(client, "nobody")
    details = client.get_boolean_details("killed", True, EvaluationContext("u"))
    assert (details.value, details.reason, details.variant) == (False, "DISABLED", "off")


def test_targeting_by_user_tenant_and_attributes(tmp_path: Path) -> None:
    client, _ = client_for(tmp_path / "f.yaml", FLAGS)
    assert on(client, "beta", "alice") and on(client, "beta", "42")
    assert not on(client, "beta", "bob")
    assert on(client, "beta", "bob", tenant="acme")
    assert not on(client, "beta", "bob", tenant="globex")
    assert on(client, "beta", "bob", plan="team", region="eu")
    assert not on(client, "beta", "bob", plan="team", region="us")
    assert not on(client, "beta", "bob", plan="free", region="eu")


def test_rollout_gives_its_share_and_is_sticky(tmp_path: Path) -> None:
    client, _ = client_for(tmp_path / "f.yaml", FLAGS)
    keys = [f"user-{i}" for i in range(10_000)]
    first = [on(client, "canary", key) for key in keys]
    assert 0.28 < sum(first) / len(keys) < 0.32
    assert first == [on(client, "canary", key) for key in keys]
    assert not on(client, "canary")  # no targeting key: rollout rules are skipped


def test_rollout_of_string_variants_with_a_remainder(tmp_path: Path) -> None:
    client, _ = client_for(tmp_path / "f.yaml", FLAGS)

    def prompt(key: str, **attributes: str) -> str:
        return client.get_string_value("prompt", "none", EvaluationContext(key, attributes))

    acme = [prompt(f"u{i}", tenant="acme") for i in range(4000)]
    assert set(acme) == {"prompts/b.j2", "prompts/c.j2"}
    assert 0.46 < acme.count("prompts/b.j2") / len(acme) < 0.54
    others = [prompt(f"u{i}") for i in range(4000)]
    assert 0.08 < others.count("prompts/b.j2") / len(others) < 0.12
    assert set(others) == {"prompts/a.j2", "prompts/b.j2"}


def test_rollouts_of_two_flags_are_independent(tmp_path: Path) -> None:
    client, _ = client_for(tmp_path / "f.yaml", """\
        flags:
          one: {rules: [{rollout: {on: 50}}]}
          two: {rules: [{rollout: {on: 50}}]}
    """)
    both = sum(on(client, "one", f"k{i}") and on(client, "two", f"k{i}") for i in range(4000))
    assert 0.22 < both / 4000 < 0.28


def test_unknown_flag_and_wrong_type_give_the_default(tmp_path: Path) -> None:
    client, _ = client_for(tmp_path / "f.yaml", FLAGS)
    missing = client.get_boolean_details("nope", True)
    assert (missing.value, missing.error_code) == (True, ErrorCode.FLAG_NOT_FOUND)
    mistyped = client.get_boolean_details("prompt", False)
    assert (mistyped.value, mistyped.error_code) == (False, ErrorCode.TYPE_MISMATCH)


def test_an_edit_is_picked_up_and_a_broken_edit_keeps_the_last_good_flags(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "f.yaml"
    client, _ = client_for(path, "flags: {summarize: false}\n")
    assert not on(client, "summarize")
    path.write_text("flags: {summarize: true}\n")
    assert on(client, "summarize")
    with caplog.at_level(logging.WARNING, "engine.flags"):
        path.write_text("flags: {summarize: maybe}\n")
        assert on(client, "summarize")
        assert on(client, "summarize")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"{path}:1:" in warnings[0].getMessage()
    path.unlink()
    assert on(client, "summarize")
    path.write_text("flags: {summarize: false}\n")
    assert not on(client, "summarize")


def test_the_file_is_checked_at_most_every_refresh(tmp_path: Path) -> None:
    now = [0.0]
    path = tmp_path / "f.yaml"
    path.write_text("flags: {summarize: false}\n")
    provider = FileProvider(path, refresh=1.0, clock=lambda: now[0])
    api.set_provider_and_wait(provider, "test:refresh")
    client = api.get_client("test:refresh")
    path.write_text("flags: {summarize: true}\n")
    assert not on(client, "summarize")
    now[0] = 1.0
    assert on(client, "summarize")


def test_a_reload_tells_openfeature_which_flags_changed(tmp_path: Path) -> None:
    from openfeature.event import ProviderEvent

    path = tmp_path / "f.yaml"
    client, _ = client_for(path, "flags: {a: false, b: false}\n")
    seen: list[list[str] | None] = []
    client.add_handler(ProviderEvent.PROVIDER_CONFIGURATION_CHANGED,
                       lambda details: seen.append(details.flags_changed))
    path.write_text("flags: {a: true, b: false, c: true}\n")
    on(client, "a")
    assert seen == [["a", "c"]]


@pytest.mark.parametrize(("text", "line", "message"), [
    ("flags:\n  beta:\n    default: maybe\n", 3, "unknown variant(s) maybe"),
    ("flags:\n  beta:\n    rules:\n      - {rollout: {on: 70, off: 40}}\n", 4,
     "add up to 100 at most"),
    ("flags:\n  beta:\n    rules:\n      - {users: [a]}\n", 4, "either a `variant` or"),
    ("flags:\n  beta: {enabeld: true}\n", 2, "enabeld"),
    ("flags: [a, b\n", 2, "invalid YAML"),
])
def test_a_bad_file_is_an_error_with_its_line(tmp_path: Path, text: str, line: int,
                                              message: str) -> None:
    path = tmp_path / "f.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        FileProvider(path)
    problem = info.value.diagnostics[0]
    assert (problem.file, problem.line) == (str(path), line)
    assert message in str(problem)


def test_json_files_work_too(tmp_path: Path) -> None:
    client, _ = client_for(tmp_path / "f.json", '{"flags": {"beta": {"rules": '
                                                  '[{"users": ["ann"], "variant": "on"}]}}}')
    assert on(client, "beta", "ann") and not on(client, "beta", "bob")
    assert os.path.exists(tmp_path / "f.json")
