"""CLI manners of ``bench``: usage errors (exit 2), an import-light module, and ``--plot``."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import stat
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from tests.bench.conftest import bench
from tests.cli.helpers import run_cli
from virnucpro_trt.bench import plot

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--reads", "10"), "missing --dnabert, --esm, --classifier"),
        (("--random-weights", "tiny", "--dnabert", "x"), "drop --dnabert"),
        (("in.fa", "--reads", "10", "--random-weights", "tiny"), "not both"),
        (("--random-weights", "tiny", "--backends", "torch,cuda-graphs"), "unknown backend 'cuda-graphs'"),
        (("--random-weights", "tiny", "--gate", "0"), "--gate"),
        (("--random-weights", "tiny", "--gate", "nan"), "nan is not a finite number"),
        (("--random-weights", "tiny", "--gate", "inf"), "inf is not a finite number"),
        (("--random-weights", "tiny", "--coding-fraction", "nan"), "nan is not a finite number"),
        (("--random-weights", "tiny", "--seed", "-1"), "'--seed': -1 is not in the range x>=0"),
        (("--random-weights", "tiny", "--threads", "99999"), "99999 is not in the range 1<=x<=1024"),
        (("--random-weights", "tiny", "--reads", "100000000000"), "at most 1,000,000,000 bases"),
        (("--random-weights", "tiny", "--read-length", str(2**63)), "at most 1,000,000,000 bases"),
        (("--random-weights", "tiny", "--reads", "2000000", "--length-mix", "mixed"), "of up to 1000 bp"),
        (("--random-weights", "tiny", "--precision", "int4"), "--precision"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], needle: str, tmp_path: Path) -> None:
    result = run_cli("bench", *args, "--workdir", str(tmp_path / "work"))
    assert result.code == 2, (result.code, result.stderr)
    assert needle in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "work").exists()  # refused before any model was written


def test_engines_must_be_an_engine_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run_cli("bench", "--random-weights", "tiny", "--engines", str(tmp_path / "empty"))
    assert result.code == 2 and "not an engine directory" in result.stderr


def test_the_command_module_imports_only_click() -> None:
    """Of bench, only its torch-free table of names (``config_names``) loads with the CLI."""
    light = ("virnucpro_trt.bench", "virnucpro_trt.bench.config_names")
    code = (
        "import sys, virnucpro_trt.cli.bench_command as m; "
        "heavy = [n for n in sys.modules if n in ('torch', 'numpy', 'rich') or "
        f"n.startswith('virnucpro_trt.bench') and n not in {light!r}]; "
        "print(heavy); assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    result = run_cli("bench", "--help")
    assert result.code == 0 and "--gate" in result.stdout and "--random-weights" in result.stdout


def test_plot_without_matplotlib_is_one_line_before_the_run(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # find_spec() then reports it missing
    out = tmp_path / "bench.json"
    result = run_cli(
        "bench", "--random-weights", "tiny", "--workdir", str(tmp_path / "work"), "--plot",
        str(tmp_path / "bench.png"), "--json", str(out),
    )  # fmt: skip
    assert result.code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "matplotlib" in lines[0] and "pip install matplotlib" in lines[0]
    assert not out.exists() and not (tmp_path / "work").exists()  # nothing ran


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed here")
def test_plot_writes_a_png(bench_run, tmp_path: Path) -> None:
    path = plot.draw(bench_run.report, tmp_path / "bench.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Recorder:
    """Stands in for matplotlib's figure, axes and pyplot: records the calls that matter."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            if name == "subplots":
                return self, self
            if name == "bar":
                return [_Bar(i, h) for i, h in enumerate(args[1])]
            return None

        return call


class _Bar:
    def __init__(self, x: int, height: float) -> None:
        self.x, self.height = x, height

    def get_x(self) -> float:
        return self.x - 0.4

    def get_width(self) -> float:
        return 0.8

    def get_height(self) -> float:
        return self.height


def test_plot_draws_one_bar_per_configuration_with_speedup_labels(bench_run, monkeypatch, tmp_path) -> None:
    """Exercised everywhere with a stand-in matplotlib (the real one is not a dependency)."""
    recorder = _Recorder()
    fake = types.ModuleType("matplotlib")
    fake.__spec__ = importlib.machinery.ModuleSpec("matplotlib", None)
    fake.use = lambda backend: recorder.calls.append(("use", (backend,), {}))  # type: ignore[attr-defined]
    fake.pyplot = recorder  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "matplotlib", fake)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", recorder)
    plot.draw(bench_run.report, tmp_path / "bench.png")
    names = [name for name, _, _ in recorder.calls]
    assert ("use", ("Agg",), {}) in recorder.calls and "savefig" in names
    (_, bar_args, _) = next(c for c in recorder.calls if c[0] == "bar")
    rows = bench_run.report["results"]
    assert len(bar_args[1]) == len(rows)
    assert bar_args[1][0] == rows[0]["frames_per_s"] and bar_args[1][-1] == 0.0  # unavailable: empty slot
    labels = [args[2] for name, args, _ in recorder.calls if name == "text"]
    assert labels[0] == "1.00x" and labels[-1] == "unavailable"
    assert all(label.endswith("x") for label in labels[:-1])
    (_, save_args, _) = next(c for c in recorder.calls if c[0] == "savefig")
    written = Path(save_args[0].name)  # a temporary file beside it, renamed into place when whole
    assert written.parent == tmp_path and written.name.startswith(".bench.png.") and written.name.endswith(
        ".partial"
    )
    assert (tmp_path / "bench.png").is_file() and not written.exists()


