"""A run removes only what it made, never mixes models into one result, and leaves nothing when it fails
before doing any work. Each test is the careless user's (or the attacker's) action, done for real."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.helpers import run_cli
from virnucpro_trt.runtime.resume import WorkDir
from virnucpro_trt.sequences.synthetic import generate_reads

RESULT_FILES = (
    "prediction_results.txt",
    "prediction_results_highestscore.csv",
    "sequences.tsv",
    "frames.tsv",
)
SHARDS = ("--shard-records", "8", "--threads", "1", "--max-batch-tokens", "700")


@pytest.fixture(scope="module")
def reads(tmp_path_factory) -> Path:
    """120 records: 15 shards of 8."""
    records = generate_reads(120, 500, seed=77, coding_fraction=0.7, prefix="o")
    path = tmp_path_factory.mktemp("own") / "reads.fa"
    path.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in records))
    return path


@pytest.fixture(scope="module")
def models(tiny_set, tmp_path_factory) -> dict[str, Path]:
    """Private copies: the tests replace the classifier file in place."""
    root = tmp_path_factory.mktemp("own_models")
    return {
        "dnabert": tiny_set.dnabert,
        "esm": tiny_set.esm_hf,
        "classifier": Path(shutil.copyfile(tiny_set.classifier, root / "500_model.pth")),
        "other_classifier": Path(shutil.copyfile(tiny_set.classifier_300, root / "500_other.pth")),
    }


def _args(models: dict[str, Path], reads: Path | str, out: Path, *extra: str) -> list[str]:
    return [
        "predict", str(reads), "-o", str(out), "--dnabert", str(models["dnabert"]),
        "--esm", str(models["esm"]), "--classifier", str(models["classifier"]), "--device", "cpu", *SHARDS,
        *extra,
    ]  # fmt: skip


def _errors(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def _refused_when_finished_and_resumed(args: list[str], out: Path) -> tuple[str, str]:
    """The one-line errors of ``args`` run onto its finished OUTDIR, then onto its finished shards alone
    (what a kill before run.json leaves); each must exit 2."""
    errors = []
    for _ in range(2):
        result = run_cli(*args)
        assert result.code == 2 and len(_errors(result)) == 1, result.stderr
        errors.append(_errors(result)[0])
        (out / "run.json").unlink(missing_ok=True)
        (out / "prediction_results.txt").unlink(missing_ok=True)
    return errors[0], errors[1]


@pytest.fixture(scope="module")
def reference(models, reads, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("own_ref") / "out"
    result = run_cli(*_args(models, reads, out))
    assert result.code == 0, result.stderr
    return out


def _same_results(a: Path, b: Path) -> bool:
    return all((a / name).read_bytes() == (b / name).read_bytes() for name in RESULT_FILES)


def _kill_after_a_shard(cmd: list[str], out: Path, stdin: Path | None = None) -> int:
    """Start ``cmd``, SIGKILL its process group once a shard has finished; the number finished."""
    handle = open(stdin, "rb") if stdin else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(cmd, start_new_session=True, stdin=handle, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        results = out / ".work" / "results"
        deadline = time.monotonic() + 180
        try:
            while not (results.is_dir() and any(results.glob("*.done.json"))):
                assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before it could be killed"
                assert time.monotonic() < deadline, "no shard finished in time"
                time.sleep(0.005)
            os.killpg(proc.pid, signal.SIGKILL)
        finally:
            proc.wait(timeout=60)
    finally:
        if stdin:
            handle.close()
    return len(list(results.glob("*.done.json")))


@pytest.mark.slow
def test_a_classifier_swapped_between_a_sigkill_and_the_rerun_is_refused(models, reads, reference, tmp_path):
    out = tmp_path / "out"
    original = models["classifier"].read_bytes()
    cmd = [sys.executable, "-m", "virnucpro_trt", *_args(models, reads, out)]
    finished = _kill_after_a_shard(cmd, out)
    assert 1 <= finished < 15
    try:
        shutil.copyfile(models["other_classifier"], models["classifier"])  # same path, other weights
        rerun = run_cli(*_args(models, reads, out))
        assert rerun.code == 2 and len(_errors(rerun)) == 1, rerun.stderr
        assert "other model weights" in _errors(rerun)[0] and "classifier" in _errors(rerun)[0]
        assert not (out / "prediction_results.txt").exists()
        assert len(list((out / ".work" / "results").glob("*.done.json"))) == finished  # kept for the owner
    finally:
        models["classifier"].write_bytes(original)  # the same weights again (a new file, same content)
    resumed = run_cli(*_args(models, reads, out))
    assert resumed.code == 0, resumed.stderr
    assert _same_results(reference, out)
    run = json.loads((out / "run.json").read_text())
    assert run["shards"]["skipped"] >= finished
    assert set(run["model_identity"]) == {"dnabert-s", "esm2", "classifier", "engines", "torch"}


def test_an_eager_run_of_another_torch_release_is_another_run(models, reads, tmp_path, monkeypatch):
    """A run's results come from the torch release that computed them (another may pick other kernels;
    the classifier computes in torch in every run): a finished run is not reused, nor its shards resumed,
    under another release, as with other weights."""
    from virnucpro_trt.pipeline import predict as predict_module

    out = tmp_path / "out"
    assert run_cli(*_args(models, reads, out, "--keep-work")).code == 0
    release = json.loads((out / "run.json").read_text())["model_identity"]["torch"]
    assert release == predict_module.computing_releases()["torch"] and release
    monkeypatch.setattr(predict_module, "computing_releases", lambda backend=None: {"torch": "0.0.0+other"})
    finished, resumed = _refused_when_finished_and_resumed(_args(models, reads, out), out)
    assert "configuration: torch" in finished and "(torch changed since)" in resumed
    forced = run_cli(*_args(models, reads, out, "--force"))
    assert forced.code == 0, forced.stderr
    assert json.loads((out / "run.json").read_text())["model_identity"]["torch"] == "0.0.0+other"


def test_an_input_rewritten_while_sharded_leaves_no_work(models, reads, tmp_path, monkeypatch):
    """predict hashes the input, then validates it into shards: rewritten in between, the shards would
    hold other bytes than the hash names, and a rerun would resume them as this input's. The run stops
    in one line and leaves nothing; the next run computes from what the input holds."""
    from virnucpro_trt.pipeline import predict as predict_module

    own = Path(shutil.copyfile(reads, tmp_path / "reads.fa"))
    out = tmp_path / "out"
    validate = predict_module.validate_input

    def rewritten_first(*args, **kwargs):
        own.write_text(own.read_text() + ">late\n" + "ATGAAA" * 100 + "\n")
        return validate(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(predict_module, "validate_input", rewritten_first)
        raced = run_cli(*_args(models, own, out))
    assert raced.code == 2 and "changed while predict read it" in _errors(raced)[0], raced.stderr
    assert not out.exists()
    again = run_cli(*_args(models, own, out))
    assert again.code == 0 and "121 records" in again.stderr, again.stderr


def test_force_discards_shards_of_other_weights(models, reads, tmp_path):
    out = tmp_path / "out"
    work = WorkDir(out)
    assert run_cli(*_args(models, reads, out, "--keep-work")).code == 0
    other = dict(models, classifier=models["other_classifier"])
    refused = run_cli(*_args(other, reads, out))
    assert refused.code == 2 and "other model weights" in refused.stderr
    forced = run_cli(*_args(other, reads, out, "--force"))
    assert forced.code == 0, forced.stderr
    assert json.loads((out / "run.json").read_text())["shards"]["skipped"] == 0
    assert not work.root.exists()


def test_foreign_files_in_work_are_refused_and_never_removed(models, reads, tmp_path):
    out = tmp_path / "out"
    notes = out / ".work" / "notes" / "thesis.txt"
    notes.parent.mkdir(parents=True)
    notes.write_text("two years of work\n")
    result = run_cli(*_args(models, reads, out))
    assert result.code == 2 and len(_errors(result)) == 1 and "did not write (notes/)" in _errors(result)[0]
    assert notes.read_text() == "two years of work\n"
    assert not (out / "prediction_results.txt").exists()


def test_the_clean_up_removes_only_known_names(tmp_path):
    """A file that appears in .work during a run (someone else's) survives the final clean-up."""
    work = WorkDir(tmp_path)
    names = (
        "state.json", "shards/shard-000000.fa", "shards/index.json", "results/shard-000000.done.json",
        "results/.shard-000000.frames.tsv.12-34.partial", "results/mine.txt", "shards/keep/x",
    )  # fmt: skip
    for name in names:
        (work.root / name).parent.mkdir(parents=True, exist_ok=True)
        (work.root / name).write_text("x")
    assert sorted(work.foreign_files()) == ["results/mine.txt", "shards/keep/"]
    work.wipe()
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == [".work/results/mine.txt", ".work/shards/keep/x"]


def test_an_input_inside_the_working_area_is_refused_and_kept(models, reads, tmp_path):
    out = tmp_path / "out"
    inside = out / ".work" / "in.fa"
    inside.parent.mkdir(parents=True)
    shutil.copyfile(reads, inside)
    result = run_cli(*_args(models, inside, out))
    assert result.code == 2 and len(_errors(result)) == 1 and "working area" in _errors(result)[0]
    assert inside.read_bytes() == reads.read_bytes()


def test_an_input_at_an_output_path_is_refused_and_not_overwritten(models, reads, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("frames.tsv", "run.json"):
        target = shutil.copyfile(reads, out / name)
        result = run_cli(*_args(models, target, out))
        assert result.code == 2 and "a file this run writes" in result.stderr, result.stderr
        assert target.read_bytes() == reads.read_bytes()
        target.unlink()
    linked = out / "sequences.tsv"
    linked.symlink_to(reads)  # the same file under an output name
    result = run_cli(*_args(models, reads, out))
    assert result.code == 2 and "a file this run writes" in result.stderr
    prepared = tmp_path / "prep"
    prepared.mkdir()
    target = shutil.copyfile(reads, prepared / "identified_nucleotide.fa")
    result = run_cli("prepare", str(target), "-o", str(prepared))
    assert result.code == 2 and target.read_bytes() == reads.read_bytes()
    result = run_cli("embed", str(reads), "--model", "dnabert-s", "--weights", str(models["dnabert"]),
                     "-o", str(reads))  # fmt: skip
    assert result.code == 2 and "a file this run writes" in result.stderr


def test_an_outdir_inside_another_runs_work_is_refused(models, reads, tmp_path):
    outer = tmp_path / "outer"
    assert run_cli(*_args(models, reads, outer, "--keep-work")).code == 0
    result = run_cli(*_args(models, reads, outer / ".work" / "inner"))
    assert result.code == 2 and "another run's working area" in result.stderr
    assert not (outer / ".work" / "inner").exists()


def test_errors_before_any_work_leave_nothing_behind(models, reads, tmp_path, bad_engines):
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    bad = tmp_path / "bad.fa"
    bad.write_text(">ok\nACGT\n>broken\nAC GT!\n")
    cases = {
        "missing input": _args(models, tmp_path / "nope.fa", tmp_path / "o1"),
        "text classifier": _args(dict(models, classifier=text), reads, tmp_path / "o2"),
        "bad engine dir": ["predict", str(reads), "-o", str(tmp_path / "o3"), "--engines", str(bad_engines)],
        "bad record": _args(models, bad, tmp_path / "o4"),
    }
    for what, args in cases.items():
        result = run_cli(*args)
        assert result.code == 2 and len(_errors(result)) == 1, (what, result.stderr)
        assert not Path(args[args.index("-o") + 1]).exists(), what
    existing = tmp_path / "existing"
    existing.mkdir()
    result = run_cli(*_args(models, bad, existing))
    assert result.code == 2 and existing.is_dir() and list(existing.iterdir()) == []


@pytest.fixture
def bad_engines(tmp_path) -> Path:
    folder = tmp_path / "not-engines"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"schema": "virnucpro-trt/engine-manifest"}))
    return folder


