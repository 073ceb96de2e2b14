"""``build`` writes only files it makes, inside its folder (audit cases B1, B2, B3).

* a symbolic link in the engine folder (``esm2.vocab.txt`` -> a file outside) is refused before
  anything is written: its target is never touched, by ``build -o DIR`` or by ``predict --backend``
  building into ``OUTDIR/engines``;
* a user's files in the folder (``manifest.json``, ``classifier.safetensors``, anything else) are refused
  in one line and kept; only an earlier build's files, recorded in its manifest, are replaced;
* every file is made in a private staging folder and renamed into place: a finished build leaves no
  staging folder, and a failed one leaves the earlier set as it was.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.cli.helpers import build_tiny, run_cli
from virnucpro_trt.engines.build import check_engine_folder
from virnucpro_trt.errors import UserError
from virnucpro_trt.files.run_lock import BUILD_STAGING, LOCK_FILE, STAGING_PREFIX, KeptFiles, outdir_lock
from virnucpro_trt.files.stamps import stat_stamp


def _one_error_line(result, *messages: str) -> None:
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for message in messages:
        assert message in lines[0], lines


def _manifest(folder: Path, **build) -> None:
    """A manifest of this tool's schema naming a few files (what ``own_file_names`` reads)."""
    models = {
        "esm2": {"artifact": "esm2.cpu.fp32.onnx", "tokenizer": "esm2.vocab.txt", "files": []},
        "classifier": {"artifact": "classifier.safetensors", "files": []},
    }
    body = {"schema": "virnucpro-trt/engine-manifest", "schema_version": 1, "models": models, "build": build}
    (folder / "manifest.json").write_text(json.dumps(body))


def test_links_are_refused_even_with_force(tmp_path):
    folder = tmp_path / "engines"
    folder.mkdir()
    (tmp_path / "victim.txt").write_text("victim")
    (folder / "esm2.vocab.txt").symlink_to(tmp_path / "victim.txt")
    for force in (False, True):
        with pytest.raises(UserError, match=r"symbolic links \(esm2.vocab.txt\)"):
            check_engine_folder(folder, force)


def test_files_the_build_did_not_make_are_refused_unless_forced(tmp_path):
    folder = tmp_path / "engines"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"my": "own manifest"}')  # not ours: owns nothing
    (folder / "classifier.safetensors").write_text("mine")
    with pytest.raises(UserError, match=r"did not make \(classifier.safetensors, manifest.json\)"):
        check_engine_folder(folder)
    assert check_engine_folder(folder, force=True) == set()
    (folder / "sub").mkdir()  # a folder is never taken over
    with pytest.raises(UserError, match=r"did not make \(sub\)"):
        check_engine_folder(folder, force=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is not a folder"):
        check_engine_folder(tmp_path / "file")
    assert check_engine_folder(tmp_path / "new") == set()


def test_an_earlier_builds_files_are_its_own(tmp_path):
    folder = tmp_path / "engines"
    folder.mkdir()
    _manifest(folder, own_files=["tensorrt.timing-cache", "../escape"])
    for name in ("esm2.cpu.fp32.onnx", "esm2.vocab.txt", "classifier.safetensors", "tensorrt.timing-cache"):
        (folder / name).write_text("built")
    (folder / "esm2.cpu.fp32.onnx.trt-cache").mkdir()  # ONNX Runtime's TensorRT cache beside it
    (folder / f"{STAGING_PREFIX}x1y2z3").mkdir()  # an interrupted build's staging folder: left alone
    own = check_engine_folder(folder)
    assert own == {
        "manifest.json", "esm2.cpu.fp32.onnx", "esm2.vocab.txt", "classifier.safetensors",
        "tensorrt.timing-cache",
    }  # fmt: skip
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"did not make \(notes.txt\)"):
        check_engine_folder(folder)


