"""The shipped Snakemake workflow, run for real with ``snakemake --cores 2`` on tiny models.

It must give the same bytes as one ``predict`` of the whole input, skip finished parts on a rerun, and
finish a part whose ``predict`` was SIGKILLed through ``predict``'s own resume. The Slurm profile is
checked with a dry run (no Slurm here). Model paths come from the tiny test set through ``--demo``'s
config writer, so the command run is the README's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

if sys.version_info < (3, 11):  # Snakemake 8 needs 3.11: the dev extra leaves it out on 3.10
    pytest.skip("the Snakemake workflow needs Python >= 3.11", allow_module_level=True)

import psutil  # a dependency of snakemake (dev extra)

from tests.cli.helpers import run_cli
from virnucpro_trt.demo import DemoInputs
from virnucpro_trt.workflow import DEMO_SHARD_RECORDS

REPO = Path(__file__).resolve().parents[2]
FILES = (
    "prediction_results.txt",
    "prediction_results_highestscore.csv",
    "sequences.tsv",
    "frames.tsv",
)


@pytest.fixture(scope="module")
def demo_workflow(tiny_set, tmp_path_factory) -> Path:
    """``virnucpro-trt workflow -o wf --demo``, its demo models swapped for the tiny test set."""
    root = tmp_path_factory.mktemp("workflow")
    models = DemoInputs(tiny_set.dnabert, tiny_set.esm_hf, tiny_set.classifier, Path("unused"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("virnucpro_trt.demo.demo_inputs", lambda: models)
        result = run_cli("workflow", "-o", str(root / "wf"), "--demo")
    assert result.code == 0, result.stderr
    return root


def _snakemake(cwd: Path, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "snakemake", "-s", "wf/Snakefile", "--cores", "2", *args]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def _finish(proc: subprocess.Popen, timeout: float = 420) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _single(tiny_set, reads: Path, out: Path, *extra: str) -> Path:
    result = run_cli(
        "predict", str(reads), "-o", str(out), "--dnabert", str(tiny_set.dnabert), "--esm",
        str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--device", "cpu", "--threads", "1",
        *extra,
    )  # fmt: skip
    assert result.code == 0, result.stderr
    return out


def _assert_same(a: Path, b: Path, names=FILES) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_workflow_writes_its_files_and_never_over_existing_ones(demo_workflow, tiny_set, tmp_path):
    wf = demo_workflow / "wf"
    assert sorted(str(p.relative_to(wf)) for p in wf.rglob("*") if p.is_file()) == [
        "Snakefile", "config.yaml", "demo/reads.fa", "profiles/slurm/config.yaml",
    ]  # fmt: skip
    config = (wf / "config.yaml").read_text()
    assert f'dnabert: "{tiny_set.dnabert}"' in config and "parts: 3" in config
    assert f'outdir: "{wf.resolve() / "demo-out"}"' in config
    assert "\ndemo: true" in config
    # the same command again: nothing written; another config over this one: refused, nothing written
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in wf.rglob("*") if p.is_file()}
    models = DemoInputs(tiny_set.dnabert, tiny_set.esm_hf, tiny_set.classifier, Path("unused"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("virnucpro_trt.demo.demo_inputs", lambda: models)
        result = run_cli("workflow", "-o", str(wf), "--demo")
    assert result.code == 0 and "already holds this workflow: nothing to do" in result.stderr
    assert "UP TO DATE: run it with" in result.stderr and "PASSED" not in result.stderr
    result = run_cli("workflow", "-o", str(wf))
    assert result.code == 2 and "config.yaml exists with other content" in result.stderr
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in wf.rglob("*") if p.is_file()} == before
    # a workflow folder missing a file (an interrupted write): the rest is written
    half = tmp_path / "half"
    assert run_cli("workflow", "-o", str(half)).code == 0
    (half / "profiles" / "slurm" / "config.yaml").unlink()
    result = run_cli("workflow", "-o", str(half))
    assert result.code == 0 and "wrote" in result.stderr and (half / "profiles/slurm/config.yaml").is_file()
    (half / "Snakefile").unlink()
    (half / "Snakefile").symlink_to(wf / "Snakefile")  # the same bytes, through a link: refused
    result = run_cli("workflow", "-o", str(half))
    assert result.code == 2 and "Snakefile exists (a symbolic link)" in result.stderr
    result = run_cli("workflow", "-o", str(tmp_path / "plain"))
    assert result.code == 0
    assert 'input: ""' in (tmp_path / "plain" / "config.yaml").read_text()


@pytest.mark.slow
def test_snakemake_run_equals_one_predict_and_a_rerun_does_nothing(demo_workflow, tiny_set, tmp_path):
    code, log = _finish(_snakemake(demo_workflow))  # the README's command: config.yaml as written
    assert code == 0, log
    out = demo_workflow / "wf" / "demo-out"
    reads, shards = demo_workflow / "wf" / "demo" / "reads.fa", str(DEMO_SHARD_RECORDS)
    single = _single(tiny_set, reads, tmp_path / "single", "--shard-records", shards)
    _assert_same(single, out)
    run = json.loads((out / "run.json").read_text())
    assert run["split"]["parts"] == 3 and run["shards"]["total"] == 3  # the demo config's shard_records
    assert [p["records"] for p in run["parts"]] == [256, 256, 88]
    assert (
        run["settings_fingerprint"] == json.loads((single / "run.json").read_text())["settings_fingerprint"]
    )
    assert (out / "logs" / "predict" / "0002.log").read_text().count("PASSED (DEMO, RANDOM WEIGHTS") == 1
    assert (out / "logs" / "merge.log").read_text().count("PASSED (DEMO, RANDOM WEIGHTS") == 1  # merge too
    assert run["demo_random_weights"] is True and (out / "DEMO_RANDOM_WEIGHTS.txt").is_file()

    code, log = _finish(_snakemake(demo_workflow))
    assert code == 0 and "Nothing to be done" in log, log


def _predict_process(parent: int, label: str, deadline: float):
    """The ``predict`` process of part ``label`` among snakemake's descendants, once it exists."""
    while time.monotonic() < deadline:
        try:
            children = psutil.Process(parent).children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for child in children:
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            ours = "predict" in cmdline and any(arg.endswith(f"part-results/{label}") for arg in cmdline)
            if ours and "-m" in cmdline:  # the python process, not the shell that started it
                return child
        time.sleep(0.01)
    raise AssertionError(f"no predict process for part {label} appeared")


