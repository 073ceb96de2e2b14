"""Shapes of an AOTInductor graph: export ``Dim``s, the hint example, and the runner's padding rule.

The engine's :class:`~virnucpro_trt.engines.spec.ShapeRange` is what the batcher promises; the compiled
graph may accept a slightly different box, for two reasons:

* ``sequence_multiple`` m > 1 exports the token dimension as ``m * Dim(blocks)``, so every length the
  graph sees is a multiple of m; the runner right-pads with the pad id and mask 0 (the encoders ignore
  masked keys and pool only over real tokens, so the result does not change). The largest graph length is
  the engine's maximum rounded up to m.
* The exporter decides the final lower bounds. torch 2.13 honours ``min=1`` on a plain input ``Dim``
  (batch 1 stays dynamic) but treats the root of a derived dim like any backed size and raises its
  minimum to 2 (``8*Dim('blocks', min=1)`` exports as blocks in [2, ...]); other versions have
  specialised size-1 dims differently. Instead of guessing per version, :func:`exported_bounds` reads the
  bounds back from the exported program and the runner pads smaller inputs up to them (extra rows copy
  row 0, so no row is all-padding and nothing can turn NaN; their outputs are dropped).

The example handed to the exporter is tiled to the ``opt`` point of the range: its sizes become the
symbolic-shape hints that Inductor uses when it autotunes kernels (``max_autotune`` benchmarks GEMMs at
the hint), so they should be the batch the runtime batcher actually produces. Both sizes are kept >= 2
(a 1 would specialise the dimension) and the values are irrelevant (export traces with fake tensors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.export import Dim, ExportedProgram

from virnucpro_trt.engines.spec import ShapeRange

META_PREFIX = "virnucpro."


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class GraphShapes:
    """The box of (batch, length) a compiled graph accepts; lengths are multiples of ``sequence_multiple``."""

    min_batch: int
    max_batch: int
    min_length: int
    max_length: int
    sequence_multiple: int = 1

    def __post_init__(self) -> None:
        m = self.sequence_multiple
        if m < 1 or self.min_length % m or self.max_length % m:
            raise ValueError(f"lengths {self.min_length}..{self.max_length} are not multiples of {m}")
        if not (1 <= self.min_batch <= self.max_batch and 1 <= self.min_length <= self.max_length):
            raise ValueError(f"empty graph shape box {self}")

    @classmethod
    def plan(cls, shapes: ShapeRange, sequence_multiple: int, min_batch: int = 1) -> GraphShapes:
        """The box to request from the exporter for an engine range (``min_batch`` forces a floor)."""
        m = sequence_multiple
        return cls(
            min_batch=min(max(shapes.min_batch, min_batch), shapes.max_batch),
            max_batch=shapes.max_batch,
            min_length=round_up(shapes.min_length, m),
            max_length=round_up(shapes.max_length, m),
            sequence_multiple=m,
        )

    def dynamic_shapes(self) -> dict[str, dict[int, Any]]:
        """``dynamic_shapes`` for ``torch.export.export(model, (input_ids, attention_mask))``."""
        dims: dict[int, Any] = {}
        if self.min_batch < self.max_batch:
            dims[0] = Dim("batch", min=self.min_batch, max=self.max_batch)
        m = self.sequence_multiple
        lo, hi = self.min_length // m, self.max_length // m
        if lo < hi:
            dims[1] = (
                Dim("sequence", min=lo, max=hi) if m == 1 else m * Dim("sequence_blocks", min=lo, max=hi)
            )
        return {"input_ids": dict(dims), "attention_mask": dict(dims)}

    def hint(self, shapes: ShapeRange) -> tuple[int, int]:
        """Example (batch, length): the engine's opt point, inside the box, >= 2 wherever dynamic."""
        m = self.sequence_multiple

        def pick(opt: int, lo: int, hi: int) -> int:
            return lo if lo == hi else min(max(opt, lo, 2), hi)

        batch = pick(shapes.opt_batch, self.min_batch, self.max_batch)
        blocks = pick(math.ceil(shapes.opt_length / m), self.min_length // m, self.max_length // m)
        return batch, blocks * m

    def padded_shape(self, batch: int, length: int) -> tuple[int, int]:
        """The (batch, length) the graph runs for an input of ``batch`` x ``length`` (see :meth:`pad`)."""
        return max(batch, self.min_batch), max(round_up(length, self.sequence_multiple), self.min_length)

    def pad(self, input_ids: np.ndarray, attention_mask: np.ndarray, pad_id: int) -> tuple[np.ndarray, ...]:
        """Right-pad a batch into the box: length up to a multiple (and the minimum) with pad/mask 0,
        batch up to the minimum with copies of row 0. Returns the inputs unchanged when they fit."""
        batch, length = input_ids.shape
        rows, cols = self.padded_shape(batch, length)
        if (rows, cols) == (batch, length):
            return input_ids, attention_mask
        ids = np.full((rows, cols), pad_id, dtype=np.int64)
        mask = np.zeros((rows, cols), dtype=np.int64)
        ids[:batch, :length] = input_ids
        mask[:batch, :length] = attention_mask
        ids[batch:] = ids[0]
        mask[batch:] = mask[0]
        return ids, mask

    def to_metadata(self) -> dict[str, str]:
        return {f"{META_PREFIX}graph.{k}": str(v) for k, v in self.__dict__.items()}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> GraphShapes:
        """Inverse of :meth:`to_metadata`; ``KeyError`` when the package was not built by this backend."""
        return cls(**{k: int(metadata[f"{META_PREFIX}graph.{k}"]) for k in cls.__dataclass_fields__})


def tile_example(
    example: tuple[torch.Tensor, torch.Tensor], batch: int, length: int
) -> tuple[torch.Tensor, ...]:
    """Repeat rows/columns of the given example to exactly [batch, length] (values only need the dtype)."""
    out = []
    for tensor in example:
        rows, cols = tensor.shape
        tiled = tensor.repeat(math.ceil(batch / rows), math.ceil(length / cols))
        out.append(tiled[:batch, :length].to(torch.int64).contiguous())
    return tuple(out)


def exported_bounds(program: ExportedProgram, requested: GraphShapes) -> GraphShapes:
    """The box the exporter actually kept (it may raise minimums to 2), read from its range constraints."""
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder" and n.name == "input_ids"]
    if not placeholders:  # input names are preserved by torch.export; fall back to the request
        return requested
    sizes = placeholders[0].meta["val"].shape
    bounds = []
    for size in sizes[:2]:
        if isinstance(size, int):
            bounds.append((size, size))
            continue
        expr = size.node.expr
        lows = {s: program.range_constraints[s].lower for s in expr.free_symbols}
        highs = {s: program.range_constraints[s].upper for s in expr.free_symbols}
        bounds.append((int(expr.subs(lows)), int(expr.subs(highs))))
    (b_lo, b_hi), (t_lo, t_hi) = bounds
    return GraphShapes(b_lo, b_hi, t_lo, t_hi, requested.sequence_multiple)
