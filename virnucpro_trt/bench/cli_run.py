"""Running the real ``virnucpro-trt`` CLI from a measurement script, as a user would.

The scripts in ``benchmarks/`` time ``build`` and ``predict`` through the command line (a fresh
interpreter, the real argument parsing, the files a user gets), then read ``run.json``. A failing
command ends the script with the tail of its log instead of a figure from a broken run.
"""

from __future__ import annotations

import subprocess
import sys
import time


def run_cli(*args: str) -> float:
    """Run ``virnucpro-trt ARGS`` in a child interpreter; its wall seconds (SystemExit when it fails)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "virnucpro_trt", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"virnucpro-trt {args[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return time.perf_counter() - started
