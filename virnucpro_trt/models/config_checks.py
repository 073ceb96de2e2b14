"""Checks on the sizes an encoder config declares, shared by :mod:`~virnucpro_trt.models.dnabert` and
:mod:`~virnucpro_trt.models.esm2` configs and their loaders.

A config comes from a file (config.json, a fair-esm ``.pt``'s namespace) and is hostile input: a head
count of 0 is a division by zero, -8 or 7 heads over 128 channels is no attention layout, a negative
LayerNorm epsilon yields NaN, and 20 million layers is a module that never finishes being built. Each
rule raises ``ValueError`` with a message naming the field; the loaders turn it into one
:class:`~virnucpro_trt.errors.CheckpointError` line naming the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from virnucpro_trt.errors import show_value

MAX_ENCODER_LAYERS = 1024
"""More transformer layers than any encoder we load will have (the largest published ESM-2 has 48,
DNABERT-S 12): a config claiming more is refused before anything is sized from it."""

MAX_LAYER_NORM_EPS = 0.1
"""LayerNorm epsilons are 1e-12..1e-5 in practice; one above this (or <= 0, NaN, inf) is not a model's."""


def as_float(value: Any) -> float | None:
    """A JSON or pickled number as a float (``inf`` when too large for one); None for anything else,
    ``True`` included. What an epsilon check reads before it judges the range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def checked_layer_norm_eps(value: Any, what: str) -> float:
    """A LayerNorm epsilon: a finite number in (0, :data:`MAX_LAYER_NORM_EPS`], else ValueError.

    LayerNorm divides by sqrt(var + eps): a negative or zero eps turns constant rows into NaN or Inf, and
    NaN or a huge eps silently flattens every activation.
    """
    eps = as_float(value)
    if eps is None:
        raise ValueError(f"{what} is {show_value(value)}, expected a number")
    if not math.isfinite(eps) or not 0 < eps <= MAX_LAYER_NORM_EPS:
        raise ValueError(
            f"{what} is {show_value(value)}, expected a finite number > 0 and <= {MAX_LAYER_NORM_EPS}"
        )
    return eps


def config_int(value: Any, what: str) -> int:
    """A size read from a config: an integer (an integral float is accepted), else ValueError.

    ``int()`` alone would take ``True`` as 1, truncate 12.7 to 12 and parse strings.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} is {show_value(value)}, expected an integer")
    return value


def config_bool(value: Any, what: str) -> bool:
    """A flag read from a config: ``true``/``false`` (or 0/1), else ValueError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{what} is {show_value(value)}, expected true or false")


def check_encoder_sizes(sizes: Mapping[str, int], width: str, heads: str, layers: str) -> None:
    """ValueError unless every size in ``sizes`` (field name -> value) is >= 1, the layer count
    ``sizes[layers]`` is at most :data:`MAX_ENCODER_LAYERS` and ``sizes[heads]`` divides
    ``sizes[width]`` (0 heads is a division by zero; -8 or 7 heads over 128 channels is no attention
    layout at all)."""
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name} is {value}, expected a positive integer")
    if sizes[layers] > MAX_ENCODER_LAYERS:
        raise ValueError(
            f"{layers} is {sizes[layers]}, more than any encoder has ({MAX_ENCODER_LAYERS} at most)"
        )
    if sizes[width] % sizes[heads]:
        raise ValueError(f"{width} {sizes[width]} is not a multiple of {heads} {sizes[heads]}")