def test_an_own_file_changed_since_the_build_is_refused_unless_forced(tmp_path):
    """The manifest names a build's files and records their SHA-256: a file at such a name that no longer
    has it (a user edited the tokenizer, or copied a classifier of theirs over it) is theirs now, and a
    rebuild must not replace it. The recorded stamp spares the hash of an unchanged file."""
    folder = tmp_path / "engines"
    folder.mkdir()
    files = {"esm2.vocab.txt": b"built vocab\n", "classifier.safetensors": b"built classifier"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    body = {
        "schema": "virnucpro-trt/engine-manifest",
        "models": {"esm2": {"artifact": "classifier.safetensors", "tokenizer": "esm2.vocab.txt",
                            "file_sha256": hashes, "file_stamps": {"esm2.vocab.txt": "not a stamp"}}},
    }  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(body))
    assert check_engine_folder(folder) == {"manifest.json", *files}
    (folder / "esm2.vocab.txt").write_bytes(b"my edited vocab\n")
    with pytest.raises(UserError, match=r"esm2.vocab.txt changed since the build"):
        check_engine_folder(folder)
    assert check_engine_folder(folder, force=True) == {"manifest.json", *files}
    (folder / "esm2.vocab.txt").write_bytes(b"built vocab\n")  # the recorded bytes: the build's again
    assert check_engine_folder(folder) == {"manifest.json", *files}
    stamp = [*stat_stamp(os.stat(folder / "classifier.safetensors"))]
    body["models"]["esm2"]["file_stamps"] = {"classifier.safetensors": stamp}
    body["models"]["esm2"]["file_sha256"]["classifier.safetensors"] = "0" * 64  # the stamp alone holds
    (folder / "manifest.json").write_text(json.dumps(body))
    assert check_engine_folder(folder) == {"manifest.json", *files}


def test_a_rebuild_at_another_precision_removes_the_earlier_builds_engines(tiny_set, tmp_path, monkeypatch):
    """The earlier build's engine files that the new manifest does not name (fp32 after an fp16 build)
    can serve no run: they went on being carried as own files, gigabytes each at full size. They are
    removed now, each while it is still the file that build recorded; a changed one is kept and named."""
    folder = tmp_path / "engines"
    assert build_tiny(tiny_set, folder).code == 0
    first = json.loads((folder / "manifest.json").read_text())
    fp32 = {n for m in first["models"].values() for n in m["file_sha256"] if ".fp32." in n}
    assert fp32 and all((folder / n).is_file() for n in fp32)
    result = build_tiny(tiny_set, folder, "--precision", "fp16")
    assert result.code == 0, result.stderr
    second = json.loads((folder / "manifest.json").read_text())
    names = {n for m in second["models"].values() for n in m["file_sha256"]}
    assert {p.name for p in folder.iterdir()} == names | {"manifest.json"}
    assert not fp32 & names and second["build"]["own_files"] == []
    assert set(second["build"]["stale_files"]) == fp32  # recorded, and removed once the manifest was in

    from virnucpro_trt.engines import build

    warned: list[str] = []
    monkeypatch.setattr(build.log, "warning", lambda message, *args: warned.append(message % args))
    (folder / "old.onnx").write_text("edited since")
    (folder / "gone.onnx").write_text("as built")
    digest = hashlib.sha256(b"as built").hexdigest()
    build._remove_stale(folder, dict.fromkeys(("old.onnx", "gone.onnx", "missing.onnx"), digest))
    assert (folder / "old.onnx").read_text() == "edited since" and not (folder / "gone.onnx").exists()
    assert warned == [f"{folder}: kept old.onnx, changed since the earlier build that made it"]


_KILLED_AFTER_THE_MANIFEST = """
import os, signal, sys
from virnucpro_trt.cli.main import main
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    target = os.fspath(dst)
    if target.endswith("manifest.json") and os.path.basename(os.path.dirname(target)) == "engines":
        # the new set is in place (not the manifest written in the staging folder); stale files go next
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
main(sys.argv[1:])
"""


