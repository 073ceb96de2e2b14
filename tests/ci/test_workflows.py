"""The GitHub workflows parse, hold the jobs and steps the project relies on, and call the real CLI.

No runner has ever executed ``.github/workflows/gpu-bench.yml`` (the project has no self-hosted GPU
runner), so this is all that can be checked here: every workflow file is valid YAML with jobs and steps,
the ``tensorrt`` job installs and exercises TensorRT as DEVELOPERS.md says, and every ``virnucpro-trt``
command line in a workflow is accepted by the CLI's own parser (options exist, values convert).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from tests.engines.test_tensorrt_logic import REQUIRE_TENSORRT
from virnucpro_trt.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def _runs(job: dict[str, Any]) -> list[str]:
    return [step["run"] for step in job["steps"] if "run" in step]


def _cli_commands(script: str) -> list[list[str]]:
    """Every ``virnucpro-trt ...`` command line in a ``run`` script, as argument lists."""
    commands = []
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "virnucpro-trt":
            commands.append(words[1:])
    return commands


def test_there_are_workflows() -> None:
    assert [p.name for p in WORKFLOWS] == ["gpu-bench.yml"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_workflow_parses_into_jobs_and_steps(path: Path) -> None:
    data = _load(path)
    triggers = data.get("on", data.get(True))  # YAML 1.1 reads the key `on` as True
    assert triggers, f"{path.name} has no trigger"
    assert data["jobs"]
    for name, job in data["jobs"].items():
        assert job.get("runs-on"), name
        assert job["steps"] and all(("run" in step) != ("uses" in step) for step in job["steps"]), name


def test_the_tensorrt_job_installs_builds_gates_and_tests_tensorrt() -> None:
    jobs = _load(ROOT / ".github" / "workflows" / "gpu-bench.yml")["jobs"]
    assert "bench" in jobs  # the speed gate on the verified backends stays
    job = jobs["tensorrt"]
    assert {"self-hosted", "gpu", "tensorrt"} <= set(job["runs-on"])
    assert job["env"][REQUIRE_TENSORRT] == "1"  # the tensorrt tests fail rather than skip
    (setup,) = [s for s in job["steps"] if s.get("uses", "").startswith("actions/setup-python@")]
    assert setup["with"]["python-version"]
    runs = "\n".join(_runs(job))
    assert 'pip install -e ".[dev,gpu,tensorrt]"' in runs
    commands = [c for run in _runs(job) for c in _cli_commands(run)]
    (build,) = [c for c in commands if c[0] == "build"]
    assert build[build.index("--backend") + 1] == "tensorrt"
    (bench,) = [c for c in commands if c[0] == "bench"]
    assert bench[bench.index("--backends") + 1] == "tensorrt" and "--gate" in bench
    # The bench finds the engines the build step wrote: the same workdir layout, the same checkpoints.
    out = build[build.index("-o") + 1]
    workdir = bench[bench.index("--workdir") + 1]
    assert out == f"{workdir}/engines-tensorrt-bf16"
    assert build[build.index("--dnabert") + 1].startswith(f"{workdir}/models-random-full/")
    assert "pytest -m tensorrt" in runs
    marked = [p for p in (ROOT / "tests").rglob("test_*.py") if "@pytest.mark.tensorrt" in p.read_text()]
    assert marked, "no test is marked tensorrt: the job's pytest step would select nothing"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_cli_command_in_a_workflow_parses(path: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WORK", str(tmp_path / "work"))
    (tmp_path / "work").mkdir()
    scripts = [run for job in _load(path)["jobs"].values() for run in _runs(job)]
    commands = [c for run in scripts for c in _cli_commands(os.path.expandvars(run))]
    assert commands
    for words in commands:
        root = click.Context(cli)
        command = cli.get_command(root, words[0])
        assert command is not None, words
        with command.make_context(words[0], list(words[1:]), parent=root):  # raises on a bad option
            pass


def test_the_parse_check_catches_a_bad_option() -> None:
    root = click.Context(cli)
    with pytest.raises(click.UsageError):
        cli.get_command(root, "bench").make_context("bench", ["--backend", "tensorrt"], parent=root)
