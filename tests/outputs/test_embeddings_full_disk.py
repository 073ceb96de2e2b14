"""An HDF5 output on a full disk: one line, no leftover, a rerun that finishes.

HDF5 writes its cached chunks when it sees fit; a write that failed there left the library broken, and
the process printed pages of tracebacks from h5py's ``__dealloc__`` and then segfaulted (exit 139),
``embed`` and ``predict --save-embeddings`` alike. A file-size limit fails writes the way a full disk
does (EFBIG instead of ENOSPC, the same path), so each case runs in a child process under one.
"""

from __future__ import annotations

import resource
import signal
import subprocess
import sys

import pytest

from tests.cli.helpers import run_cli

WRITER = """
import sys
from pathlib import Path
import numpy as np
from virnucpro_trt.outputs.embeddings_h5 import EmbeddingsWriter
try:
    with EmbeddingsWriter(Path(sys.argv[1]), 256, {"model": "test"}) as writer:
        for block in range(20):
            ids = [f"r{block}-{i}" for i in range(100)]
            writer.append(ids, np.ones((100, 256), np.float32), ["ok"] * 100)
        writer.commit()
except OSError as exc:
    print("refused", exc.errno, exc.filename)
"""


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _run(args: list[str], limit: int) -> subprocess.CompletedProcess[str]:
    limited = _limit_file_size(limit)
    return subprocess.run(args, capture_output=True, text=True, timeout=300, preexec_fn=limited)


def test_a_failed_write_is_one_oserror_naming_the_output_and_leaves_nothing(tmp_path):
    out = tmp_path / "e.h5"
    done = _run([sys.executable, "-c", WRITER, str(out)], limit=200_000)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    assert done.stdout.split() == ["refused", "27", str(out)]  # EFBIG, the final name
    assert list(tmp_path.iterdir()) == []
    whole = _run([sys.executable, "-c", WRITER, str(out)], limit=100_000_000)
    assert whole.returncode == 0 and whole.stdout == "" and whole.stderr == "", whole.stderr[-2000:]
    import h5py

    with h5py.File(out, "r") as handle:
        assert handle["embeddings"].shape == (2000, 256) and handle["ids"][-1] == b"r19-99"


@pytest.mark.slow
def test_embed_onto_a_full_disk_says_so_in_one_line_and_the_rerun_finishes(tiny_set, tmp_path):
    reads = tmp_path / "reads.fa"
    reads.write_text("".join(f">r{i}\n{'ACGT' * 30}\n" for i in range(300)))
    out = tmp_path / "out" / "emb.h5"
    out.parent.mkdir()
    args = ["embed", str(reads), "--model", "dnabert-s", "--weights", str(tiny_set.dnabert), "-o", str(out),
            "--device", "cpu", "--threads", "1"]  # fmt: skip
    full = _run([sys.executable, "-m", "virnucpro_trt", *args], limit=64_000)
    lines = [line for line in full.stderr.splitlines() if "Traceback" in line or line.startswith("error:")]
    assert full.returncode == 1 and lines == [
        f"error: File too large ({out}): free space (or raise the limit) and rerun the same command"
    ], full.stderr[-3000:]
    assert list(out.parent.iterdir()) == []  # no partial file, no lock, no record
    again = run_cli(*args)
    assert again.code == 0 and "PASSED: 300 embeddings" in again.stderr, again.stderr
