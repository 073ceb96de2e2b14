"""export/build_engine_sets.sh: sets built into OUT/<arch>/, unavailable backends recorded, failures fatal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "export" / "build_engine_sets.sh"


def _run(tiny_set, out: Path, sets: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [
        "bash", str(SCRIPT), "--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf),
        "--classifier", str(tiny_set.classifier), "-o", str(out), "--device", "cpu", "--sets", sets,
    ]  # fmt: skip
    environment = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO)


def _summary(out: Path) -> dict[str, list[str]]:
    rows = [line.split("\t") for line in (out / "BUILD_SUMMARY.tsv").read_text().splitlines()[1:]]
    return {row[0]: row[1:] for row in rows}


def test_sets_are_built_per_arch_and_unavailable_backends_recorded(tiny_set, tmp_path: Path) -> None:
    out = tmp_path / "sets"
    done = _run(tiny_set, out, "onnxruntime:fp32 tensorrt:fp32")
    assert done.returncode == 0, done.stderr + done.stdout
    rows = _summary(out)
    assert rows["onnxruntime:fp32"][:2] == ["cpu", "built"]
    manifest = json.loads((out / "cpu" / "onnxruntime-fp32" / "manifest.json").read_text())
    assert manifest["backend"] == "onnxruntime" and manifest["precision"] == "fp32"
    assert rows["tensorrt:fp32"][1] == "unavailable" and "TensorRT" in rows["tensorrt:fp32"][3]
    assert not list(out.glob(".staging-*"))


def test_a_failing_set_fails_the_script_and_the_others_still_build(tiny_set, tmp_path: Path) -> None:
    fake = tmp_path / "python"  # a build that fails its parity gate, as `virnucpro-trt build` reports it
    fake.write_text('#!/bin/sh\necho "error: parity gate failed: esm2 max abs 0.5" >&2\nexit 1\n')
    fake.chmod(0o755)
    out = tmp_path / "sets"
    done = _run(tiny_set, out, "inductor:fp32", env={"PYTHON": str(fake)})
    assert done.returncode == 1
    arch, status, _, detail = _summary(out)["inductor:fp32"]
    assert (arch, status) == ("-", "failed") and detail == "error: parity gate failed: esm2 max abs 0.5"


def test_missing_arguments_are_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(SCRIPT), "-o", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
