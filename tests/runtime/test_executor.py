"""Graph shapes, as a table: each a small pipeline, a record, and what must come out of it.

Every row runs the same way (`test_shape`): compile, run one record, compare the status, the
output (or the error), and the outcome of every stage in the trace. A new executor rule gets
a new row, not a new test function. Timing-sensitive behaviour (deadlines, concurrency,
weighted shares) lives in `test_executor_timing.py`.
"""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass, field
from typing import Any

import pytest

from engine.results import RunResult
from engine.testing import compile_text, outcomes

HEADER = "version: 1\nname: shape\n"


@dataclass(frozen=True)
class Shape:
    id: str
    yaml: str
    outcomes: dict[str, str]
    record: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    output: Any = None
    error: dict[str, Any] | None = None
    """Expected subset of `RunResult.error`; a `message` is matched as a substring."""
    finished_by: str | None = None
    handed_off: bool = False
    details: dict[str, str] = field(default_factory=dict)
    """Expected substrings of some events' `detail` (why a stage was skipped or failed)."""


SHAPES = [
    # --- plain DAGs -------------------------------------------------------------------------
    Shape(
        "single_stage",
        """
        stages:
          only: {type: template, with: {output: "hi {{ input.name }}"}}
        """,
        {"only": "ok"}, record={"name": "ann"}, output="hi ann",
    ),
    Shape(
        "linear_chain",
        """
        stages:
          a: {type: sleep, with: {output: "{{ input.n }}"}}
          b: {type: template, needs: [a], with: {output: "{{ stages.a.output + 1 }}"}}
          c: {type: template, needs: [b], with: {output: "{{ stages.b.output * 10 }}"}}
        output: "{{ stages.c.output }}"
        """,
        {"a": "ok", "b": "ok", "c": "ok"}, record={"n": 1}, output=20,
    ),
    Shape(
        "fan_out",
        """
        stages:
          src: {type: template, with: {output: "{{ input.n }}"}}
          double: {type: sleep, needs: [src], with: {output: "{{ stages.src.output * 2 }}"}}
          triple: {type: sleep, needs: [src], with: {output: "{{ stages.src.output * 3 }}"}}
        """,
        {"src": "ok", "double": "ok", "triple": "ok"}, record={"n": 2},
        output={"double": 4, "triple": 6},
    ),
    Shape(
        "fan_in_join",
        """
        stages:
          left: {type: sleep, with: {seconds: 10ms, output: L}}
          right: {type: sleep, with: {output: R}}
          join:
            type: template
            needs: [left, right]
            with: {output: "{{ stages.left.output }}{{ stages.right.output }}"}
        """,
        {"left": "ok", "right": "ok", "join": "ok"}, output="LR",
    ),
    Shape(
        "diamond",
        """
        stages:
          top: {type: template, with: {output: "{{ input.word }}"}}
          upper: {type: sleep, needs: [top], with: {output: "{{ stages.top.output | upper }}"}}
          size: {type: sleep, needs: [top], with: {output: "{{ stages.top.output | length }}"}}
          bottom:
            type: template
            needs: [upper, size]
            with: {output: {text: "{{ stages.upper.output }}", n: "{{ stages.size.output }}"}}
        """,
        {"top": "ok", "upper": "ok", "size": "ok", "bottom": "ok"}, record={"word": "abc"},
        output={"text": "ABC", "n": 3},
    ),
    # --- routes -----------------------------------------------------------------------------
    Shape(
        "route_selects_one_branch_and_skips_descendants",
        """
        stages:
          pick:
            type: route
            with: {routes: [{when: "input.urgent", to: human}, {to: bot}]}
          human: {type: sleep, needs: [pick], with: {output: H}}
          human_note: {type: template, needs: [human], with: {output: "{{ stages.human.output }}"}}
          bot: {type: sleep, needs: [pick], with: {output: B}}
          bot_note: {type: template, needs: [bot], with: {output: "{{ stages.bot.output }}!"}}
        output: "{{ stages.bot_note.output }}"
        """,
        {"pick": "ok", "human": "skipped", "human_note": "skipped", "bot": "ok",
         "bot_note": "ok"},
        record={"urgent": False}, output="B!",
        details={"human": "not selected by the route", "human_note": "all needs skipped"},
    ),
    Shape(
        "route_first_true_rule_wins",
        """
        stages:
          pick:
            type: route
            with:
              routes:
                - {when: "input.score > 5", to: high}
                - {when: "input.score > 0", to: low}
                - {to: none}
          high: {type: template, needs: [pick], with: {output: high}}
          low: {type: template, needs: [pick], with: {output: low}}
          none: {type: template, needs: [pick], with: {output: none}}
        """,
        {"pick": "ok", "high": "ok", "low": "skipped", "none": "skipped"},
        record={"score": 9}, output="high",
    ),
    Shape(
        "route_rule_selects_several_stages",
        """
        stages:
          pick: {type: route, with: {routes: [{when: "input.both", to: [a, b]}, {to: c}]}}
          a: {type: template, needs: [pick], with: {output: A}}
          b: {type: template, needs: [pick], with: {output: B}}
          c: {type: template, needs: [pick], with: {output: C}}
        """,
        {"pick": "ok", "a": "ok", "b": "ok", "c": "skipped"}, record={"both": True},
        output={"a": "A", "b": "B"},
    ),
    Shape(
        "route_output_is_readable_downstream",
        """
        stages:
          pick: {type: route, with: {routes: [{to: a}]}}
          a: {type: template, needs: [pick], with: {output: "{{ stages.pick.output }}"}}
        """,
        {"pick": "ok", "a": "ok"}, output={"to": ["a"]},
    ),
    Shape(
        "route_matching_no_rule_skips_every_branch",
        """
        stages:
          pick: {type: route, with: {routes: [{when: "input.go", to: a}]}}
          a: {type: template, needs: [pick], with: {output: A}}
        output: "{{ stages.pick.output }}"
        """,
        {"pick": "ok", "a": "skipped"}, record={"go": False}, output={"to": []},
    ),
    Shape(
        "join_after_route_runs_with_the_skipped_side_as_none",
        """
        stages:
          pick: {type: route, with: {routes: [{when: "input.left", to: left}, {to: right}]}}
          left: {type: sleep, needs: [pick], with: {output: L}}
          right: {type: sleep, needs: [pick], with: {output: R}}
          join:
            type: template
            needs: [left, right]
            with:
              output:
                left: "{{ stages.left.output }}"
                right: "{{ stages.right.output }}"
                right_skipped: "{{ stages.right.skipped }}"
                left_skipped: "{{ stages.left.skipped }}"
        """,
        {"pick": "ok", "left": "ok", "right": "skipped", "join": "ok"}, record={"left": True},
        output={"left": "L", "right": None, "right_skipped": True, "left_skipped": False},
    ),
    Shape(
        "fallback_branch_hands_off",
        """
        stages:
          pick: {type: route, with: {routes: [{when: "input.angry", to: human}, {to: answer}]}}
          answer: {type: sleep, needs: [pick], with: {output: "an answer"}}
          human:
            type: fallback
            needs: [pick]
            with: {response: "A specialist will contact you, {{ input.name }}."}
        output: "{{ stages.answer.output }}"
        """,
        {"pick": "ok", "answer": "skipped", "human": "finished"},
        record={"angry": True, "name": "Bo"}, status="finished",
        output="A specialist will contact you, Bo.", finished_by="human", handed_off=True,
    ),
    # --- if: and skip propagation -----------------------------------------------------------
    Shape(
        "if_false_skips_the_stage",
        """
        stages:
          a: {type: template, with: {output: A}}
          b: {type: template, needs: [a], if: "input.n > 10", with: {output: B}}
          c: {type: template, needs: [a], with: {output: C}}
        """,
        {"a": "ok", "b": "skipped", "c": "ok"}, record={"n": 1}, output="C",
        details={"b": "if: false"},
    ),
    Shape(
        "if_true_runs_the_stage",
        """
        stages:
          a: {type: template, with: {output: A}}
          b: {type: template, needs: [a], if: "stages.a.output == 'A'", with: {output: B}}
        """,
        {"a": "ok", "b": "ok"}, output="B",
    ),
    Shape(
        "if_on_a_missing_input_field_is_false",
        """
        stages:
          vip: {type: template, if: "input.vip", with: {output: "red carpet"}}
          plain: {type: template, with: {output: "queue"}}
        """,
        {"vip": "skipped", "plain": "ok"}, output="queue",
    ),
    Shape(
        "stage_needing_only_skipped_stages_is_skipped_transitively",
        """
        stages:
          a: {type: template, if: "false", with: {output: A}}
          b: {type: template, if: "false", with: {output: B}}
          c: {type: template, needs: [a, b], with: {output: C}}
          d: {type: template, needs: [c], with: {output: D}}
          e: {type: template, with: {output: E}}
        """,
        {"a": "skipped", "b": "skipped", "c": "skipped", "d": "skipped", "e": "ok"},
        output="E", details={"c": "all needs skipped", "d": "all needs skipped"},
    ),
    Shape(
        "stage_with_one_need_skipped_still_runs",
        """
        stages:
          a: {type: template, if: "false", with: {output: A}}
          b: {type: template, with: {output: B}}
          c:
            type: template
            needs: [a, b]
            with: {output: "{{ stages.a.output is none }} {{ stages.b.output }}"}
        """,
        {"a": "skipped", "b": "ok", "c": "ok"}, output="True B",
    ),
    Shape(
        "if_that_cannot_be_evaluated_is_the_stages_error",
        """
        stages:
          a: {type: template, with: {output: 1}}
          b: {type: template, needs: [a], if: "stages.a.output > 'x'", with: {output: B}}
        """,
        {"a": "ok", "b": "error"}, status="error",
        error={"stage": "b", "type": "StageError", "message": "evaluating `if:` failed"},
    ),
    # --- Finish -----------------------------------------------------------------------------
    Shape(
        "finish_ends_the_run_before_dependents",
        """
        stages:
          hit: {type: finish, with: {output: "cached {{ input.q }}"}}
          after: {type: template, needs: [hit], with: {output: never}}
        """,
        {"hit": "finished"}, record={"q": "x"}, status="finished", output="cached x",
        finished_by="hit",
    ),
    Shape(
        "finish_cancels_running_siblings",
        """
        stages:
          stuck: {type: hang}
          slow: {type: sleep, with: {seconds: 5s, output: late}}
          hit: {type: finish, with: {output: early}}
        """,
        {"stuck": "cancelled", "slow": "cancelled", "hit": "finished"}, status="finished",
        output="early", finished_by="hit",
    ),
    Shape(
        "finish_mid_graph_cancels_the_other_branch",
        """
        stages:
          start: {type: template, with: {output: go}}
          cache: {type: finish, needs: [start], with: {output: "{{ stages.start.output }}"}}
          model: {type: sleep, needs: [start], with: {seconds: 5s, output: slow}}
          polish: {type: template, needs: [model], with: {output: never}}
        """,
        {"start": "ok", "cache": "finished", "model": "cancelled"}, status="finished",
        output="go", finished_by="cache",
    ),
    # --- errors and on_error ----------------------------------------------------------------
    Shape(
        "failure_is_the_records_error_with_stage_and_message",
        """
        stages:
          a: {type: template, with: {output: A}}
          boom: {type: fail, needs: [a], with: {message: "no luck for {{ input.who }}"}}
          after: {type: template, needs: [boom], with: {output: never}}
        """,
        {"a": "ok", "boom": "error"}, record={"who": "eve"}, status="error",
        error={"stage": "boom", "type": "SampleFailure", "message": "no luck for eve"},
        details={"boom": "SampleFailure: no luck for eve"},
    ),
    Shape(
        "failure_cancels_running_siblings",
        """
        stages:
          stuck: {type: hang}
          boom: {type: fail, with: {after: 10ms, message: bad}}
        """,
        {"stuck": "cancelled", "boom": "error"}, status="error",
        error={"stage": "boom", "type": "SampleFailure", "message": "bad"},
    ),
    Shape(
        "on_error_continue_runs_dependents_with_no_output",
        """
        stages:
          boom: {type: fail, on_error: continue}
          after:
            type: template
            needs: [boom]
            with: {output: "{{ stages.boom.output is none }}/{{ stages.boom.skipped }}"}
        """,
        {"boom": "error", "after": "ok"}, output="True/False",
    ),
    Shape(
        "on_error_continue_on_a_sink_gives_none",
        """
        stages:
          boom: {type: fail, on_error: continue}
          fine: {type: template, with: {output: F}}
        """,
        {"boom": "error", "fine": "ok"}, output={"boom": None, "fine": "F"},
    ),
    Shape(
        "failed_route_with_continue_selects_no_branch",
        """
        stages:
          pick:
            type: route
            on_error: continue
            with: {routes: [{when: "1 // input.zero > 0", to: a}, {to: b}]}
          a: {type: template, needs: [pick], with: {output: A}}
          b: {type: template, needs: [pick], with: {output: B}}
        """,
        {"pick": "error", "a": "skipped", "b": "skipped"}, record={"zero": 0}, output={},
        details={"a": "not selected", "b": "not selected"},
    ),
    Shape(
        "on_error_handler_output_stands_in",
        """
        stages:
          boom: {type: fail, on_error: spare}
          spare: {type: template, with: {output: "spare part"}}
          after: {type: template, needs: [boom], with: {output: "got {{ stages.boom.output }}"}}
        """,
        {"boom": "recovered", "spare": "ok", "after": "ok"}, output="got spare part",
        details={"boom": "SampleFailure"},
    ),
    Shape(
        "on_error_handler_with_needs_runs_once_in_place",
        """
        stages:
          src: {type: template, with: {output: "{{ input.n }}"}}
          boom: {type: fail, needs: [src], on_error: spare}
          spare: {type: template, needs: [src], with: {output: "{{ stages.src.output }}?"}}
        output: "{{ stages.boom.output }}"
        """,
        {"src": "ok", "boom": "recovered", "spare": "ok"}, record={"n": 7}, output="7?",
    ),
    Shape(
        "on_error_handler_does_not_run_when_the_stage_succeeds",
        """
        stages:
          src: {type: template, with: {output: S}}
          fine: {type: template, needs: [src], on_error: human, with: {output: S}}
          human: {type: fallback, needs: [src], with: {response: "sorry"}}
        output: "{{ stages.fine.output }}"
        """,
        {"src": "ok", "fine": "ok"}, output="S",
    ),
    Shape(
        "on_error_handler_that_finishes_finishes_the_run",
        """
        stages:
          boom: {type: fail, on_error: human}
          human: {type: fallback, with: {response: "a human will call"}}
          after: {type: template, needs: [boom], with: {output: never}}
        """,
        {"boom": "recovered", "human": "finished"}, status="finished",
        output="a human will call", finished_by="human", handed_off=True,
    ),
    Shape(
        "on_error_handler_that_fails_is_the_error",
        """
        stages:
          boom: {type: fail, on_error: spare, with: {message: first}}
          spare: {type: fail, with: {message: second}}
        """,
        {"boom": "recovered", "spare": "error"}, status="error",
        error={"stage": "spare", "type": "SampleFailure", "message": "second"},
    ),
    # --- stage timeouts ---------------------------------------------------------------------
    Shape(
        "stage_timeout_is_an_error_with_outcome_timeout",
        """
        stages:
          stuck: {type: hang, timeout: 50ms}
        """,
        {"stuck": "timeout"}, status="error",
        error={"stage": "stuck", "type": "StageTimeout", "message": "0.05s timeout"},
    ),
    Shape(
        "stage_timeout_with_on_error_continue",
        """
        stages:
          stuck: {type: hang, timeout: 50ms, on_error: continue}
          after: {type: template, needs: [stuck], with: {output: "{{ stages.stuck.output }}"}}
        """,
        {"stuck": "timeout", "after": "ok"}, output=None,
    ),
    Shape(
        "stage_timeout_with_a_handler",
        """
        stages:
          stuck: {type: sleep, timeout: 50ms, on_error: quick, with: {seconds: 5s}}
          quick: {type: template, with: {output: quick}}
        output: "{{ stages.stuck.output }}"
        """,
        {"stuck": "recovered", "quick": "ok"}, output="quick",
        details={"stuck": "StageTimeout"},
    ),
    Shape(
        "stage_within_its_timeout_is_fine",
        """
        stages:
          quick: {type: sleep, timeout: 5s, with: {seconds: 10ms, output: done}}
        """,
        {"quick": "ok"}, output="done",
    ),
    # --- the run's output -------------------------------------------------------------------
    Shape(
        "default_output_is_the_single_sinks_output",
        """
        stages:
          a: {type: template, with: {output: A}}
          b: {type: template, needs: [a], with: {output: {value: "{{ stages.a.output }}"}}}
        """,
        {"a": "ok", "b": "ok"}, output={"value": "A"},
    ),
    Shape(
        "default_output_maps_several_sinks_by_name",
        """
        stages:
          a: {type: template, with: {output: A}}
          b: {type: template, with: {output: B}}
          c: {type: template, needs: [a], with: {output: C}}
        """,
        {"a": "ok", "b": "ok", "c": "ok"}, output={"b": "B", "c": "C"},
    ),
    Shape(
        # Skipped sinks are left out; when one sink is left it is the output on its own, so a
        # route between two answer branches yields the chosen answer, not a mapping.
        "default_output_leaves_out_skipped_sinks",
        """
        stages:
          pick: {type: route, with: {routes: [{when: "input.a", to: a}, {to: b}]}}
          a: {type: template, needs: [pick], with: {output: A}}
          b: {type: template, needs: [pick], with: {output: B}}
        """,
        {"pick": "ok", "a": "skipped", "b": "ok"}, record={"a": False}, output="B",
    ),
    Shape(
        "output_template_builds_a_mapping",
        """
        stages:
          a: {type: template, with: {output: "{{ input.n * 2 }}"}}
        output: {doubled: "{{ stages.a.output }}", text: "n={{ input.n }}", fixed: 1}
        """,
        {"a": "ok"}, record={"n": 4}, output={"doubled": 8, "text": "n=4", "fixed": 1},
    ),
    Shape(
        "output_render_error_is_the_records_error",
        """
        stages:
          a: {type: template, with: {output: {}}}
        output: "{{ stages.a.output.missing.deeper }}"
        """,
        {"a": "ok"}, status="error",
        error={"stage": None, "message": "rendering `output` failed"},
    ),
    Shape(
        "stage_render_error_is_that_stages_error",
        """
        stages:
          a: {type: template, with: {output: "{{ input.nope.deeper }}"}}
        """,
        {"a": "error"}, status="error", error={"stage": "a", "type": "UndefinedError"},
    ),
]