@pytest.mark.slow
def test_a_resumed_stdin_run_leaves_no_copy_of_the_input(models, reads, reference, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "virnucpro_trt", *_args(models, "-", out)]
    assert _kill_after_a_shard(cmd, out, stdin=reads) >= 1
    with open(reads, "rb") as handle:
        rerun = subprocess.run(cmd, stdin=handle, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming" in rerun.stderr and _same_results(reference, out)
    assert sorted(p.name for p in out.iterdir()) == sorted([*RESULT_FILES, "run.json"])


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
def test_a_full_disk_while_merging_leaves_no_partial_file(models, reads, reference, tmp_path):
    """The final files are the largest a run writes: a size limit between the largest work file and
    them fails the merge the way a full disk does. Nothing truncated may stay; the rerun finishes."""
    kept = tmp_path / "kept"
    assert run_cli(*_args(models, reads, kept, "--keep-work")).code == 0
    largest_work = max(p.stat().st_size for p in (kept / ".work").rglob("*") if p.is_file())
    largest_final = max((reference / name).stat().st_size for name in RESULT_FILES)
    limit = (largest_work + largest_final) // 2
    assert largest_work < limit < largest_final
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "virnucpro_trt", *_args(models, reads, out)]
    full = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          preexec_fn=_limit_file_size(limit))  # fmt: skip
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert full.returncode == 1 and errors == ["error: File too large: free space (or raise the limit) and "
                                               "rerun the same command"], full.stderr  # fmt: skip
    leftovers = [p.name for p in out.rglob("*") if ".partial" in p.name or p.name in RESULT_FILES]
    assert leftovers == []
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert _same_results(reference, out)


