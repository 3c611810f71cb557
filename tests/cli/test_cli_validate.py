"""`engine validate`, `graph`, `plugins`, `schema` through `main(argv)`: exit codes and output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main

ROOT = Path(__file__).resolve().parents[2]
FLAGSHIP = ROOT / "pipelines" / "support_triage.yaml"

CYCLE = """\
version: 1
name: knot
stages:
  a: {type: template, needs: [b], with: {output: x}}
  b: {type: template, needs: [a], with: {output: y}}
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_valid_pipeline_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(FLAGSHIP)]) == 0
    assert f"ok {FLAGSHIP}: 14 stages" in capsys.readouterr().out


def test_invalid_pipeline_exits_2_with_location(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, CYCLE)
    assert main(["validate", str(FLAGSHIP), str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:5:" in err
    assert "a → b → a" in err or "b → a → b" in err
    assert "1 of 2 file(s) invalid" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty"),
        ("version: 1\nname: x\nstages: {a: {type: template, with: {output: 1}}}\nstages: {}\n",
         "duplicate key 'stages'"),
        ("version: 1\nname: x\nstages: [a\n", "invalid YAML"),
    ],
)
def test_user_mistakes_are_diagnostics_not_tracebacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    assert main(["validate", str(write(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "no/such/pipeline.yaml"]) == 2
    assert "no such file: no/such/pipeline.yaml" in capsys.readouterr().err


def test_unknown_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--frobnicate", str(FLAGSHIP)]) == 2
    assert "No such option" in capsys.readouterr().err


def test_graph_mermaid_and_dot(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", str(FLAGSHIP)]) == 0
    mermaid = capsys.readouterr().out
    assert mermaid.startswith("flowchart TD")
    assert "classify --> team" in mermaid
    assert "triage -.->|route| escalate" in mermaid
    assert main(["graph", str(FLAGSHIP), "--format", "dot"]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith('digraph "support-triage" {')
    assert '"answerable" -> "reply" [style=dashed, label="route"];' in dot


def test_graph_of_a_bad_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graph", str(write(tmp_path, CYCLE))]) == 2
    assert "cycle" in capsys.readouterr().err


def test_plugins_lists_builtins_with_fields(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name, fields in [("template", "output*"), ("route", "routes*"),
                         ("fallback", "response*")]:
        line = next(line for line in out.splitlines() if f" {name} " in line)
        assert fields in line


def test_schema_is_json_with_every_builtin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--builtin-only"]) == 0
    schema = json.loads(capsys.readouterr().out)
    rules = schema["$defs"]["StageSpec"]["allOf"]
    assert {rule["if"]["properties"]["type"]["const"] for rule in rules} >= {
        "template", "route", "fallback"}


def test_validate_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys; from engine.cli import main; "
        f"assert main(['validate', {str(FLAGSHIP)!r}]) == 0; "
        "heavy = {'torch', 'litellm', 'sentence_transformers', 'faiss', 'transformers', "
        "'numpy'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip().splitlines()[-1] == "[]"
