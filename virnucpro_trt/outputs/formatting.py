"""Number formatting shared by all result files."""

from __future__ import annotations

import numpy as np


def f32(value: float | np.floating) -> str:
    """Python's ``str()`` of a numpy float32: the shortest text that reads back to the same float32.

    Upstream writes its scores this way (``0.12100612``), so the compatible files must too.
    """
    return str(np.float32(value))


def f32_column(values: np.ndarray) -> list[str]:
    """:func:`f32` over an array (iterating a float32 array yields float32 scalars)."""
    return [str(v) for v in np.asarray(values, dtype=np.float32)]
