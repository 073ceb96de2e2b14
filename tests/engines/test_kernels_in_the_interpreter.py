"""The project's Triton kernels checked on the CPU, by Triton's interpreter, in every test run.

The GPU tests time and check the compiled kernels on the H200; without a GPU, the interpreter runs the
same kernel source with numpy, which catches what an edit to a kernel's arithmetic or indexing breaks
(the rotary by halves, the padding, the bias, the row statistics) before any GPU is lent. Triton decides
at a kernel's definition whether to interpret it, from ``TRITON_INTERPRET``, so the checks
(``interpreted_kernels.py``) run in a child pytest with it set, away from this session's imports.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_the_triton_kernels_compute_their_references_in_the_interpreter() -> None:
    import triton  # a dev dependency: the interpreter comes with it (CUDA builds of torch bring it too)

    env = {**os.environ, "TRITON_INTERPRET": "1"}
    checks = HERE / "interpreted_kernels.py"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(checks)]
    done = subprocess.run(command, cwd=HERE.parents[1], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"triton {triton.__version__}:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary
