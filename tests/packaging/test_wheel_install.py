"""The package as a user installs it: wheel and sdist build from the checkout, the wheel installs into a
fresh virtual environment outside the checkout (with the ``onnx`` extra), and the demo runs from there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_and_sdist_build_and_the_wheel_runs_the_demo_outside_the_checkout(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    (wheel,) = dist.glob("virnucpro_trt-*.whl")
    (sdist,) = dist.glob("virnucpro_trt-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    wanted = {
        "LICENSE", "CMakeLists.txt", "runtime/src/manifest.cpp", "virnucpro_trt/workflow/Snakefile",
        "Makefile", "tests/conftest.py", "tests/cli/helpers.py", "tests/data/worked_example.fa",
    }  # fmt: skip
    assert not [name for name in names if "__pycache__" in name]
    assert wanted <= names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    torch_spec = f"torch=={torch.__version__.split('+')[0]}"  # the build CI installed, not a multi-GB one
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    subprocess.run([str(python), "-m", "pip", "install", "-q", torch_spec, f"{wheel}[onnx]"], check=True,
                   env=env, timeout=1200)  # fmt: skip

    run = tmp_path / "elsewhere"
    run.mkdir()
    where = subprocess.run([str(python), "-c", "import virnucpro_trt; print(virnucpro_trt.__file__)"],
                           check=True, capture_output=True, text=True, cwd=run, env=env)  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(venv)  # the installed copy, not the checkout
    demo = subprocess.run([str(venv / "bin" / "virnucpro-trt"), "demo", "-o", "demo-out"], cwd=run, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    summary = json.loads((run / "demo-out" / "run.json").read_text())
    assert summary["status"] == "complete" and summary["demo_random_weights"] is True
    assert (run / "demo-out" / "sequences.tsv").read_text().startswith("sequence_id\t")