def _check(result: RunResult, shape: Shape) -> None:
    assert outcomes(result) == shape.outcomes
    assert len({e.stage for e in result.events}) == len(result.events), "one event per stage"
    for stage, text in shape.details.items():
        (event,) = [e for e in result.events if e.stage == stage]
        assert event.detail is not None and text in event.detail
    assert result.status == shape.status, result.error
    if shape.status == "error":
        assert result.error is not None and shape.error is not None
        expected = dict(shape.error)
        message = expected.pop("message", None)
        assert {k: result.error[k] for k in expected} == expected
        assert message is None or message in result.error["message"]
        assert result.output is None
    else:
        assert result.error is None
        assert result.output == shape.output
    assert result.finished_by == shape.finished_by
    assert result.handed_off is shape.handed_off


@pytest.mark.parametrize("shape", SHAPES, ids=[s.id for s in SHAPES])
async def test_shape(shape: Shape) -> None:
    pipeline = compile_text(HEADER + textwrap.dedent(shape.yaml))
    result = await pipeline.run(shape.record, index=3, record_id="r-3")
    assert (result.index, result.id) == (3, "r-3")
    _check(result, shape)
    result.to_json()  # every result must serialise, errors included


CHAINS = [shape for shape in SHAPES if compile_text(HEADER + textwrap.dedent(shape.yaml)).chain]


