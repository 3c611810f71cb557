"""The safe YAML loader: plain data, the source map, env references, merge keys, limits."""

from __future__ import annotations

import textwrap

import pytest

from engine.errors import SpecError
from engine.spec import load_spec, parse_spec
from engine.spec.loader import MAX_DEPTH, load_text


def load(text: str, env: dict[str, str] | None = None) -> object:
    return load_text(textwrap.dedent(text), "f.yaml", env or {}).data


def errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_text(textwrap.dedent(text), "f.yaml", env or {})
    return [d.message for d in info.value.diagnostics]


MINIMAL = """\
version: 1
name: tiny
stages:
  a: {type: template, with: {output: hi}}
"""


def test_on_as_a_key_stays_the_string_on() -> None:
    data = load("on: push\nyes: 1\noff: [on, yes]\n")
    assert data == {"on": "push", "yes": 1, "off": [True, True]}


def test_scalars_follow_safe_load() -> None:
    data = load("i: 3\nf: 2.5\nb: true\nn: null\ns: '3'\nt: ~\nhex: 0x10\n")
    assert data == {"i": 3, "f": 2.5, "b": True, "n": None, "s": "3", "t": None, "hex": 16}


def test_merge_key_copies_the_anchor_and_local_keys_win() -> None:
    data = load(
        """
        base: &base {model: openai/gpt-4o, timeout: 10s}
        smart:
          <<: *base
          timeout: 30s
        both:
          <<: [*base, {extra: 1}]
        """
    )
    assert data["smart"] == {"model": "openai/gpt-4o", "timeout": "30s"}
    assert data["both"] == {"model": "openai/gpt-4o", "timeout": "10s", "extra": 1}


def test_merge_keys_work_in_a_real_pipeline() -> None:
    text = MINIMAL + textwrap.dedent(
        """\
        models:
          cheap: &tier {model: openai/gpt-3.5-turbo, timeout: 10s}
          smart:
            <<: *tier
            model: openai/gpt-4o
        """
    )
    models = parse_spec(text, env={}).spec.models
    assert models["smart"].model == "openai/gpt-4o"
    assert models["smart"].timeout == 10.0


def test_merging_a_non_mapping_is_an_error() -> None:
    assert errors("x: &a [1]\ny:\n  <<: *a\n") == ["`<<` merges only mappings"]


def test_aliases_expand_to_equal_independent_values() -> None:
    data = load("a: &x {p: [1, 2]}\nb: *x\nc: [*x, *x]\n")
    assert data["b"] == data["c"][0] == {"p": [1, 2]}
    assert data["b"] is not data["a"]


def test_env_reference_default_and_escape() -> None:
    data = load(
        """
        set: ${A}
        inline: "x-${A}-y"
        default: ${MISSING:-fallback}
        empty_default: "[${MISSING:-}]"
        set_wins: ${A:-unused}
        escaped: $${A}
        dollars: "costs $5"
        """,
        env={"A": "alpha"},
    )
    assert data == {
        "set": "alpha",
        "inline": "x-alpha-y",
        "default": "fallback",
        "empty_default": "[]",
        "set_wins": "alpha",
        "escaped": "${A}",
        "dollars": "costs $5",
    }


def test_every_missing_env_var_is_reported_by_name() -> None:
    messages = errors("a: ${ONE}\nb: [\"${TWO}\"]\nc: $${THREE}\n")
    assert messages == [
        "environment variable ONE is not set",
        "environment variable TWO is not set",
    ]


def test_env_vars_are_read_from_the_process_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ENGINE_TEST_NAME", "from-env")
    assert load_text("name: ${ENGINE_TEST_NAME}\n").data == {"name": "from-env"}


def test_env_values_are_not_reparsed_as_yaml_or_env_refs() -> None:
    data = load("a: ${A}\n", env={"A": "[1, 2] ${B}"})
    assert data == {"a": "[1, 2] ${B}"}