@pytest.mark.slow
def test_a_file_size_limit_at_run_json_shows_no_result(models, tmp_path):
    """run.json is written complete before any result is renamed into place: a size limit that the
    results fit under but run.json does not (a disk filling at the end) left complete results standing
    without their record, exit 1. Now nothing is shown; the rerun finishes them, run.json with them."""
    reads = tmp_path / "two.fa"
    reads.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in generate_reads(2, 500, seed=5, prefix="t")))
    kept = tmp_path / "kept"
    assert run_cli(*_args(models, reads, kept, "--keep-work")).code == 0
    largest = max(p.stat().st_size for p in kept.rglob("*") if p.is_file() and p.name != "run.json")
    limit = (largest + (kept / "run.json").stat().st_size) // 2
    assert largest < limit < (kept / "run.json").stat().st_size
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "virnucpro_trt", *_args(models, reads, out)]
    limited = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                             preexec_fn=_limit_file_size(limit))  # fmt: skip
    said = "error: File too large: free space (or raise the limit) and rerun the same command"
    assert limited.returncode == 1 and _errors(limited) == [said], limited.stderr
    assert [p.name for p in out.iterdir()] == [".work"]
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert _same_results(kept, out) and json.loads((out / "run.json").read_text())["outputs"]


def test_convert_classifier_never_writes_over_its_input(models, tmp_path, monkeypatch):
    """``convert-classifier IN IN`` replaced the only copy of the pickle with exit 0; every spelling of
    the same file is refused, --force included, and the checkpoint stays as it was."""
    checkpoint = Path(shutil.copyfile(models["classifier"], tmp_path / "500_model.pth"))
    original = checkpoint.read_bytes()
    (tmp_path / "link.pth").symlink_to(checkpoint)
    os.link(checkpoint, tmp_path / "hard.pth")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    for output in ("500_model.pth", str(checkpoint), "sub/../500_model.pth", "link.pth", "hard.pth"):
        for extra in ((), ("--force",)):
            result = run_cli("convert-classifier", "500_model.pth", output, *extra)
            assert result.code == 2 and len(_errors(result)) == 1, (output, result.stderr)
            assert "a file this run writes" in _errors(result)[0]
            assert checkpoint.read_bytes() == original


