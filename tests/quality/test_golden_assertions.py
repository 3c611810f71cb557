"""`engine test`: every assertion type passes on a run that meets it, and a failing one of each
type makes the command exit 1 naming the case."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from golden_helpers import engine_test, use_samples, write

from engine.providers.stub import StubProvider
from engine.providers.stub_config import Rule, StubConfig

PASSING = {
    "equals": "{path: output.category, equals: billing}",
    "one_of": "{path: output.category, one_of: [billing, technical]}",
    "contains": "{path: output.reply, contains: refunded}",
    "regex": "{path: output.reply, regex: '^We have .* charge\\.$'}",
    "json_schema": "{path: output, json_schema: {type: object, required: [reply]}}",
    "superset_of": "{path: output.themes, superset_of: [double charge]}",
    "subset_of": "{path: output.actions, subset_of: [refund, apologize]}",
    "min_count": "{path: output.actions, min_count: 1}",
    "max_count": "{path: output.themes, max_count: 2}",
    "similar_to": "{path: output.reply, similar_to: 'The duplicate charge was refunded.', "
                  "threshold: 0.8}",
    "cost": "{cost_usd: {max: 0.01}}",
    "latency": "{latency: {max: 5s}}",
    "finished_by": "{finished_by: null}",
    "route": "{route: {equals: [wait, pick, answer]}}",
}
FAILING = {
    "equals": "{path: output.category, equals: technical}",
    "one_of": "{path: output.category, one_of: [general, technical]}",
    "contains": "{path: output.reply, contains: sorry}",
    "regex": "{path: output.reply, regex: '^Sorry'}",
    "json_schema": "{path: output, json_schema: {type: object, required: [ticket_id]}}",
    "superset_of": "{path: output.themes, superset_of: [double charge, outage]}",
    "subset_of": "{path: output.themes, subset_of: [refund]}",
    "min_count": "{path: output.actions, min_count: 2}",
    "max_count": "{path: output.themes, max_count: 1}",
    "similar_to": "{path: output.reply, similar_to: 'Your Dock ships tomorrow.', threshold: 0.8}",
    "cost": "{cost_usd: {min: 0.5}}",
    "latency": "{latency: {max: 1ms}}",
    "finished_by": "{finished_by: escalate}",
    "route": "{route: {contains: escalate}}",
}


def dataset(assertion: str) -> str:
    return f"""\
pipeline: p.yaml
cases:
  - name: good
    input: {{ticket: "charged twice"}}
    expect: [{{path: output.category, equals: billing}}]
  - name: checked
    input: {{ticket: "charged twice"}}
    expect:
      - {assertion}
"""


@pytest.fixture(autouse=True)
def samples(monkeypatch: pytest.MonkeyPatch) -> None:
    use_samples(monkeypatch)


def test_every_assertion_type_passes_when_met(tmp_path: Path) -> None:
    items = "\n".join(f"      - {assertion}" for assertion in PASSING.values())
    path = write(tmp_path, f"pipeline: p.yaml\ncases:\n  - name: all\n    input: "
                           f"{{ticket: hi}}\n    expect:\n{items}\n")
    code, report = engine_test(path)
    assert report["cases"][0]["failures"] == []
    assert code == 0


@pytest.mark.parametrize("kind", sorted(FAILING))
def test_a_failing_assertion_of_each_type_fails_the_run_and_names_the_case(
        kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = engine_test(write(tmp_path, dataset(FAILING[kind])))
    assert code == 1
    assert "failed: checked" in capsys.readouterr().err
    good, checked = report["cases"]
    assert good["passed"] and not checked["passed"]
    [failure] = checked["failures"]
    assert failure["line"] == 9  # the assertion's own line in the file


def test_a_route_assertion_on_the_stage_that_finished_the_run(tmp_path: Path) -> None:
    path = write(tmp_path, """\
pipeline: p.yaml
cases:
  - {name: urgent, input: {ticket: urgent!}, expect: [{finished_by: escalate},
     {path: handed_off, equals: true}, {path: stages.answer, equals: skipped},
     {path: output.category, equals: urgent}]}