def test_a_rebuild_killed_before_it_removed_the_earlier_engines_leaves_them_to_the_next(tiny_set, tmp_path):
    """Killed between its manifest and the removal of the earlier build's engines, a rebuild left those
    files recorded nowhere: the next build refused the folder ("files build did not make"). The manifest
    now records them as stale, so the next build removes them (and only while unchanged)."""
    import subprocess
    import sys

    folder = tmp_path / "engines"
    assert build_tiny(tiny_set, folder).code == 0
    first = json.loads((folder / "manifest.json").read_text())
    fp32 = {n for m in first["models"].values() for n in m["file_sha256"] if ".fp32." in n}
    args = [
        "build", "--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf), "--classifier",
        str(tiny_set.classifier), "--backend", "onnxruntime", "--device", "cpu", "--max-batch-tokens", "512",
        "--max-length", "256", "-o", str(folder), "--precision", "fp16",
    ]  # fmt: skip
    killed = subprocess.run([sys.executable, "-c", _KILLED_AFTER_THE_MANIFEST, *args], capture_output=True)
    assert killed.returncode == -9, killed.stderr
    second = json.loads((folder / "manifest.json").read_text())
    assert second["precision"] == "fp16" and set(second["build"]["stale_files"]) == fp32
    assert all((folder / n).is_file() for n in fp32)  # not yet removed
    result = build_tiny(tiny_set, folder, "--precision", "fp16")
    assert result.code == 0, result.stderr
    third = json.loads((folder / "manifest.json").read_text())
    names = {n for m in third["models"].values() for n in m["file_sha256"]}
    assert {p.name for p in folder.iterdir()} == names | {"manifest.json"}
    assert set(third["build"]["stale_files"]) == fp32 and third["build"]["own_files"] == []  # gone now


def test_a_name_recorded_as_stale_is_the_tools_only_while_its_file_is_the_recorded_one(tmp_path):
    """The manifest keeps the earlier build's stale names after they were removed: a file a user puts
    at such a name later is theirs (refused as any foreign file, even by predict --rebuild), while the
    very file the killed build left (its recorded SHA-256) is the tool's, to be removed."""
    folder = tmp_path / "engines"
    folder.mkdir()
    left = b"the earlier build's engine"
    stale = {"esm2.cpu.fp32.onnx": hashlib.sha256(left).hexdigest()}
    manifest = {"schema": "virnucpro-trt/engine-manifest", "models": {}, "build": {"stale_files": stale}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "esm2.cpu.fp32.onnx").write_bytes(b"a user's engine, restored from a backup")
    for replace_changed in (False, True):
        with pytest.raises(UserError, match="files virnucpro-trt build did not make"):
            check_engine_folder(folder, replace_changed=replace_changed)
    (folder / "esm2.cpu.fp32.onnx").write_bytes(left)
    assert check_engine_folder(folder) == {"manifest.json", "esm2.cpu.fp32.onnx"}


def test_a_manifest_edited_to_name_a_users_file_never_gets_it_removed(tiny_set, tmp_path):
    """Anyone can read a file's stamp with ``stat``: a manifest.json edited to name a user's file with its
    stamp (and any hash) made the rebuild remove it as the earlier build's stale engine. Only a manifest
    the strict reader takes, and the file's own SHA-256, let a stale file go."""
    folder = tmp_path / "engines"
    assert build_tiny(tiny_set, folder).code == 0
    thesis = folder / "thesis.tex"
    thesis.write_text("my thesis\n")
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["models"]["classifier"]
    entry["file_sha256"]["thesis.tex"] = "0" * 64
    entry["file_stamps"]["thesis.tex"] = stat_stamp(os.stat(thesis))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = build_tiny(tiny_set, folder)
    assert result.code == 0, result.stderr
    assert thesis.read_text() == "my thesis\n"


def test_build_never_writes_through_links(tiny_set, tmp_path):
    """B1: the links' targets outside the folder keep their bytes; the build stops before writing."""
    folder = tmp_path / "b1"
    folder.mkdir()
    (tmp_path / "victim_vocab.txt").write_text("victim vocab\n")
    (tmp_path / "victim_tok.txt").write_text("victim tok\n")
    (folder / "esm2.vocab.txt").symlink_to(tmp_path / "victim_vocab.txt")
    (folder / "dnabert-s.tokenizer.json").symlink_to(tmp_path / "victim_tok.txt")
    result = build_tiny(tiny_set, folder)
    _one_error_line(result, "symbolic links", "dnabert-s.tokenizer.json", "esm2.vocab.txt")
    assert (tmp_path / "victim_vocab.txt").read_text() == "victim vocab\n"
    assert (tmp_path / "victim_tok.txt").read_text() == "victim tok\n"
    assert sorted(p.name for p in folder.iterdir()) == ["dnabert-s.tokenizer.json", "esm2.vocab.txt"]


