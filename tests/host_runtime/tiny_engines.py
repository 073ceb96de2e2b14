"""Tiny engine directories for the host runtime's tests, built through the CLI."""

from __future__ import annotations

from pathlib import Path

from tests.cli.helpers import run_cli


def build_tiny_engines(tiny_set, out: Path, device: str) -> Path:
    """Tiny inductor fp32 engines built for ``device`` into ``out``."""
    result = run_cli(
        "build", "--dnabert", str(tiny_set.dnabert), "--esm", str(tiny_set.esm_hf), "--classifier",
        str(tiny_set.classifier), "--backend", "inductor", "--precision", "fp32", "--device", device,
        "-o", str(out),
    )  # fmt: skip
    assert result.code == 0, result.stderr
    return out
