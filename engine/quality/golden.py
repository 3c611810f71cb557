"""Golden datasets: inputs, and what a whole pipeline must do with each of them.

A dataset is YAML — a list of cases, or a mapping with a header — or JSONL, one case per
line (no header: name the pipeline on the command line)::

    pipeline: ../../pipelines/support_triage.yaml   # relative to this file
    volatile: [output.audit]       # left out when --repeat compares outputs (ids, hashes)
    cases:
      - name: double-charge        # or `id`; default "#<n>"; unique in the file
        setup: [{ticket: "..."}]   # inputs run first, unchecked (warm a cache, say)
        input: {ticket: "I was charged twice this month"}
        expect:
          - {path: output.category, equals: billing}
          - {finished_by: escalate}
          - {cost_usd: {max: 0.01}}

The assertions are `engine.quality.assertions`'. A case that asserts nothing on `status` or
`error` also fails when its run errors. The YAML goes through the pipeline loader
(`engine.spec.loader`), so every problem is reported with `file:line:col` and its YAML path,
all at once, with a did-you-mean for a misspelt key.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import Diagnostic, SpecError
from engine.quality.assertions import Assertion, parse_expect, parse_path
from engine.spec.loader import Document, SourceMap, load_file, load_text
from engine.spec.validation import closest

__all__ = ["Case", "Dataset", "load_dataset"]

Path_ = tuple[str | int, ...]
_HEADER = ("pipeline", "volatile", "description", "cases")
_CASE = ("name", "id", "setup", "input", "expect")


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    input: Any
    expect: tuple[Assertion, ...] = ()
    setup: tuple[Any, ...] = ()
    line: int | None = None

    @property
    def checks_status(self) -> bool:
        """Whether the case says what its run's status must be (else an error fails it)."""
        return any(assertion.parts[0] in ("status", "error") for assertion in self.expect)


@dataclass(frozen=True, slots=True)
class Dataset:
    file: Path
    cases: tuple[Case, ...]
    pipeline: Path | None = None
    """The pipeline named in the header, resolved against the dataset's folder."""
    volatile: tuple[Path_, ...] = ()


def load_dataset(path: str | Path) -> Dataset:
    """Read and check a dataset; raises SpecError with every problem, located."""
    file = Path(path)
    doc = _jsonl(file) if file.suffix == ".jsonl" else load_file(file)
    problems: list[Diagnostic] = []
    header, cases = _split(doc, problems)
    found = [case for index, data in enumerate(cases)
             if (case := _case(data, (*header, index), index, doc.source, problems))]
    _unique(found, header, doc.source, problems)
    volatile = _volatile(doc, problems) if header else ()
    pipeline = doc.data.get("pipeline") if isinstance(doc.data, dict) else None
    if pipeline is not None and not isinstance(pipeline, str):
        problems.append(doc.source.diagnostic("`pipeline` is a path to a pipeline file",
                                              ("pipeline",)))
        pipeline = None
    if not found and not problems:
        problems.append(doc.source.diagnostic("the dataset has no cases", header))
    if problems:
        raise SpecError(problems)
    return Dataset(file, tuple(found), doc.base_dir / pipeline if pipeline else None, volatile)


def _split(doc: Document, problems: list[Diagnostic]) -> tuple[Path_, list[Any]]:
    """The path of the case list, and the list (a bare list, or the header's `cases`)."""
    if isinstance(doc.data, list):
        return (), doc.data
    if not isinstance(doc.data, dict):
        problems.append(doc.source.diagnostic("a dataset is a list of cases, or a mapping "
                                              "with `cases:`"))
        return (), []
    problems += _unknown(doc.data, (), _HEADER, doc.source)
    cases = doc.data.get("cases")
    if not isinstance(cases, list):
        problems.append(doc.source.diagnostic("`cases` is a list of cases", ("cases",)))
        return ("cases",), []
    return ("cases",), cases


def _case(data: Any, at: Path_, index: int, source: SourceMap,
          problems: list[Diagnostic]) -> Case | None:
    if not isinstance(data, dict):
        problems.append(source.diagnostic("a case is a mapping with `input` and `expect`", at))
        return None
    problems += _unknown(data, at, _CASE, source)
    if "input" not in data:
        problems.append(source.diagnostic("a case needs an `input`", at))
    expect, wrong = parse_expect(data.get("expect", []), (*at, "expect"), source)
    problems += wrong
    setup = data.get("setup", [])
    if not isinstance(setup, list):
        problems.append(source.diagnostic("`setup` is a list of inputs", (*at, "setup")))
    name = data.get("name", data.get("id"))
    line = (source.locate(at) or (None, None))[0]
    return Case(str(name) if name is not None else f"#{index + 1}", data.get("input"),
                tuple(expect), tuple(setup) if isinstance(setup, list) else (), line)


def _unique(cases: list[Case], at: Path_, source: SourceMap,
            problems: list[Diagnostic]) -> None:
    seen: dict[str, int | None] = {}
    for index, case in enumerate(cases):
        if case.name in seen:
            problems.append(source.diagnostic(
                f"two cases are named '{case.name}' (first on line {seen[case.name]})",
                (*at, index), hint="names identify cases in reports, JUnit and pytest"))
        seen.setdefault(case.name, case.line)


def _volatile(doc: Document, problems: list[Diagnostic]) -> tuple[Path_, ...]:
    paths = doc.data.get("volatile", [])
    if not isinstance(paths, list):
        problems.append(doc.source.diagnostic("`volatile` is a list of paths", ("volatile",)))
        return ()
    found = []
    for index, text in enumerate(paths):
        try:
            found.append(parse_path(text))
        except ValueError as exc:
            problems.append(doc.source.diagnostic(str(exc), ("volatile", index)))
    return tuple(found)


def _unknown(data: dict[str, Any], at: Path_, known: Iterable[str],
             source: SourceMap) -> list[Diagnostic]:
    known = tuple(known)
    problems = []
    for key in data:
        if key not in known:
            close = closest(key, known)
            problems.append(source.diagnostic(
                f"unknown key '{key}'", (*at, key), key=True,
                hint=f"did you mean '{close}'?" if close else f"known: {', '.join(known)}"))
    return problems


def _jsonl(file: Path) -> Document:
    """A JSONL dataset as one document (a list of cases) whose source map has each line's
    own line numbers: every line goes through the same loader as a YAML file."""
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([Diagnostic(f"cannot read the file: {exc}", str(file))]) from None
    source = SourceMap(str(file))
    cases: list[Any] = []
    problems: list[Diagnostic] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            doc = load_text(line, str(file))
        except SpecError as exc:
            problems += [_moved(d, lineno) for d in exc.diagnostics]
            continue
        for table, target in ((doc.source.values, source.values),
                              (doc.source.keys, source.keys)):
            target.update({(len(cases), *path): (lineno, column)
                           for path, (_, column) in table.items()})
        cases.append(doc.data)
    if problems:
        raise SpecError(problems)
    return Document(cases, source, file.resolve().parent)


def _moved(diagnostic: Diagnostic, lineno: int) -> Diagnostic:
    return Diagnostic(diagnostic.message, diagnostic.file, lineno, diagnostic.column,
                      diagnostic.path, diagnostic.hint, diagnostic.severity)
