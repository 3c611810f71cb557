"""A golden report as JUnit XML, the format CI systems (GitHub, GitLab, Jenkins) display.

One `<testsuite>` per dataset, one `<testcase>` per case (classname: the dataset file's
stem, name: the case); a failed case gets a `<failure>` whose `message` is its first failed
assertion and whose text lists every failure of every run; a case whose run errored (the
pipeline failed, not an assertion) gets an `<error>` instead. `time` is the case's mean run
time in seconds.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from engine.quality.runner import CaseReport, GoldenReport

__all__ = ["junit_xml", "write_junit"]


def junit_xml(report: GoldenReport) -> ET.ElementTree[ET.Element[str]]:
    failures = sum(not case.passed and not _errored(case) for case in report.cases)
    errors = sum(not case.passed and _errored(case) for case in report.cases)
    total_time = sum(run.result.duration for case in report.cases for run in case.runs)
    suites = ET.Element("testsuites")
    suite = ET.SubElement(suites, "testsuite", {
        "name": f"{report.pipeline}: {report.dataset.file}", "tests": str(len(report.cases)),
        "failures": str(failures), "errors": str(errors), "skipped": "0",
        "time": f"{total_time:.3f}"})
    for case in report.cases:
        suite.append(_testcase(report, case))
    ET.indent(suites)
    return ET.ElementTree(suites)


def write_junit(report: GoldenReport, path: Path) -> None:
    junit_xml(report).write(path, encoding="utf-8", xml_declaration=True)


def _errored(case: CaseReport) -> bool:
    return any(run.result.status == "error" and not case.case.checks_status
               for run in case.runs)


def _testcase(report: GoldenReport, case: CaseReport) -> ET.Element[str]:
    mean = sum(run.result.duration for run in case.runs) / max(1, len(case.runs))
    element = ET.Element("testcase", {"classname": report.dataset.file.stem,
                                      "name": case.case.name, "time": f"{mean:.3f}"})
    first = case.first_failure()
    if first is None:
        return element
    lines = [f"run {number}/{len(case.runs)}: {failure}"
             + (f" ({report.dataset.file}:{failure.line})" if failure.line else "")
             for number, run in enumerate(case.runs, 1) for failure in run.failures]
    kind = "error" if _errored(case) else "failure"
    detail = ET.SubElement(element, kind, {"message": str(first), "type": kind})
    detail.text = "\n".join(lines)
    return element