def test_linear_shapes_take_the_chain_fast_path() -> None:
    ids = {shape.id for shape in CHAINS}
    assert {"single_stage", "linear_chain"} <= ids
    assert "fan_out" not in ids


@pytest.mark.parametrize("shape", CHAINS, ids=lambda s: s.id)
async def test_chain_fast_path_agrees_with_the_general_path(shape: Shape) -> None:
    pipeline = compile_text(HEADER + textwrap.dedent(shape.yaml))
    general = dataclasses.replace(pipeline, chain=())
    result = await general.run(shape.record, index=3, record_id="r-3")
    _check(result, shape)


def test_table_ids_are_unique() -> None:
    ids = [s.id for s in SHAPES]
    assert len(ids) == len(set(ids))


async def test_one_handler_can_stand_in_for_two_stages_failing_together() -> None:
    pipeline = compile_text(HEADER + textwrap.dedent("""
        stages:
          one: {type: fail, on_error: spare}
          two: {type: fail, on_error: spare}
          spare: {type: sleep, with: {seconds: 20ms, output: "spare"}}
        """))
    result = await pipeline.run({})
    assert result.status == "ok"
    assert result.output == {"one": "spare", "two": "spare"}
    assert sorted((e.stage, e.outcome) for e in result.events) == [
        ("one", "recovered"), ("spare", "ok"), ("spare", "ok"), ("two", "recovered"),
    ]
