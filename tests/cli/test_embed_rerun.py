"""``embed`` run again onto its own finished output computes nothing; anything that changes the embeddings
(input, settings, weights, engines, the tool's version) computes them again, and ``--force`` always does.
Each case is the real CLI on the tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.cli.helpers import build_tiny, run_cli
from virnucpro_trt.files.ownership import RECORD
from virnucpro_trt.models import identity
from virnucpro_trt.pipeline import embed as embed_module
from virnucpro_trt.runtime import device


@pytest.fixture()
def proteins(tmp_path) -> Path:
    path = tmp_path / "in" / "proteins.faa"
    path.parent.mkdir()
    path.write_text(">p1\nMKTAYIAKQRQISFVKSHFSRQ\n>p2\nMDEKLLVAGW\n>empty\n\n")
    return path


@pytest.fixture()
def esm_copy(tiny_set, tmp_path) -> Path:
    """A private copy: tests replace its weights in place."""
    return Path(shutil.copytree(tiny_set.esm_hf, tmp_path / "esm2"))


def _embed(proteins: Path, weights: Path, out: Path, *extra: str):
    return run_cli(
        "embed", str(proteins), "--model", "esm2", "--weights", str(weights), "-o", str(out),
        "--device", "cpu", "--threads", "1", *extra,
    )  # fmt: skip


def _identity(path: Path) -> tuple[int, int, bytes]:
    """The file as written (a recomputed output is written again: a new modification time)."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, path.read_bytes()


def test_a_rerun_onto_its_own_output_computes_nothing(proteins, esm_copy, tmp_path, monkeypatch):
    out = tmp_path / "emb.h5"
    first = _embed(proteins, esm_copy, out)
    assert first.code == 0 and "PASSED: 3 embeddings" in first.stderr, first.stderr
    written = _identity(out)

    def no_loading(*args, **kwargs):
        raise AssertionError("the rerun loaded the model")

    def no_hashing(*args, **kwargs):
        raise AssertionError("the rerun hashed the checkpoint again")

    with monkeypatch.context() as patch:
        patch.setattr(embed_module, "open_models", no_loading)
        patch.setattr(identity, "sha256_of_files", no_hashing)
        again = _embed(proteins, esm_copy, out)
    assert again.code == 0, again.stderr
    assert "UP TO DATE: 3 embeddings" in again.stderr and "nothing to do" in again.stderr
    assert _identity(out) == written

    forced = _embed(proteins, esm_copy, out, "--force")
    assert forced.code == 0 and "PASSED" in forced.stderr and "computing" in forced.stderr
    assert _identity(out)[1] != written[1]  # written again
    assert _identity(out)[2] == written[2]  # with the same bytes


@pytest.mark.parametrize("change", ["input", "budget", "letters", "weights", "checkpoint path"])
def test_what_changes_the_embeddings_computes_them_again(proteins, esm_copy, tmp_path, change):
    out = tmp_path / "emb.h5"
    assert _embed(proteins, esm_copy, out).code == 0
    extra: tuple[str, ...] = ()
    weights = esm_copy
    if change == "input":
        proteins.write_text(proteins.read_text() + ">p3\nMKV\n")
    elif change == "budget":
        extra = ("--max-batch-tokens", "64")
    elif change == "letters":
        extra = ("--allow-nucleotide-letters",)
    elif change == "weights":  # other weights at the same path: the same stamps cannot be trusted
        (esm_copy / "config.json").write_text((esm_copy / "config.json").read_text() + "\n")
    else:  # the same weights elsewhere: still this run's output (content, not path, identifies them)
        weights = Path(shutil.copytree(esm_copy, tmp_path / "moved"))
    again = _embed(proteins, weights, out, *extra)
    assert again.code == 0, again.stderr
    if change == "checkpoint path":
        assert "UP TO DATE" in again.stderr
    else:
        assert "PASSED" in again.stderr and "UP TO DATE" not in again.stderr, change


@pytest.mark.parametrize(
    "made",
    ["garbage", None, {"key": "x"}, {"key": {}, "weights": {"sha256": 5}}, {"weights": {"stamps": []}}],
    ids=["a string", "null", "key a string", "key empty", "no key"],
)
def test_an_edited_record_computes_again(proteins, esm_copy, tmp_path, made):
    """The record is anyone's to edit: what it says the output was made from is compared, never trusted."""
    out = tmp_path / "emb.h5"
    assert _embed(proteins, esm_copy, out).code == 0
    record_file = tmp_path / RECORD
    record = json.loads(record_file.read_text())
    record["files"]["emb.h5"]["made"] = made
    record_file.write_text(json.dumps(record))
    again = _embed(proteins, esm_copy, out)
    assert again.code == 0 and "PASSED" in again.stderr, again.stderr


def test_another_version_computes_again(proteins, esm_copy, tmp_path, monkeypatch):
    out = tmp_path / "emb.h5"
    assert _embed(proteins, esm_copy, out).code == 0
    monkeypatch.setattr(embed_module, "__version__", "0.0.0-other")
    again = _embed(proteins, esm_copy, out)
    assert again.code == 0 and "PASSED" in again.stderr, again.stderr


def test_another_torch_release_computes_again(proteins, esm_copy, tmp_path, monkeypatch):
    """Eager embeddings are made by a torch release too (another may pick other kernels)."""
    out = tmp_path / "emb.h5"
    assert _embed(proteins, esm_copy, out).code == 0
    assert "UP TO DATE" in _embed(proteins, esm_copy, out).stderr
    monkeypatch.setattr(embed_module, "computing_releases", lambda backend=None: {"torch": "0.0.0+other"})
    again = _embed(proteins, esm_copy, out)
    assert again.code == 0 and "PASSED" in again.stderr, again.stderr