def _own_outputs(models, reads, tmp_path) -> dict[str, tuple[list[str], Path]]:
    """Each command that owns no run folder, with the output path it writes."""
    prepared, embedded, converted = tmp_path / "prep", tmp_path / "emb.h5", tmp_path / "cls.safetensors"
    embed = ["embed", str(reads), "--model", "dnabert-s", "--weights", str(models["dnabert"]),
             "-o", str(embedded), "--device", "cpu", "--threads", "1"]  # fmt: skip
    return {
        "prepare": (["prepare", str(reads), "-o", str(prepared)], prepared / "identified_protein.faa"),
        "embed": (embed, embedded),
        "convert-classifier": (["convert-classifier", str(models["classifier"]), str(converted)], converted),
    }


def test_prepare_embed_and_convert_refuse_files_they_did_not_write(models, reads, tmp_path):
    """A user's file at the output path is refused (exit 2, one line, untouched) unless --force."""
    for command, (args, target) in _own_outputs(models, reads, tmp_path).items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("two years of work\n")
        result = run_cli(*args)
        assert result.code == 2 and len(_errors(result)) == 1, (command, result.stderr)
        assert "virnucpro-trt did not write it" in _errors(result)[0] and "--force" in _errors(result)[0]
        assert target.read_text() == "two years of work\n", command
        forced = run_cli(*args, "--force")
        assert forced.code == 0, (command, forced.stderr)
        assert target.read_bytes() != b"two years of work\n", command


def _content(path: Path) -> object:
    """What a rerun must reproduce: the bytes, or for .safetensors the tensors and metadata (safetensors
    writes its metadata in hash-map order, which changes from one write to the next)."""
    if path.suffix != ".safetensors":
        return path.read_bytes()
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as handle:
        names = handle.keys()  # (safe_open is not iterable)
        return handle.metadata(), {key: handle.get_tensor(key).tobytes() for key in names}


