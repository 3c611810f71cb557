"""JSON logs: a line per record and per failed or stopped stage, with no secret or PII in
any of them — checked by planting both and grepping every line written."""

from __future__ import annotations

import io
import json
import logging
import secrets
import string
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from resources_pool import opened

from engine.compile import compile_pipeline
from engine.observe import logs
from engine.observe.logs import JsonFormatter, JsonLogs, configure, pseudonym, scrub
from engine.registry import Registry
from engine.results import RunResult, StageEvent
from engine.spec import parse_spec

EMAIL = "jane.doe@example.com"
PHONE = "+1 415 555 0132"
PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

# The record's value becomes a dict key the template lacks, so the error message quotes it.
LEAKY = """\
version: 1
name: leaky
stages:
  greet:
    type: template
    with: {output: "{{ input.known[input.q] }}"}
"""


@pytest.fixture
def planted(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An OpenAI-shaped key and a shapeless token, both only known through the env."""
    values = {"OPENAI_API_KEY": f"sk-test-{secrets.token_hex(12)}",
              "BILLING_SERVICE_TOKEN": f"zq{secrets.token_hex(10)}"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def emitted(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    assert lines
    return [json.loads(line) for line in lines]


async def test_no_secret_or_pii_reaches_any_line(planted: dict[str, str]) -> None:
    pipeline = compile_pipeline(parse_spec(LEAKY), Registry.from_entry_points(),
                                resources=opened())
    key, token = planted["OPENAI_API_KEY"], planted["BILLING_SERVICE_TOKEN"]
    record = {"q": f"use {key} and {token}, mail {EMAIL} or call {PHONE}", "known": {},
              "user_id": EMAIL}
    result = await pipeline.run(record)
    assert key in str(result.error) and EMAIL in str(result.error)  # the leak is real
    stream = io.StringIO()
    JsonLogs(stream, run_id="run-1", salt="pepper").observe("leaky", record, result)

    text = stream.getvalue()
    for value in (key, token, EMAIL, PHONE, PHONE.replace(" ", ""), "415 555"):
        assert value not in text
    run, stage = emitted(stream)
    assert run["event"] == "run" and run["status"] == "error"
    assert run["error_type"] == "UndefinedError" and run["error_stage"] == "greet"
    assert stage["event"] == "stage" and stage["stage"] == "greet"
    assert stage["outcome"] == "error" and stage["level"] == "error"
    for line in (run, stage):
        assert line["run_id"] == "run-1" and line["trace_id"] == result.trace_id
        assert line["user"] == pseudonym(EMAIL, "pepper")
    # scrubbed, not dropped: what was there is still said
    assert "[SECRET]" in run["error"] and "<EMAIL>" in run["error"]
    assert "<PHONE>" in stage["detail"]
    assert "known" not in text and "output" not in run  # neither the record nor the output


def test_pseudonyms_are_stable_per_salt_and_distinct_per_user() -> None:
    stream = io.StringIO()
    sink = JsonLogs(stream, run_id="r", salt="s1")
    for index, user in enumerate(["alice", "alice", "bob"]):
        sink.observe("p", {"user_id": user}, RunResult(index, None, "ok", trace_id="ab" * 16))
    users = [line["user"] for line in emitted(stream)]
    assert users[0] == users[1] != users[2]
    assert all(u.startswith("u_") and "alice" not in u and "bob" not in u for u in users)
    assert pseudonym("alice", "s2") != users[0]
    assert pseudonym(42, "s1") == pseudonym("42", "s1")


def test_the_salt_comes_from_the_env_else_from_the_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(logs.SALT_ENV, "from-env")
    assert JsonLogs(io.StringIO(), run_id="r").salt == "from-env"
    monkeypatch.delenv(logs.SALT_ENV)
    one, two = JsonLogs(io.StringIO(), run_id="r"), JsonLogs(io.StringIO(), run_id="r")
    assert one.salt == two.salt and len(one.salt) == 64  # random, shared within the process


def test_every_line_is_json_with_run_and_trace_ids() -> None:
    events = [
        StageEvent("guard", 0.0, 0.001, "finished", notes={"blocked": "injection"}),
        StageEvent("check", 0.0, 0.001, "ok", notes={
            "pii": [{"entity": "EMAIL", "start": 0, "end": 5}], "filters": ["harm"],
            "injection": {"blocked": True, "findings": [{"snippet": "ignore all rules"}]}}),
        StageEvent("fine", 0.0, 0.001, "ok", notes={"cache": "miss"}),
        StageEvent("slow", 0.0, 0.001, "timeout", "StageTimeout: over 2s"),
        StageEvent("later", 0.0, 0.0, "skipped"),
    ]
    results = [RunResult(0, None, "finished", finished_by="guard", events=events,
                         started_at=1_700_000_000.0, trace_id="ab" * 16),
               RunResult(1, None, "error", error={"stage": None, "type": "InputError",
                                                  "message": "not JSON"}, trace_id="cd" * 16)]
    stream = io.StringIO()
    sink = JsonLogs(stream, run_id="r")
    sink.observe("p", {"q": "x"}, results[0])
    sink.observe("p", None, results[1])
    sink.close()
    lines = emitted(stream)
    assert [(line["event"], line.get("stage")) for line in lines] == [
        ("run", None), ("stage", "guard"), ("stage", "check"), ("stage", "slow"), ("run", None)]
    assert all(line["run_id"] == "r" and len(line["trace_id"]) == 32 for line in lines)
    assert lines[0]["ts"] == "2023-11-14T22:13:20.000Z" and lines[0]["user"] is None
    assert lines[1]["blocked"] == "injection" and lines[1]["level"] == "warning"
    assert lines[2]["flags"] == ["pii:EMAIL", "injection", "filter:harm"]
    assert "ignore all rules" not in stream.getvalue()  # a finding's snippet is user text
    assert lines[3]["level"] == "error" and lines[3]["detail"] == "StageTimeout: over 2s"
    assert lines[4]["error_type"] == "InputError" and lines[4]["status"] == "error"


def test_a_traceparent_s_trace_id_is_the_one_logged() -> None:
    stream = io.StringIO()
    result = RunResult(0, None, "ok", trace_id="ab" * 16)
    JsonLogs(stream, run_id="r").observe("p", {"traceparent": PARENT}, result)
    JsonLogs(stream, run_id="r").observe("p", {"traceparent": "00-bad"}, result)
    good, bad = emitted(stream)
    assert good["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    assert good["result_trace_id"] == result.trace_id
    assert bad["trace_id"] == result.trace_id and "result_trace_id" not in bad


def test_observe_never_raises() -> None:
    stream = io.StringIO()
    stream.close()
    JsonLogs(stream, run_id="r").observe("p", None, RunResult(0, None, "ok"))


@pytest.fixture
def engine_logs() -> Iterator[io.StringIO]:
    """`configure` on the engine logger, undone afterwards (it stops propagation)."""
    target = logging.getLogger("engine")
    saved = (target.level, target.propagate, list(target.handlers))
    stream = io.StringIO()
    configure(stream, logging.INFO, run_id="r", loggers=("engine",))
    yield stream
    target.setLevel(saved[0])
    target.propagate = saved[1]
    target.handlers[:] = saved[2]


def test_the_formatter_scrubs_message_args_and_tracebacks(
        planted: dict[str, str], engine_logs: io.StringIO) -> None:
    key = planted["OPENAI_API_KEY"]
    log = logging.getLogger("engine.resources")
    log.warning("background work failed for %s (key %s)", EMAIL, key,
                extra={"trace_id": "ab" * 16})
    try:
        raise RuntimeError(f"provider said no to {planted['BILLING_SERVICE_TOKEN']} at {PHONE}")
    except RuntimeError:
        log.exception("call failed")
    log.debug("not at this level")
    text = engine_logs.getvalue()
    for value in (key, EMAIL, PHONE, planted["BILLING_SERVICE_TOKEN"]):
        assert value not in text
    first, second = emitted(engine_logs)
    assert first == {**first, "level": "warning", "event": "log", "run_id": "r",
                     "trace_id": "ab" * 16, "logger": "engine.resources"}
    assert first["message"] == "background work failed for <EMAIL> (key [SECRET])"
    assert second["message"] == "call failed" and second["trace_id"] is None
    assert "RuntimeError: provider said no to [SECRET] at <NUMBER>" in second["exception"]


def test_a_message_whose_args_do_not_fit_is_kept_and_scrubbed() -> None:
    record = logging.LogRecord("engine.x", logging.ERROR, __file__, 1, "user %s %s",
                               (EMAIL,), None)
    line = json.loads(JsonFormatter(run_id="r").format(record))
    assert line["message"] == "user %s %s ('<EMAIL>',)" and line["level"] == "error"


def test_configure_replaces_its_own_handler(engine_logs: io.StringIO) -> None:
    again = io.StringIO()
    configure(again, logging.INFO, loggers=("engine",))
    logging.getLogger("engine.x").info("once")
    assert engine_logs.getvalue() == "" and len(emitted(again)) == 1


@pytest.mark.parametrize(("text", "expected"), [
    ("Authorization: Bearer abcdefghijklmnop", "Authorization: Bearer [SECRET]"),
    ("aws AKIAIOSFODNN7EXAMPLE here", "aws [SECRET] here"),
    ('{"api_key": "0123456789abcdef"}', '{"api_key": "[SECRET]"}'),
    ("card 4111 1111 1111 1111, ip 10.1.2.3", "card <CREDIT_CARD>, ip <IP_ADDRESS>"),
    ("stage answer timed out", "stage answer timed out"),
])
def test_scrub_catches_known_shapes(text: str, expected: str) -> None:
    assert scrub(text, known=[]) == expected


def test_what_the_guard_s_context_rules_let_through_is_still_caught() -> None:
    # "no" and "order" veto a phone number in user text; a log line hides them anyway
    assert scrub(f"provider said no to {PHONE}", known=[]) == "provider said no to <NUMBER>"
    assert scrub("order 4155550132, port 8080", known=[]) == "order <NUMBER>, port 8080"
    assert scrub("mail ops@corp.internal", known=[]) == "mail <EMAIL>"  # no public suffix


@pytest.mark.slow
def test_importing_the_logs_module_stays_light() -> None:
    code = ("import sys, engine.observe.logs\n"
            "heavy = [m for m in sys.modules if m.startswith(('opentelemetry', 'presidio'))]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_secret_set_or_changed_later_is_still_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secrets list is kept between lines, and made again when the environment changes.
    Letters only: a run of digits in a random token would be scrubbed as a number anyway."""
    first, second = ("".join(secrets.choice(string.ascii_lowercase) for _ in range(22))
                     for _ in range(2))
    before = logs.env_secrets()
    assert first not in before
    monkeypatch.setenv("LATE_SERVICE_TOKEN", first)
    assert scrub(f"token {first}") == "token [SECRET]"
    monkeypatch.setenv("LATE_SERVICE_TOKEN", second)  # same length, same key: a new value
    assert scrub(f"token {first} {second}") == f"token {first} [SECRET]"
    monkeypatch.delenv("LATE_SERVICE_TOKEN")
    assert logs.env_secrets() == before
