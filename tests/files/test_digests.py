"""SHA-256 of files read as hostile: a pseudo-file that reports size 0 and yields without end is refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.cli.helpers import run_cli
from virnucpro_trt.files.digests import MoreBytesThanItsSize, sha256_file


def test_a_plain_file_hashes_as_its_bytes(tmp_path: Path) -> None:
    for size in (0, 1, (1 << 24) + 7):
        path = tmp_path / f"f{size}"
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        path.write_bytes(data)
        assert sha256_file(path) == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("pseudo", ["/proc/self/status", "/proc/self/pagemap"])
def test_a_proc_file_is_refused_not_hashed_for_ever(pseudo: str) -> None:
    """``/proc/self/pagemap`` reports size 0 and yields hundreds of GB: hashed for 280 s (helper-42)."""
    with pytest.raises(MoreBytesThanItsSize, match="holds more bytes than its size says"):
        sha256_file(pseudo)


def test_a_weights_file_linked_to_proc_is_refused_in_one_line(tiny_set, reads_fasta, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "dnabert"
    shutil.copytree(tiny_set.dnabert, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    (folder / "pytorch_model.bin").unlink(missing_ok=True)
    (folder / "pytorch_model.bin").symlink_to("/proc/self/pagemap")
    result = run_cli(
        "predict", str(reads_fasta), "-o", str(tmp_path / "out"), "--dnabert", str(folder), "--esm",
        str(tiny_set.esm_hf), "--classifier", str(tiny_set.classifier), "--device", "cpu",
    )  # fmt: skip
    last = result.stderr.strip().splitlines()[-1]
    assert result.code == 2 and last.startswith("error: ") and "pytorch_model.bin: holds more bytes" in last
    assert "Traceback" not in result.stderr


def test_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    """Opened without blocking and typed on the descriptor, as every bounded read is (one path for merge's
    part check and every other hash)."""
    import os

    from virnucpro_trt.files.bounded_read import NotARegularFile

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(NotARegularFile, match="not a regular file"):
        sha256_file(fifo)