def test_build_keeps_a_users_files(tiny_set, tmp_path):
    """B2: a user's manifest.json and classifier.safetensors are neither replaced nor mixed with."""
    folder = tmp_path / "b2"
    folder.mkdir()
    files = {
        "manifest.json": '{"my": "own manifest"}\n',
        "classifier.safetensors": "mine\n",
        "notes.txt": "n",
    }
    for name, text in files.items():
        (folder / name).write_text(text)
    _one_error_line(build_tiny(tiny_set, folder), "did not make", "classifier.safetensors, manifest.json")
    assert {p.name: p.read_text() for p in folder.iterdir()} == files


def test_predict_never_writes_through_a_link_in_its_engine_cache(tiny_set, tmp_path):
    """B3: predict --backend onnxruntime builds into OUTDIR/engines: refused before the build."""
    fasta = tmp_path / "dna.fa"
    fasta.write_text(">d1\nACGTACGTTAGCATCGATCGATCGTAGCTAGCTAGCATCGA\n")
    out = tmp_path / "b3"
    (out / "engines").mkdir(parents=True)
    (tmp_path / "victim3.txt").write_text("victim3\n")
    (out / "engines" / "esm2.vocab.txt").symlink_to(tmp_path / "victim3.txt")
    result = run_cli(
        "predict", str(fasta), "-o", str(out), "--dnabert", str(tiny_set.dnabert), "--esm",
        str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--backend", "onnxruntime",
        "--device", "cpu", "--max-batch-tokens", "512",
    )  # fmt: skip
    assert result.code == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "symbolic links (esm2.vocab.txt)" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "victim3.txt").read_text() == "victim3\n"


def test_a_rebuild_replaces_its_own_files_and_keeps_an_earlier_builds(tiny_set, tmp_path, monkeypatch):
    """A finished build leaves exactly the manifest's files; a rebuild replaces them by rename (a hard
    link to one is never written into), remembers an earlier build's file it did not replace, and a
    failed rebuild leaves the finished set as it was. A file at an own name that is no longer the one
    the build recorded (edited, or another file put there) is refused, not replaced."""
    folder = tmp_path / "engines"
    assert build_tiny(tiny_set, folder).code == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    names = {n for m in manifest["models"].values() for n in m["file_sha256"]}
    assert {p.name for p in folder.iterdir()} == names | {"manifest.json"}
    assert manifest["build"]["own_files"] == []

    vocab = (folder / "esm2.vocab.txt").read_bytes()
    (folder / "esm2.vocab.txt").unlink()
    (tmp_path / "kept.txt").write_text("not a vocabulary\n")  # the rebuild must not write into it
    os.link(tmp_path / "kept.txt", folder / "esm2.vocab.txt")
    (folder / "esm2.cpu.fp16.onnx").write_text("an earlier build's engine")
    manifest["build"]["own_files"] = ["esm2.cpu.fp16.onnx"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _one_error_line(build_tiny(tiny_set, folder), "esm2.vocab.txt changed since the build that made them")
    assert (tmp_path / "kept.txt").read_text() == "not a vocabulary\n"
    (tmp_path / "kept.txt").write_bytes(vocab)  # the recorded bytes again, in another file (a new stamp)
    result = build_tiny(tiny_set, folder, "--force")  # the same set is there again: only --force builds it
    assert result.code == 0, result.stderr
    assert (tmp_path / "kept.txt").stat().st_nlink == 1  # replaced by rename, not written into
    assert (folder / "esm2.vocab.txt").read_bytes() == vocab
    rebuilt = json.loads((folder / "manifest.json").read_text())
    assert rebuilt["build"]["own_files"] == ["esm2.cpu.fp16.onnx"]
    assert not any(p.name.startswith(STAGING_PREFIX) for p in folder.iterdir())

    import virnucpro_trt.engines.parity as parity

    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(parity, "FP32_MAX_ABS", 0.0)  # nothing computed differently can pass now
    monkeypatch.setattr(parity, "FP32_MAX_RELATIVE", 0.0)
    result = build_tiny(tiny_set, folder, "--force")
    assert result.code == 1 and "parity gate failed" in result.stderr
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_killed_builds_staging_folder_goes_with_the_next_build_and_two_builds_never_share_a_folder(
    tiny_set, tmp_path
):
    """A build killed by SIGKILL left its staging folder (gigabytes at full size) for every later build
    to warn about; its lock now notes it, so the next build removes it — and only it: a staging folder
    no lock noted (or a new folder at the noted name) is kept, named in a warning. A second build into a
    folder another build is writing is refused (the two used to mix their files)."""
    folder = tmp_path / "engines"
    # what a killed build leaves: lock, staging
    with outdir_lock(folder, KeptFiles(staging=BUILD_STAGING)) as lock:
        killed = folder / f"{STAGING_PREFIX}killed12"
        killed.mkdir(mode=0o700)  # as mkdtemp makes it
        (killed / "sub").mkdir()
        (killed / "sub" / "esm2.cpu.fp32.onnx").write_bytes(b"half an engine")
        lock.note_folder(killed)
        content = (folder / LOCK_FILE).read_bytes()
    (folder / LOCK_FILE).write_bytes(content)
    stray = folder / f"{STAGING_PREFIX}older"
    stray.mkdir()
    with open(folder / LOCK_FILE, "rb") as held:  # a build running: its lock is held
        fcntl.flock(held, fcntl.LOCK_EX)
        refused = build_tiny(tiny_set, folder)
        _one_error_line(refused, f"{folder} is being written by another virnucpro-trt run")
    assert killed.is_dir()  # the refused build removed nothing
    result = build_tiny(tiny_set, folder)
    assert result.code == 0, result.stderr
    assert not killed.exists() and not (folder / LOCK_FILE).exists()
    assert stray.is_dir() and f"{STAGING_PREFIX}older was left by an interrupted build" in result.stderr
    killed.mkdir()  # a new folder at the noted name: not the one the killed build made
    (folder / LOCK_FILE).write_bytes(content)
    assert build_tiny(tiny_set, folder).code == 0 and killed.is_dir()


def test_predict_refuses_a_link_at_its_own_engine_folder(tiny_set, reads_fasta, tmp_path):
    """``predict --backend`` without ``--engines`` builds into ``OUTDIR/engines``; a symbolic link there
    made it build into (or replace the engines of) the folder it points to (helper-37)."""
    out, elsewhere = tmp_path / "p", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "engines").symlink_to(elsewhere)
    result = run_cli(
        "predict", str(reads_fasta), "-o", str(out), "--dnabert", str(tiny_set.dnabert), "--esm",
        str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--backend", "onnxruntime",
        "--device", "cpu",
    )  # fmt: skip
    _one_error_line(result, "engines is a symbolic link", "--engines")
    assert list(elsewhere.iterdir()) == []