""")
    assert engine_test(path)[0] == 0


def test_a_run_that_errors_fails_its_case_unless_the_case_expects_it(tmp_path: Path) -> None:
    path = write(tmp_path, """\
pipeline: p.yaml
cases:
  - {name: no-ticket, input: {text: hi}}
  - {name: expected-error, input: {text: hi}, expect: [{path: error.type, equals: InvalidInput}]}
""")
    code, report = engine_test(path)
    assert code == 1
    failing, expected = report["cases"]
    assert "InvalidInput" in failing["failures"][0]["message"] and expected["passed"]


def test_the_pass_rate_threshold_decides_the_exit_code(tmp_path: Path) -> None:
    path = write(tmp_path, dataset(FAILING["equals"]))
    assert engine_test(path, "--min-pass-rate", "0.5")[0] == 0
    assert engine_test(path, "--min-pass-rate", "0.51")[0] == 1


def test_junit_xml_has_one_testcase_per_case_and_the_failed_assertion(tmp_path: Path) -> None:
    path = write(tmp_path, dataset(FAILING["equals"]))
    junit = tmp_path / "out.xml"
    assert engine_test(path, "--junit", str(junit))[0] == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "1", "0")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert cases["good"].find("failure") is None
    failure = cases["checked"].find("failure")
    assert failure is not None
    assert failure.get("message") == 'output.category equals "technical": got "billing"'


JUDGED = """\
version: 1
name: judged
models:
  judge: {{model: openai/judge, api_base: "{base}", api_key: stub}}
input:
  schema: {{type: object, properties: {{ticket: {{type: string}}}}}}
stages:
  answer:
    type: template
    with: {{output: {{reply: "{{{{ input.ticket }}}}"}}}}
output: "{{{{ stages.answer.output }}}}"
"""
RUBRIC = """\
pipeline: p.yaml
cases:
  - name: polite
    input: {ticket: "We have refunded you, sorry for the trouble."}
    expect: [{path: output.reply, rubric: "is polite and mentions a refund", model: judge}]
  - name: rude
    input: {ticket: "Go away."}
    expect: [{path: output.reply, rubric: "is polite and mentions a refund", model: judge}]
"""


def test_a_rubric_is_graded_by_a_model_tier_with_a_json_verdict(tmp_path: Path) -> None:
    config = StubConfig(rules=[
        Rule(match="Go away", reply='{"pass": false, "reason": "it is rude"}'),
        Rule(match="refunded", reply='Sure: {"pass": true, "reason": "polite, refund"}')])
    with StubProvider(config) as stub:
        path = write(tmp_path, RUBRIC, JUDGED.format(base=stub.base_url))
        code, report = engine_test(path)
        graded = [request.messages[0]["content"] for request in stub.requests]
    assert code == 1
    polite, rude = report["cases"]
    assert polite["passed"] and not rude["passed"]
    assert rude["failures"][0]["message"] == "the judge (judge) says: it is rude"
    assert len(graded) == 2 and all('"pass"' in prompt for prompt in graded)


def test_a_judge_reply_without_a_verdict_fails_the_case(tmp_path: Path) -> None:
    with StubProvider(StubConfig(rules=[Rule(match=".", reply="Looks fine to me!")])) as stub:
        path = write(tmp_path, RUBRIC, JUDGED.format(base=stub.base_url))
        code, report = engine_test(path)
    assert code == 1
    assert report["cases"][0]["failures"][0]["message"].startswith("no verdict: every tier "
                                                                  "failed (judge #1: invalid")


def test_a_rubric_without_a_model_is_a_usage_error(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, RUBRIC.replace(", model: judge", ""), JUDGED.format(base="x"))
    assert engine_test(path)[0] == 2
    assert "golden.yaml:5: case 'polite': a rubric needs a model" in capsys.readouterr().err
    assert engine_test(path, "--judge", "nope")[0] == 2
    assert "unknown model tier 'nope'" in capsys.readouterr().err


def test_an_assertion_that_cannot_be_checked_fails_its_case_not_the_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = engine_test(write(tmp_path, dataset("{path: output, contains: [category]}")))
    assert code == 1 and "Traceback" not in capsys.readouterr().err
    good, checked = report["cases"]
    assert good["passed"] and not checked["passed"]