@pytest.mark.slow
def test_a_killed_part_resumes_on_the_rerun_with_identical_results(demo_workflow, tiny_set, tmp_path):
    extra = ["--config", f"outdir={tmp_path / 'out'}", "shard_records=10", "save_embeddings=true"]
    proc = _snakemake(demo_workflow, *extra, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        victim = _predict_process(proc.pid, "0002", deadline)
        results = tmp_path / "out" / "part-results" / "0002" / ".work" / "results"
        while not (results.is_dir() and any(results.glob("*.done.json"))):
            assert time.monotonic() < deadline and victim.is_running(), "part 2 never finished a shard"
            time.sleep(0.005)
        victim.send_signal(signal.SIGKILL)
        code, log = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert code != 0, log
    part = tmp_path / "out" / "part-results" / "0002"
    assert not (part / "run.json").exists() and not (tmp_path / "out" / "run.json").exists()
    finished = len(list(results.glob("*.done.json")))
    assert 1 <= finished < 20  # 200 records in shards of 10

    code, log = _finish(_snakemake(demo_workflow, *extra))
    assert code == 0, log
    single = _single(
        tiny_set, demo_workflow / "wf" / "demo" / "reads.fa", tmp_path / "single", "--shard-records", "10",
        "--save-embeddings",
    )  # fmt: skip
    _assert_same(single, tmp_path / "out", (*FILES, "embeddings.h5"))
    resumed = json.loads((part / "run.json").read_text())["shards"]
    assert resumed["skipped"] >= finished and resumed["skipped"] + resumed["processed"] == 20
    assert "resuming:" in (tmp_path / "out" / "logs" / "predict" / "0002.log").read_text()


@pytest.mark.slow
def test_reruns_after_a_config_change_redo_the_parts_and_take_false_as_false(demo_workflow, tmp_path):
    """Snakemake reruns a job after removing its declared outputs; demo's DEMO_RANDOM_WEIGHTS.txt and a
    no-longer-asked-for embeddings.h5 were not declared, so predict and merge refused their folders. And
    `--config demo=false` (the string 'false') counted as true."""
    out = tmp_path / "out"

    def run(*config: str, force: bool = False) -> None:
        args = ["--config", f"outdir={out}", "shard_records=40", *config] + (["-F"] if force else [])
        code, log = _finish(_snakemake(demo_workflow, *args))
        assert code == 0, log

    run()  # demo: true, as `workflow --demo` wrote config.yaml
    assert (out / "DEMO_RANDOM_WEIGHTS.txt").is_file()
    run(force=True)  # every job again, over its own earlier results
    run("demo=false", "save_embeddings=true")
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["demo_random_weights"] is False and (out / "embeddings.h5").is_file()
    assert not list(out.rglob("DEMO_RANDOM_WEIGHTS.txt"))
    run("demo=false", "save_embeddings=false")
    assert not (out / "embeddings.h5").exists() and not list((out / "part-results").rglob("embeddings.h5"))
    moved = sorted(p.name.split(".")[:2] for p in (out / "logs" / "replaced").iterdir())
    assert moved == [["DEMO_RANDOM_WEIGHTS", "txt"], ["embeddings", "h5"]]  # OUTDIR's: moved, not deleted
    code, log = _finish(_snakemake(demo_workflow, "-n", "--config", f"outdir={out}", "demo=maybe"))
    assert code != 0 and "demo must be true or false, got 'maybe'" in log


@pytest.mark.slow
def test_fewer_parts_on_a_rerun_cut_the_input_again(demo_workflow, tiny_set, tmp_path):
    """Snakemake removes the split's declared outputs before it reruns it, not part-0003.fa of an
    earlier parts=3, and split refused the folder holding it: parts=3 -> 2 stopped the workflow until
    the file was removed by hand (helper-62). It is moved into logs/replaced now."""
    out = tmp_path / "out"
    for parts in (3, 2):
        args = ["--config", f"outdir={out}", "shard_records=40", f"parts={parts}"]
        code, log = _finish(_snakemake(demo_workflow, *args))
        assert code == 0, log
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["part-0001.fa", "part-0002.fa", "split.json"]
    moved = [p.name for p in (out / "logs" / "replaced").iterdir()]  # moved aside, not deleted
    assert len(moved) == 1 and moved[0].startswith("part-0003.fa."), moved
    assert json.loads((out / "run.json").read_text())["split"]["parts"] == 2
    single = _single(tiny_set, demo_workflow / "wf" / "demo" / "reads.fa", tmp_path / "single",
                     "--shard-records", "40")  # fmt: skip
    _assert_same(single, out)


def _dry_run(demo_workflow: Path, *config: str) -> str:
    code, log = _finish(
        _snakemake(demo_workflow, "--profile", "wf/profiles/slurm", "-n", "--config", "outdir=dry", *config)
    )
    assert code == 0, log
    return log


def test_slurm_profile_dry_run_builds_engines_once_unless_given(demo_workflow):
    log = _dry_run(demo_workflow, "backend=inductor", "precision=bf16", "device=cuda")
    assert "build_engines        1" in log and "predict              3" in log
    assert log.count("gpu=1") == 4 and "slurm_partition=gpu" in log  # the build and every predict
    log = _dry_run(demo_workflow, "backend=inductor", "precision=bf16")  # the demo's device: cpu
    assert "gpu=1" not in log and log.count("gpu=0") == 4, log  # a CPU run asks the cluster for no GPU
    log = _dry_run(demo_workflow, "backend=inductor", "precision=bf16", "device=auto")
    assert log.count("gpu=1") == 4
    assert "--engines dry/engines" in log and " build " in log
    log = _dry_run(demo_workflow, "engines=/shared/engines/h200/inductor-bf16")
    assert "build_engines" not in log and "--engines /shared/engines/h200/inductor-bf16" in log
    assert "--min-length" not in log  # 0 in config.yaml: predict's default
    log = _dry_run(demo_workflow, "min_length=50")
    assert log.count("--min-length 50") == 3  # every part's predict, nothing else
    assert "--max-padding" not in log  # empty in config.yaml: predict's default
    log = _dry_run(demo_workflow, "max_padding=0.05:8192")
    assert log.count("--max-padding 0.05:8192") == 3
    assert "--stall-timeout" not in log  # empty in config.yaml: predict's default
    for value, given in (("0", "--stall-timeout 0 "), ("900", "--stall-timeout 900 ")):
        assert _dry_run(demo_workflow, f"stall_timeout={value}").count(given) == 3  # 0 (warn only) too
    log = _dry_run(demo_workflow, "split_mem_mb=20000", "split_runtime=300")
    split_job = log.split("rule split:", 1)[1].split("\n\n", 1)[0]
    assert " mem_mb=20000," in split_job and " runtime=300" in split_job  # split holds every read id
    code, log = _finish(_snakemake(demo_workflow, "-n", "--config", "input="))
    assert code != 0 and "input not set" in log


def test_a_users_file_in_outdir_stops_the_workflow_before_snakemake_removes_it(demo_workflow, tmp_path):
    """Snakemake removes the merge's declared outputs before running it: a user's sequences.tsv in the
    outdir was deleted unseen (and merge's own refusal never reached). The Snakefile now refuses such an
    outdir as it is read, before any job runs, and the file stays."""
    outdir = tmp_path / "mine"
    outdir.mkdir()
    (outdir / "sequences.tsv").write_text("MY TABLE\n")
    code, log = _finish(_snakemake(demo_workflow, "--config", f"outdir={outdir}"))
    assert code != 0 and f"outdir: {outdir} holds result files this workflow did not make" in log, log
    assert (outdir / "sequences.tsv").read_text() == "MY TABLE\n"
    assert sorted(p.name for p in outdir.iterdir()) == ["sequences.tsv"]
