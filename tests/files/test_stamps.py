"""Stamps beside recorded digests: the same files are not re-hashed; any change makes them hashed.

A wrong shortcut would accept engines built from other weights, or resume with other weights, so the
tests below change files every way that matters (rewritten in place with size and mtime restored,
replaced by a copy with the old mtime, removed, another file set) and check the real digest is computed
again, and that a real content change is still refused.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from virnucpro_trt.engines.checkpoint_hashes import present_weights
from virnucpro_trt.engines.manifest import EngineDevice, EngineManifest, ModelEntry
from virnucpro_trt.files.digests import sha256_file, sha256_of_files
from virnucpro_trt.files.stamps import stamp_files, unchanged
from virnucpro_trt.models import identity
from virnucpro_trt.models.checkpoint_io import checkpoint_files

CPU = EngineDevice("cpu", "cpu", "cpu")


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_unchanged_files_match(tmp_path: Path) -> None:
    a, b = _file(tmp_path / "a.bin", b"x" * 100), _file(tmp_path / "b.bin", b"y" * 10)
    recorded = stamp_files([a, b])
    assert unchanged(recorded, [b, a])
    assert unchanged(recorded, [tmp_path / "." / "a.bin", b])  # the same file under another spelling
    assert not unchanged(recorded, [a])  # another file set
    assert not unchanged({}, [a, b]) and not unchanged(None, [a, b])


def test_every_change_breaks_the_match(tmp_path: Path) -> None:
    a = _file(tmp_path / "a.bin", b"x" * 100)
    recorded = stamp_files([a])
    before = os.stat(a)
    a.write_bytes(b"z" * 100)  # rewritten in place, same size
    os.utime(a, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    assert not unchanged(recorded, [a])

    recorded = stamp_files([a])
    before = os.stat(a)
    with open(a, "r+b") as handle:  # rewritten in place, then size AND mtime set back (touch -d):
        handle.write(b"q" * 100)
    os.utime(a, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(a)
    for field in ("st_size", "st_mtime_ns", "st_ino"):
        assert getattr(after, field) == getattr(before, field)
    assert not unchanged(recorded, [a])  # the ctime, which no user can set back, gives it away

    recorded = stamp_files([a])
    before = os.stat(a)
    copy = _file(tmp_path / "copy.bin", b"w" * 100)  # replaced by another file, old mtime restored
    os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns))
    copy.replace(a)
    assert os.stat(a).st_mtime_ns == before.st_mtime_ns and os.stat(a).st_size == before.st_size
    assert not unchanged(recorded, [a])

    a.unlink()
    assert not unchanged(recorded, [a])


def _manifest(tiny_esm: Path, classifier: Path, esm_sha: str, classifier_sha: str) -> EngineManifest:
    esm_stamp, classifier_stamp = stamp_files(checkpoint_files(tiny_esm)), stamp_files([classifier])
    entries = {
        "esm2": ModelEntry("esm2", "e.pt2", esm_sha, str(tiny_esm), source_stamp=esm_stamp),
        "classifier": ModelEntry(
            "classifier", "c.safetensors", classifier_sha, str(classifier), source_stamp=classifier_stamp
        ),
    }
    return EngineManifest("onnxruntime", "fp32", CPU, {}, entries)


def test_check_reuses_the_recorded_digest_only_for_unchanged_files(
    tiny_set, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    esm = tmp_path / "esm2"
    shutil.copytree(tiny_set.esm_hf, esm)
    classifier = tmp_path / "500_model.pth"
    shutil.copyfile(tiny_set.classifier, classifier)
    esm_sha, classifier_sha = sha256_of_files(checkpoint_files(esm)), sha256_file(classifier)
    manifest = _manifest(esm, classifier, esm_sha, classifier_sha)
    specs = {"esm2": str(esm), "classifier": str(classifier), "dnabert-s": None}

    hashed: list[str] = []

    def counting(real):  # type: ignore[no-untyped-def]
        def wrapper(arg):  # type: ignore[no-untyped-def]
            hashed.append(real.__name__)
            return real(arg)

        return wrapper

    monkeypatch.setattr(identity, "sha256_of_files", counting(sha256_of_files))
    monkeypatch.setattr(identity, "sha256_file", counting(sha256_file))

    assert present_weights(specs, manifest) == {"esm2": esm_sha, "classifier": classifier_sha}
    assert hashed == []  # nothing read

    weights = checkpoint_files(esm)[0]
    stat = os.stat(weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000))  # touched: hashed again, same digest
    assert present_weights(specs, manifest)["esm2"] == esm_sha
    assert hashed == ["sha256_of_files"]

    with open(classifier, "ab") as handle:  # really changed: hashed, and the digest differs
        handle.write(b"\0")
    assert present_weights(specs, manifest)["classifier"] != classifier_sha
    assert hashed == ["sha256_of_files", "sha256_of_files", "sha256_file"]
    assert present_weights(specs, None) == present_weights(specs, EngineManifest(
        "onnxruntime", "fp32", CPU, {}, {}
    ))  # fmt: skip


def test_a_digest_holds_for_the_stamped_file_unread_and_otherwise_by_its_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from virnucpro_trt.files import stamps

    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    digest, stamp = sha256_file(path), stamps.file_stamp(path)
    hashed: list[str] = []
    monkeypatch.setattr(stamps, "sha256_file", lambda p: hashed.append(str(p)) or sha256_file(p))
    assert stamps.digest_holds(path, "0" * 64, stamp) and hashed == []  # the stamp alone vouches
    assert stamps.digest_holds(path, digest, []) and stamps.digest_holds(path, digest, None)
    assert not stamps.digest_holds(path, "0" * 64, [])
    assert not stamps.digest_holds(path, "0" * 64, [stamp[0] + 1, *stamp[1:]])  # another stamp: hashed
    assert len(hashed) == 4