def test_table_goes_to_stdout_and_the_status_line_to_stderr(bench_run) -> None:
    result = bench_run.result
    assert "reference" in result.stdout and "PASSED" not in result.stdout
    assert "PASSED: gate 0.01x: best engine onnxruntime-fp32" in result.stderr


def test_quiet_run_prints_only_the_table(bench_run) -> None:
    result = bench(bench_run.workdir, "-q", "--backends", "torch", "--reference-frames", "10")
    assert result.code == 0 and result.stderr.strip() == "", result.stderr
    assert result.stdout.splitlines()[1].startswith("config")


def test_the_gpu_workflow_runs_a_valid_bench_command() -> None:
    """The GPU job cannot run here; at least its command line must parse as the brief's invocation."""
    yaml = pytest.importorskip("yaml")
    from virnucpro_trt.cli.bench_command import bench as bench_command

    workflow = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / ".github/workflows/gpu-bench.yml").read_text()
    )
    job = workflow["jobs"]["bench"]
    assert job["runs-on"] == ["self-hosted", "gpu"]
    run = next(step["run"] for step in job["steps"] if "virnucpro-trt bench" in step.get("run", ""))
    argv = run.split()[2:]
    context = bench_command.make_context("bench", argv)
    params = context.params
    assert params["random_weights"] == "full" and params["reads"] == 20000 and params["gate"] == 3.0
    assert params["backends"] == "torch,inductor,onnxruntime" and params["precision"] == "bf16"
    assert str(params["json_path"]) == "bench.json" and str(params["plot_path"]) == "bench.png"
    uploaded = next(step for step in job["steps"] if "upload-artifact" in step.get("uses", ""))
    assert set(uploaded["with"]["path"].split()) == {"bench.json", "bench.png"}


def test_json_and_plot_replace_only_what_bench_wrote(bench_run, tmp_path: Path) -> None:
    """``--json`` and ``--plot`` follow every command's output rule: a user's file there was overwritten
    (a mistyped ``--json reads.fa`` lost the reads); now it is refused before the run, one line, unless
    ``--force``, while bench's own earlier report is replaced; an input named as a report is refused."""
    quick = ("--backends", "torch", "--reference-frames", "10")
    mine = tmp_path / "notes.json"
    mine.write_text("my notes\n")
    for option in ("--json", "--plot"):
        result = bench(bench_run.workdir, *quick, option, str(mine))
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.code == 2 and len(lines) == 1 and "virnucpro-trt did not write it" in lines[0], lines
    assert mine.read_text() == "my notes\n"
    reads = tmp_path / "reads.fa"
    reads.write_text(">r\n" + "ACGT" * 150 + "\n")
    result = run_cli("bench", str(reads), "--random-weights", "tiny", "--json", str(reads), "--force")
    assert result.code == 2 and "a file this run writes" in result.stderr
    assert reads.read_text().startswith(">r")
    result = bench(bench_run.workdir, *quick, "--json", str(mine), "--plot", str(mine), "--force")
    assert result.code == 2 and "give each its own file" in result.stderr
    out = tmp_path / "report.json"
    for _ in range(2):  # the second run replaces the first one's report
        result = bench(bench_run.workdir, *quick, "--json", str(out))
        assert result.code == 0, result.stderr
    assert json.loads(out.read_text())["results"][0]["config"] == "reference"
    result = bench(bench_run.workdir, *quick, "--json", str(mine), "--force")
    assert result.code == 0 and json.loads(mine.read_text())["results"]


def test_a_report_never_replaces_a_device_nor_writes_into_what_bench_reads(bench_run, tmp_path: Path) -> None:
    """``--json /dev/null --force`` run as root put a plain file where /dev/null was; a report inside a
    model folder (``--force``) wrote over its config, one in a folder of ``--workdir`` over the random
    models; a report folder nothing can be written in failed only after the reference had run. Each is
    now one line, exit 2, before any model loads, and what was there is left as it was."""
    quick = ("--backends", "torch", "--reference-frames", "10")
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    result = bench(bench_run.workdir, *quick, "--json", str(fifo), "--force")
    assert result.code == 2 and "is a device, FIFO or socket" in result.stderr, result.stderr
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    models = bench_run.workdir / "models-random-tiny"
    config = next(models.rglob("config.json"))
    before = config.read_bytes()
    result = bench(bench_run.workdir, *quick, "--json", str(config), "--force")
    assert result.code == 2 and "where bench keeps its models and engines" in result.stderr, result.stderr
    dnabert = next(path.parent for path in models.rglob("tokenizer.json"))
    named = run_cli(
        "bench", "--reads", "10", "--dnabert", str(dnabert), "--esm", str(config.parent),
        "--classifier", str(next(models.rglob("*.pth"))), "--backends", "torch",
        "--json", str(config), "--force",
    )  # fmt: skip
    assert named.code == 2 and "a folder this run reads" in named.stderr, named.stderr
    assert config.read_bytes() == before
    result = bench(bench_run.workdir, *quick, "--json", "/proc/virnucpro-report.json")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.code == 2 and lines == [lines[0]] and "cannot write in /proc" in lines[0], result.stderr
    result = bench(bench_run.workdir, *quick, "--json", str(tmp_path / "new" / "deeper" / "r.json"))
    assert result.code == 0 and (tmp_path / "new" / "deeper" / "r.json").is_file(), result.stderr
