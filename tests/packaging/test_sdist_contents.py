"""What git ignores never ships in the sdist. MANIFEST.in grafts whole folders (tests, benchmarks, docs),
and setuptools reads the folder on disk, not git: without its own excludes, a maintainer's local
benchmark results (``benchmarks/gpu_targets.sh`` writes ``benchmarks/results/local/``) or an interrupted
write's ``*.partial`` file went into the archive built from that checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# One file per .gitignore entry that can lie inside a grafted folder.
PLANTED = (
    "benchmarks/results/local/h200_run.json",
    "benchmarks/results/local/sub/more.json",
    "tests/data/example.fa.partial",
    "benchmarks/results/h200_run.json.partial",
    "tests/__pycache__/stray.cpython-311.pyc",
)


@pytest.mark.slow
def test_nothing_git_ignores_goes_into_the_sdist(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout (its tracked files are the sdist's source)")
    tree = tmp_path / "tree"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tree / name)
    for name in PLANTED:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("local\n")
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *PLANTED], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()  # fmt: skip
    assert sorted(ignored) == sorted(PLANTED)  # each stands for an entry of .gitignore

    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--outdir", str(dist), str(tree)], check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    (sdist,) = dist.glob("virnucpro_trt-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert "benchmarks/gpu_targets.sh" in names and "tests/conftest.py" in names
    assert sorted(set(PLANTED) & names) == []
    assert not [name for name in names if name.startswith("benchmarks/results/local")]
