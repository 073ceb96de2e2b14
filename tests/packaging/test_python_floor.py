"""`make demo` and `make test` install the ``dev`` extra and promise Python >= 3.10 (requires-python, README):
a dev requirement that exists only for newer Pythons must carry a marker, or pip finds no version of it on
3.10 and the setup stops (Snakemake >= 8 and its Slurm plugin require Python >= 3.11)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - pytest brings tomli on 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
# Requirements whose every release named by the range needs a newer Python than the floor.
NEWER_PYTHON_ONLY = {"snakemake": "3.11", "snakemake-executor-plugin-slurm": "3.11"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_readme_and_requires_python_name_the_same_floor() -> None:
    floor = re.fullmatch(r">=\s*(3\.\d+)", _project()["requires-python"]).group(1)
    assert f"Both need Python ≥ {floor} and `make`" in (ROOT / "README.md").read_text()


def test_the_dev_extra_installs_on_the_oldest_python_it_promises() -> None:
    floor = re.fullmatch(r">=\s*(3\.\d+)", _project()["requires-python"]).group(1)
    for line in _project()["optional-dependencies"]["dev"]:
        requirement = Requirement(line)
        needs = NEWER_PYTHON_ONLY.get(requirement.name.lower())
        if needs is None:
            continue
        marker = requirement.marker
        assert marker is not None and not marker.evaluate({"python_version": floor, "extra": "dev"}), line
        assert marker.evaluate({"python_version": needs, "extra": "dev"}), line