def test_another_onnxruntime_release_embeds_again(tiny_set, proteins, tmp_path, monkeypatch):
    """An ONNX Runtime set does not pin onnxruntime (its opset runs on any release since 1.14), so the
    release that computed is part of what the output is made from."""
    assert set(device.computing_releases("onnxruntime")) == {"torch", "onnxruntime"}
    assert set(device.computing_releases("inductor")) == {"torch"}  # its manifest pins torch
    engines = tmp_path / "engines"
    assert build_tiny(tiny_set, engines).code == 0
    out = tmp_path / "e.h5"
    args = ("embed", str(proteins), "--model", "esm2", "--engines", str(engines), "-o", str(out))
    assert run_cli(*args, "--threads", "1").code == 0
    assert "UP TO DATE" in run_cli(*args, "--threads", "1").stderr
    other = dict(device.computing_releases("onnxruntime"), onnxruntime="0.0.0")
    monkeypatch.setattr(embed_module, "computing_releases", lambda backend=None: other)
    again = run_cli(*args, "--threads", "1")
    assert again.code == 0 and "PASSED" in again.stderr, again.stderr


def test_an_input_changed_while_embedded_leaves_no_output(proteins, esm_copy, tmp_path, monkeypatch):
    """The input is hashed while validated, then read again to embed: rewritten in between (an editor
    saving in place), the embeddings would be of other bytes than the hash names, and every rerun would
    find them made. The run is refused in one line and leaves no output; the next run computes."""
    out = tmp_path / "emb.h5"
    reads = embed_module.read_records

    def rewritten_first(path, *args, **kwargs):
        proteins.write_text(proteins.read_text() + ">late\nMKV\n")
        return reads(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(embed_module, "read_records", rewritten_first)
        raced = _embed(proteins, esm_copy, out)
    assert raced.code == 2 and "changed while embed read it; run embed again" in raced.stderr, raced.stderr
    assert not out.exists()
    again = _embed(proteins, esm_copy, out)
    assert again.code == 0 and "PASSED: 4 embeddings" in again.stderr, again.stderr
    assert "UP TO DATE" in _embed(proteins, esm_copy, out).stderr


def test_an_output_changed_since_is_still_refused(proteins, esm_copy, tmp_path):
    out = tmp_path / "emb.h5"
    assert _embed(proteins, esm_copy, out).code == 0
    with open(out, "ab") as handle:
        handle.write(b"x")
    again = _embed(proteins, esm_copy, out)
    assert again.code == 2 and "changed since virnucpro-trt wrote it" in again.stderr


def test_a_rerun_on_engines_computes_nothing(tiny_set, proteins, tmp_path):
    engines = tmp_path / "engines"
    assert build_tiny(tiny_set, engines).code == 0
    out = tmp_path / "emb.h5"
    args = ("embed", str(proteins), "--model", "esm2", "--engines", str(engines), "-o", str(out))
    first = run_cli(*args, "--threads", "1")
    assert first.code == 0 and "PASSED" in first.stderr, first.stderr
    written = _identity(out)
    again = run_cli(*args, "--threads", "1")
    assert again.code == 0 and "UP TO DATE" in again.stderr, again.stderr
    assert _identity(out) == written
    budget = run_cli(*args, "--threads", "1", "--max-batch-tokens", "256")
    assert budget.code == 0 and "PASSED" in budget.stderr, budget.stderr


def test_a_made_up_hash_beside_real_stamps_is_not_written_into_the_output(proteins, esm_copy, tmp_path):
    """The record's stamps spare hashing for a skip only: embeddings computed after all carry the hash of
    the weights read now, not one copied from the (editable) record."""
    import h5py

    out = tmp_path / "emb.h5"
    assert _embed(proteins, esm_copy, out).code == 0
    with h5py.File(out, "r") as handle:
        real = handle.attrs["weights_sha256"]
    record_file = tmp_path / RECORD
    record = json.loads(record_file.read_text())
    record["files"]["emb.h5"]["made"]["weights"]["sha256"] = "0" * 64  # the stamps still match
    record_file.write_text(json.dumps(record))
    again = _embed(proteins, esm_copy, out)
    assert again.code == 0 and "PASSED" in again.stderr, again.stderr
    with h5py.File(out, "r") as handle:
        assert handle.attrs["weights_sha256"] == real
    assert "UP TO DATE" in _embed(proteins, esm_copy, out).stderr


@pytest.mark.parametrize(
    ("option", "said"),
    [(("--precision", "fp16"), "--precision fp16 asked"), (("--backend", "inductor"), "--backend inductor")],
)
def test_a_rerun_on_engines_refuses_what_a_fresh_run_refuses(tiny_set, proteins, tmp_path, option, said):
    """A named engine set's identity stands for its backend and precision in the key, so a rerun asking for
    others must be refused as a fresh run is, not told UP TO DATE."""
    engines = tmp_path / "engines"
    assert build_tiny(tiny_set, engines).code == 0
    out = tmp_path / "emb.h5"
    args = ("embed", str(proteins), "--model", "esm2", "--engines", str(engines), "--threads", "1")
    assert run_cli(*args, "-o", str(out)).code == 0
    written = _identity(out)
    for target in (out, tmp_path / "fresh.h5"):
        result = run_cli(*args, "-o", str(target), *option)
        assert result.code == 2 and said in result.stderr, result.stderr
        assert len([line for line in result.stderr.splitlines() if line.startswith("error:")]) == 1
    assert _identity(out) == written and not (tmp_path / "fresh.h5").exists()
