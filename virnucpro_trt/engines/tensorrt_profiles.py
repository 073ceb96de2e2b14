"""TensorRT optimization profiles derived from the token budget, and the profile each batch runs on.

Why several profiles. One profile spanning the whole :class:`ShapeRange` has its max corner at the
largest batch AND the longest sequence (2048 x 1026 for ESM-2 3B), where the attention scores and bias
(batch x heads x length x length) hold 9e10 elements: past the 2^31-element limit many TensorRT 10
layers have, so the build fails or picks no kernel. The runtime never sends such a batch: its token
budget caps batch x padded length (:func:`~virnucpro_trt.runtime.batching.token_budget_batches`). So the
length range is cut into a few intervals; each interval's profile allows the batch the budget allows at
its shortest length, and ends at the longest length for which that batch keeps the largest
intermediate (:meth:`EncoderDims.largest_elements`) within the limit. Intervals at least double in
length, so there are a handful of profiles (four for ESM-2 3B at the default budget, two for DNABERT-S).

Which profile a batch runs on: the profile covering its length with the largest batch; a batch larger
than that (a run with a bigger ``--max-batch-tokens`` than the build's, or a budget so large that the
element limit binds) runs in consecutive chunks of at most the profile's batch. Pure logic, no torch and
no TensorRT: :mod:`~virnucpro_trt.engines.tensorrt_backend` reads the profiles back from the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from virnucpro_trt.engines.spec import ShapeRange
from virnucpro_trt.errors import BuildError, EngineMismatchError, ShapeRangeError

# Largest element count of one tensor that TensorRT 10 layers reliably accept (volume < 2^31).
MAX_ELEMENTS = 2**31 - 1
Shape2 = tuple[int, int]  # (batch, length)


@dataclass(frozen=True)
class EncoderDims:
    """What sizes an encoder's largest intermediates, per (batch, length).

    ``heads``: attention scores and the additive bias are batch x heads x length x length.
    ``widest``: the widest per-token activation (the feed-forward expansion), batch x length x widest.
    """

    heads: int
    widest: int

    def largest_elements(self, batch: int, length: int) -> int:
        return batch * length * max(self.heads * length, self.widest)

    def to_json(self) -> dict[str, int]:
        return {"heads": self.heads, "widest": self.widest}


@dataclass(frozen=True)
class Profile:
    """One optimization profile: min/opt/max (batch, length), the same for both inputs."""

    min: Shape2
    opt: Shape2
    max: Shape2

    @property
    def max_batch(self) -> int:
        return self.max[0]

    def covers_length(self, length: int) -> bool:
        return self.min[1] <= length <= self.max[1]

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Profile:
        return cls(*(_shape2(data[key]) for key in ("min", "opt", "max")))


def _shape2(values: Any) -> Shape2:
    batch, length = (int(v) for v in values)
    return batch, length


def derive_profiles(
    shapes: ShapeRange,
    dims: EncoderDims,
    max_batch_tokens: int | None,
    max_elements: int = MAX_ELEMENTS,
) -> list[Profile]:
    """Profiles covering ``shapes``' lengths, each within ``max_elements`` at its max corner.

    ``max_batch_tokens`` is the budget the engine is built for (``None``: no budget, i.e. the whole
    ``max_batch`` at every length). Raises :class:`BuildError` when one sequence of the longest length
    alone is past the limit (nothing can be built; lower ``--max-length``).
    """
    if max_elements < 1 or (max_batch_tokens is not None and max_batch_tokens < 1):
        raise ValueError("max_elements and max_batch_tokens must be positive")
    longest = dims.largest_elements(shapes.min_batch, shapes.max_length)
    if longest > max_elements:
        raise BuildError(
            f"a batch of {shapes.min_batch} sequence(s) of {shapes.max_length} tokens needs tensors of "
            f"{longest:,} elements, past TensorRT's {max_elements:,}: lower --max-length"
        )
    budget = max_batch_tokens or shapes.max_batch * shapes.max_length
    profiles: list[Profile] = []
    low = shapes.min_length
    while low <= shapes.max_length:
        wanted = min(shapes.max_batch, max(shapes.min_batch, budget // low))
        high = max(_longest_within(dims, wanted, low, shapes.max_length, max_elements), low)
        high = max(high, min(2 * low - 1, shapes.max_length))  # at least double: few profiles
        # >= min_batch: the check above holds at the longest length, so at every shorter one too.
        batch = min(wanted, max_elements // dims.largest_elements(1, high))
        opt_length = min(max(shapes.opt_length, low), high)
        opt_batch = min(batch, max(shapes.min_batch, budget // opt_length))
        profiles.append(Profile((shapes.min_batch, low), (opt_batch, opt_length), (batch, high)))
        low = high + 1
    return profiles


def _longest_within(dims: EncoderDims, batch: int, low: int, high: int, max_elements: int) -> int:
    """The longest length in [low, high] at which ``batch`` sequences stay within the limit (or low - 1)."""
    if dims.largest_elements(batch, low) > max_elements:
        return low - 1
    while low < high:  # largest_elements grows with the length: bisect for the last one that fits
        middle = (low + high + 1) // 2
        if dims.largest_elements(batch, middle) <= max_elements:
            low = middle
        else:
            high = middle - 1
    return low


def choose_profile(profiles: list[Profile], batch: int, length: int) -> int:
    """Index of the profile a (batch, length) batch runs on: among those covering ``length``, the one
    taking the largest batch (fewest chunks), then the one ending soonest (kernels tuned closest)."""
    covering = [i for i, p in enumerate(profiles) if p.covers_length(length) and p.min[0] <= batch]
    if not covering:
        ranges = ", ".join(f"{p.min[1]}..{p.max[1]}" for p in profiles)
        raise ShapeRangeError(f"no TensorRT profile covers length {length} (profiles: {ranges})")
    return min(covering, key=lambda i: (-profiles[i].max_batch, profiles[i].max[1]))


def batch_chunks(profiles: list[Profile], batch: int, length: int) -> list[tuple[int, int, int]]:
    """``(profile index, start, stop)`` row ranges that together run a batch of ``batch`` x ``length``."""
    index = choose_profile(profiles, batch, length)
    step = profiles[index].max_batch
    return [(index, start, min(start + step, batch)) for start in range(0, batch, step)]


def check_coverage(profiles: list[Profile], shapes: ShapeRange) -> None:
    """Every length of ``shapes`` is covered by some profile (an engine whose profiles leave a gap, or
    stop short of the range the manifest promises, is refused when it is loaded)."""
    covered = sorted((p.min[1], p.max[1]) for p in profiles)
    reach = shapes.min_length - 1
    for low, high in covered:
        if low > reach + 1:
            break
        reach = max(reach, high)
    if not profiles or reach < shapes.max_length:
        raise EngineMismatchError(
            f"the engine's profiles cover lengths up to {reach}, its shape range promises "
            f"{shapes.min_length}..{shapes.max_length}: rebuild the engines"
        )