def test_source_map_locates_nested_values_and_keys() -> None:
    doc = load_text(
        textwrap.dedent(
            """\
            version: 1
            stages:
              answer:
                type: route
                with:
                  routes:
                    - {when: "input.x", to: human}
                    - to: [answer, other]
            """
        ),
        "f.yaml",
        {},
    )
    where = doc.source.locate
    assert where(("stages",)) == (3, 3)
    assert where(("stages", "answer", "type")) == (4, 11)
    assert where(("stages", "answer", "type"), key=True) == (4, 5)
    assert where(("stages", "answer", "with", "routes", 0)) == (7, 11)
    assert where(("stages", "answer", "with", "routes", 0, "to")) == (7, 33)
    assert where(("stages", "answer", "with", "routes", 1, "to", 1)) == (8, 24)
    # a path the file does not have falls back to the closest enclosing node
    assert where(("stages", "answer", "with", "routes", 1, "when")) == (8, 11)
    assert where(("nope",)) == (1, 1)


def test_source_map_diagnostic_carries_file_and_path() -> None:
    doc = load_text("a:\n  b: 1\n", "p.yaml", {})
    diagnostic = doc.source.diagnostic("bad", ("a", "b"), hint="fix it")
    assert str(diagnostic) == "p.yaml:2:6: error at a.b: bad\n  hint: fix it"


def test_duplicate_keys_in_flow_and_nested_mappings_are_all_reported() -> None:
    with pytest.raises(SpecError) as info:
        load_text("a: {x: 1, x: 2}\nb:\n  c: 1\n  c: 2\n", "f.yaml", {})
    found = [(d.line, d.column, d.path) for d in info.value.diagnostics]
    assert found == [(1, 11, ("a", "x")), (4, 3, ("b", "c"))]
    assert "first defined on line 3" in info.value.diagnostics[1].message


def test_non_string_mapping_keys_are_rejected() -> None:
    assert errors("? [a, b]\n: 1\n") == ["mapping keys must be plain strings"]


def test_explicit_tags_that_do_not_fit_are_errors_not_crashes() -> None:
    assert errors("a: !!int abc\nb: !custom x\nc: !!set {x}\n") == [
        "'abc' is not a valid int",
        "unsupported YAML tag !custom",
        "unsupported YAML tag tag:yaml.org,2002:set",
    ]


def test_nesting_deeper_than_the_limit_is_an_error_not_a_recursion_error() -> None:
    ok = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    assert load(f"a: {ok}\n") is not None
    block = "".join("  " * i + "a:\n" for i in range(MAX_DEPTH + 50)) + "  " * 150 + "1\n"
    assert errors(block) == [f"nested more than {MAX_DEPTH} levels deep; pipelines are far flatter"]


def test_nesting_built_up_through_aliases_is_measured_too() -> None:
    lines = [f"k0: &a0 {'[' * 40}1{']' * 40}"]
    lines += [f"k{i}: &a{i} {'[' * 40}*a{i - 1}{']' * 40}" for i in range(1, 4)]
    assert any("levels deep" in m for m in errors("\n".join(lines) + "\n"))


def test_a_wide_but_honest_alias_use_is_accepted() -> None:
    text = "x: &x {" + ", ".join(f"k{i}: {i}" for i in range(200)) + "}\n"
    text += "refs: [" + ", ".join(["*x"] * 100) + "]\n"
    data = load(text)
    assert len(data["refs"]) == 100


def test_load_spec_reads_a_file_and_keeps_its_folder(tmp_path) -> None:  # type: ignore[no-untyped-def]
    file = tmp_path / "p.yaml"
    file.write_text(MINIMAL, encoding="utf-8")
    loaded = load_spec(file, env={})
    assert loaded.file == str(file)
    assert loaded.base_dir == tmp_path.resolve()
    assert loaded.spec.stages["a"].type == "template"