def test_a_manifest_that_is_a_fifo_does_not_stall_bench(tmp_path):
    """bench compares an engine folder's manifest before and after building; a FIFO there hung it."""
    from virnucpro_trt.bench.configs import _manifest_text

    os.mkfifo(tmp_path / "manifest.json")
    assert _manifest_text(tmp_path / "manifest.json") is None
    (tmp_path / "m.json").write_text('{"a": 1}')
    assert _manifest_text(tmp_path / "m.json") == '{"a": 1}'


def test_a_build_told_to_wait_waits_for_the_other_and_then_finds_the_set_it_made(tiny_set, tmp_path):
    """Two ``bench`` runs sharing --workdir: the second's build of a configuration failed on the first's
    lock ("being written by another virnucpro-trt run"), which failed its row. Bench's builds now wait,
    then check the folder again and take the set the other build finished, without building it again."""
    import shutil
    import threading

    from virnucpro_trt.engines.build import BuildSettings, build_engines

    made = tmp_path / "made"
    assert build_tiny(tiny_set, made).code == 0
    folder = tmp_path / "engines"
    settings = BuildSettings(
        str(tiny_set.dnabert), str(tiny_set.esm_hf), str(tiny_set.classifier), folder, "onnxruntime", "fp32",
        "cpu", 512, 256,
    )  # fmt: skip
    outcomes = []
    with outdir_lock(folder):  # the other build, running
        waiting = threading.Thread(target=lambda: outcomes.append(build_engines(settings, wait=True)))
        waiting.start()
        waiting.join(3.0)
        assert waiting.is_alive() and not outcomes  # waiting, not refused
        for entry in made.iterdir():  # what the other build leaves: the same set
            shutil.copy2(entry, folder / entry.name)
    waiting.join(120)
    assert len(outcomes) == 1 and outcomes[0].built is False  # found made: not built again
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in made.iterdir())
