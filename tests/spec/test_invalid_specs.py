"""Every file in `invalid/` fails to load or compile with exactly the diagnostics listed in
its sibling `.expected` file.

`.expected` format, one diagnostic per line, in the order engine reports them:

    <line>:<col> <yaml path> | <message substring> [| <hint substring>]

`-` instead of `<line>:<col>` means "no line"; `-` as the hint means "no hint"; no hint field
means the hint is not checked. `env NAME=value` lines set the environment the file is loaded
with (otherwise it is empty). Lines starting with `#` are comments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.compile import compile_file
from engine.errors import Diagnostic, SpecError, format_path
from engine.registry import Registry

INVALID = Path(__file__).parent / "invalid"
CASES = sorted(INVALID.glob("*.yaml"))


@dataclass
class Expected:
    location: tuple[int, int] | None
    path: str
    message: str
    hint: str | None = None
    check_hint: bool = False


@dataclass
class Case:
    env: dict[str, str] = field(default_factory=dict)
    diagnostics: list[Expected] = field(default_factory=list)


def parse_expected(file: Path) -> Case:
    case = Case()
    for raw in file.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("env "):
            name, _, value = line[4:].partition("=")
            case.env[name] = value
            continue
        where, message, *rest = (part.strip() for part in line.split(" | "))
        position, _, path = where.partition(" ")
        location = None
        if position != "-":
            row, col = position.split(":")
            location = (int(row), int(col))
        expected = Expected(location, path, message)
        if rest:
            expected.check_hint = True
            expected.hint = None if rest[0] == "-" else rest[0]
        case.diagnostics.append(expected)
    assert case.diagnostics, f"{file.name} lists no diagnostics"
    return case


def describe(d: Diagnostic) -> str:
    where = f"{d.line}:{d.column}" if d.line is not None else "-"
    return f"{where} {format_path(d.path)} | {d.message} | {d.hint}"


def matches(actual: Diagnostic, expected: Expected) -> bool:
    location = (actual.line, actual.column) if actual.line is not None else None
    if location != expected.location or format_path(actual.path) != expected.path:
        return False
    if expected.message not in actual.message or actual.severity != "error":
        return False
    if not expected.check_hint:
        return True
    if expected.hint is None:
        return actual.hint is None
    return actual.hint is not None and expected.hint in actual.hint


def test_every_invalid_file_has_expectations() -> None:
    assert len(CASES) >= 25
    for yaml_file in CASES:
        assert yaml_file.with_suffix(".expected").is_file(), yaml_file.name
    for expected_file in INVALID.glob("*.expected"):
        assert expected_file.with_suffix(".yaml").is_file(), expected_file.name


@pytest.mark.parametrize("file", CASES, ids=lambda p: p.stem)
def test_invalid_spec(file: Path, registry: Registry) -> None:
    case = parse_expected(file.with_suffix(".expected"))
    with pytest.raises(SpecError) as info:
        compile_file(file, registry, env=case.env)
    actual = info.value.diagnostics
    report = "\n".join(describe(d) for d in actual)
    assert len(actual) == len(case.diagnostics), f"got:\n{report}"
    for got, expected in zip(actual, case.diagnostics, strict=True):
        assert matches(got, expected), f"expected {expected}\ngot:\n{report}"
        assert got.file == str(file)
    assert str(info.value) == "\n".join(str(d) for d in actual)


@pytest.mark.parametrize("name", ["env_value_not_echoed", "env_value_in_stage_config"])
def test_set_env_values_never_appear_in_diagnostics(name: str, registry: Registry) -> None:
    with pytest.raises(SpecError) as info:
        compile_file(INVALID / f"{name}.yaml", registry, env={"T": "fast-secret"})
    assert info.value.diagnostics
    assert "secret" not in str(info.value)
    for d in info.value.diagnostics:
        assert "secret" not in d.message
        assert "secret" not in (d.hint or "")


def test_a_missing_file_is_one_diagnostic_naming_it(tmp_path: Path, registry: Registry) -> None:
    missing = tmp_path / "nowhere.yaml"
    with pytest.raises(SpecError) as info:
        compile_file(missing, registry, env={})
    [diagnostic] = info.value.diagnostics
    assert diagnostic.file == str(missing)
    assert "no such file" in diagnostic.message
    assert diagnostic.line is None


def test_a_file_that_is_not_utf8_is_a_diagnostic(tmp_path: Path, registry: Registry) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(SpecError) as info:
        compile_file(bad, registry, env={})
    [diagnostic] = info.value.diagnostics
    assert "cannot read the file" in diagnostic.message


def test_the_expected_format_rejects_a_wrong_expectation() -> None:
    """Guards the table itself: a mismatch in any field makes `matches` false."""
    actual = Diagnostic("unknown key 'neds'", "f.yaml", 7, 5, ("stages", "b", "neds"), "x y")
    good = Expected((7, 5), "stages.b.neds", "unknown key", "x", check_hint=True)
    assert matches(actual, good)
    assert not matches(actual, Expected((7, 6), "stages.b.neds", "unknown key"))
    assert not matches(actual, Expected((7, 5), "stages.b", "unknown key"))
    assert not matches(actual, Expected((7, 5), "stages.b.neds", "missing"))
    assert not matches(actual, Expected((7, 5), "stages.b.neds", "unknown", "z", True))
    assert not matches(actual, Expected((7, 5), "stages.b.neds", "unknown", None, True))
