"""`engine run --on ray`: the flagship on a local Ray (2 workers) gives the outputs of a
local run, one line per record."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from engine.cli import main

ROOT = Path(__file__).resolve().parents[2]
FLAGSHIP = ROOT / "pipelines" / "support_triage.yaml"
LABELLED = ROOT / "pipelines" / "data" / "triage_labelled.jsonl"
FIELDS = ("category", "urgency", "team", "action", "sources")


@pytest.mark.slow
def test_the_flagship_on_ray_matches_the_local_run(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    source = tmp_path / "tickets.jsonl"
    source.write_text("".join(line + "\n" for line in LABELLED.read_text().splitlines()[:200]))
    local, ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert main(["run", str(FLAGSHIP), "-i", str(source), "-o", str(local), "--no-store"]) == 0
    assert main(["run", str(FLAGSHIP), "-i", str(source), "-o", str(ray), "--no-store",
                 "--on", "ray", "--workers", "2", "-c", "8"]) == 0
    by_index = [{row["index"]: row for row in map(json.loads, path.read_text().splitlines())}
                for path in (local, ray)]
    assert sorted(by_index[1]) == list(range(200)) and len(ray.read_text().splitlines()) == 200
    for index, row in by_index[0].items():
        mine, theirs = row.get("output") or {}, by_index[1][index].get("output") or {}
        assert [mine.get(f) for f in FIELDS] == [theirs.get(f) for f in FIELDS], index
    assert os.environ.get("OPENAI_API_KEY") is None


def test_on_takes_ray_auto_or_a_ray_url(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(FLAGSHIP), "--set", "ticket=hi", "--on", "spark"]) == 2
    assert "--on takes ray, auto or ray://HOST:PORT" in capsys.readouterr().err