def test_prepare_embed_and_convert_rerun_onto_their_own_output(models, reads, tmp_path):
    """The same command twice works (idempotent reruns); an output edited since is refused."""
    for command, (args, target) in _own_outputs(models, reads, tmp_path).items():
        first = run_cli(*args)
        assert first.code == 0, (command, first.stderr)
        written = _content(target)
        again = run_cli(*args)
        assert again.code == 0, (command, again.stderr)
        assert _content(target) == written, command
        with open(target, "ab") as handle:
            handle.write(b"my notes\n")
        edited = run_cli(*args)
        assert edited.code == 2 and "changed since virnucpro-trt wrote it" in edited.stderr, command
        assert target.read_bytes().endswith(b"my notes\n"), command


def test_a_shard_edited_in_work_is_not_trusted_on_resume(models, reads, reference, tmp_path):
    """A same-size edit of a shard file (size was all a resume checked) must not reach the results: the
    input is sharded again and every shard redone."""
    out = tmp_path / "out"
    assert run_cli(*_args(models, reads, out, "--keep-work")).code == 0
    for name in (*RESULT_FILES, "run.json"):  # as if killed before the merge, shard 1 not finished
        (out / name).unlink()
    for path in (out / ".work" / "results").glob("shard-000001.*"):
        path.unlink()
    shard = out / ".work" / "shards" / "shard-000001.fa"
    text = shard.read_text()
    first_id = text.split("\n", 1)[0]
    shard.write_text(text.replace(first_id, first_id[:-1] + "X", 1))  # same size, same records
    resumed = run_cli(*_args(models, reads, out))
    assert resumed.code == 0, resumed.stderr
    assert "shard-000001.fa changed since it was written" in resumed.stderr
    assert _same_results(reference, out)


@pytest.mark.parametrize(
    "damage",
    [
        lambda index: index.pop("input"),
        lambda index: index["input"].update(records="50"),
        lambda index: index["shards"][0].update(first=None),
        lambda index: index["shards"][0].pop("frames"),
    ],
    ids=["no input", "records a string", "first null", "no frames"],
)
def test_a_damaged_shard_index_is_redone_on_resume(models, reads, reference, tmp_path, damage):
    """``.work/shards/index.json`` with a field missing or of another type is a stale index (the input
    is sharded again), not a ``KeyError`` ending the resumed run as an unexpected failure."""
    out = tmp_path / "out"
    assert run_cli(*_args(models, reads, out, "--keep-work")).code == 0
    for name in (*RESULT_FILES, "run.json"):  # as if killed before the merge
        (out / name).unlink()
    path = out / ".work" / "shards" / "index.json"
    index = json.loads(path.read_text())
    damage(index)
    path.write_text(json.dumps(index))
    resumed = run_cli(*_args(models, reads, out))
    assert resumed.code == 0, resumed.stderr
    assert _same_results(reference, out)


def _other_eps(text: str) -> str:
    return json.dumps({**json.loads(text), "layer_norm_eps": 0.01})


def _two_residues_swapped(text: str) -> str:
    lines = text.split("\n")
    lines[5], lines[6] = lines[6], lines[5]  # two amino acids' ids (the special tokens stay where they are)
    return "\n".join(lines)


@pytest.mark.parametrize(
    ("model", "name", "edit"),
    [
        ("esm", "config.json", _other_eps),
        ("dnabert", "config.json", _other_eps),
        ("esm", "vocab.txt", _two_residues_swapped),
    ],
)
def test_an_edited_config_or_vocabulary_is_another_model(models, reads, tmp_path, model, name, edit):
    """config.json and the vocabulary change the results as the weights do: a finished run is not
    reused, and its shards are not resumed, with a folder whose config or vocabulary was edited since
    (the identity hashed only the weight files: the audit's stale reuse and half-and-half resume)."""
    copy = Path(shutil.copytree(models[model], tmp_path / "model"))
    edited = dict(models, **{model: copy})
    out = tmp_path / "out"
    assert run_cli(*_args(edited, reads, out, "--keep-work")).code == 0
    text = (copy / name).read_text()
    assert edit(text) != text
    (copy / name).write_text(edit(text))
    for error in _refused_when_finished_and_resumed(_args(edited, reads, out), out):
        assert "other model weights or configuration" in error
