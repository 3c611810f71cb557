"""A stage plugin installed for real is found by engine — and only when it is installed.

This builds `plugins/engine-extract` with pip (a copy in a temporary folder, so no `build/`
or `*.egg-info` is left in the repository), installs it into a `--target` folder and runs
`python -m engine plugins` in a fresh interpreter with and without that folder on
PYTHONPATH. It takes a few seconds (a pip build and a few interpreters); offline, no deps.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "engine-extract"
LITTER = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")


def python(*args: str, cwd: Path, pythonpath: Path | None = None) -> str:
    """Run the test's interpreter in a clean environment; return stdout, fail on exit != 0."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"COLUMNS": "200", "NO_COLOR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INDEX": "1", "PYTHONWARNINGS": "ignore"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding engine-extract, installed by pip from a copy of its source."""
    root = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(PLUGIN, root / "engine-extract", ignore=LITTER)
    target = root / "site"
    python("-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
           "--target", str(target), str(source), cwd=root)
    return target


def extract_row(listing: str) -> str | None:
    """The table row of the `extract` stage type in `engine plugins` output, if any."""
    rows = [line for line in listing.splitlines() if line.strip("│| ").startswith("extract ")]
    return rows[0] if rows else None


def test_pip_install_registers_the_entry_point(site: Path) -> None:
    assert list(site.glob("engine_extract-*.dist-info")), sorted(p.name for p in site.iterdir())
    out = python("-c", "from importlib.metadata import entry_points as e; "
                 "(ep,) = e(group='engine.stages', name='extract'); "
                 "print(ep.dist.name, ep.value, ep.load().__name__)",
                 cwd=site.parent, pythonpath=site)
    assert out.split() == ["engine-extract", "engine_extract:ExtractStage", "ExtractStage"]


def test_engine_plugins_lists_the_installed_stage(site: Path) -> None:
    listing = python("-m", "engine", "plugins", cwd=site.parent, pythonpath=site)
    row = extract_row(listing)
    assert row is not None, listing
    assert "engine-extract 0.1.0" in row
    assert "text*" in row and "fields*" in row
    assert "broken" not in listing


def test_not_listed_when_not_installed(tmp_path: Path) -> None:
    found = python("-c", "import importlib.util as u; print(u.find_spec('engine_extract'))",
                   cwd=tmp_path)
    assert found.strip() == "None", (
        "engine-extract is installed into the test environment itself; this test installs "
        "it into a temporary folder and needs an environment without it")
    listing = python("-m", "engine", "plugins", cwd=tmp_path)
    assert extract_row(listing) is None, listing
    assert "template" in listing  # the listing itself worked


def test_the_build_left_no_litter_in_the_repository(site: Path) -> None:
    litter = [p for p in PLUGIN.rglob("*") if p.name == "build" or p.suffix == ".egg-info"]
    assert litter == []
