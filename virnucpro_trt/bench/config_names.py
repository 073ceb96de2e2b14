"""The names of bench's configurations and options, in one torch-free table: the CLI builds its choices
and help from it at start-up, and the report, the gate and the plot tell the rows apart by it.

A configuration is ``reference`` (upstream's way, always fp32) or ``<backend>-<precision>``, where the
backend is ``torch`` (eager), an engine backend (``settings.ENGINE_BACKENDS``) or ``compile`` (the peer:
``torch.compile`` of the same models).
"""

from __future__ import annotations

from virnucpro_trt.errors import UserError
from virnucpro_trt.settings import ENGINE_BACKENDS, PRECISIONS

REFERENCE = "reference"
EAGER = "torch"
PEER = "compile"
BENCH_BACKENDS = (EAGER, *ENGINE_BACKENDS, PEER)
DEFAULT_BENCH_BACKENDS = (EAGER, *ENGINE_BACKENDS)  # the peer runs when asked for: it compiles for minutes
NOT_ENGINES = (REFERENCE, EAGER, PEER)  # rows that are not this project's compiled engines
AUTO_PRECISION = "auto"
BENCH_PRECISIONS = (AUTO_PRECISION, *PRECISIONS)
# --random-weights: the real shapes or tiny ones; -outliers scales a few LayerNorm gain channels 20-50x.
RANDOM_SIZES = ("full", "tiny", "full-outliers", "tiny-outliers")


def parse_precisions(text: str) -> tuple[str, ...]:
    """``bf16,fp8`` -> ``("bf16", "fp8")``; ``auto`` stays until the device is known. Order kept,
    repeats dropped; a name outside :data:`BENCH_PRECISIONS` is a :class:`UserError`."""
    names = tuple(dict.fromkeys(name for raw in text.split(",") if (name := raw.strip().lower())))
    if not names or any(n not in BENCH_PRECISIONS for n in names):
        choices = ", ".join(BENCH_PRECISIONS)
        raise UserError(f"--precision {text!r}: expected a comma-separated list of {choices}")
    return names
