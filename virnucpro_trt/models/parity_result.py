"""The parity gate's result for one encoder: what ``build`` records and what reads it back.

Made by the gate (:func:`virnucpro_trt.engines.parity.compare`), written into the encoder's entry of its
engine manifest (``models.<kind>.parity``), read back from there as hostile JSON
(:meth:`ParityResult.from_json`) and carried by the engine's
:class:`~virnucpro_trt.models.origin.EncoderOrigin` to ``bench``. It lives here, below ``engines``, because
that origin carries it (DEVELOPERS.md, "Imports point down; seams are typed"). No torch: the manifest
reader, which ``virnucpro-trt`` imports without torch, reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from virnucpro_trt.files.json_fields import FieldError, count, flag, obj, text, within

__all__ = ["ParityResult"]

MAX_PARITY_TEXT = 1 << 10  # precision, rule and batch names: a few dozen characters
MAX_BATCH_KINDS = 64  # min_cosine_by_batches: the gate runs two kinds of batch
# What a manifest's parity block must hold; min_cosine_by_batches and max_relative came later within schema 2
# (absent: () and None).
_REQUIRED = ("precision", "items", "max_abs", "min_cosine", "finite", "passed", "rule")


@dataclass(frozen=True)
class ParityResult:
    """How close an engine came to the fp32 PyTorch model on the gate's synthetic batch, and whether that
    passed the precision's rule. ``max_abs`` is ``inf`` and ``min_cosine`` NaN where the engine gave NaN
    or Inf (``finite`` false): recorded as such (JSON's ``Infinity``/``NaN``) in a set kept by
    ``build --keep-failing``."""

    precision: str
    items: int
    max_abs: float
    min_cosine: float
    finite: bool
    passed: bool
    rule: str
    # min cosine of each kind of batch the gate ran ("mixed lengths", "equal lengths"), so that a failed
    # gate says where the engine went wrong (an engine may take another path for batches without padding)
    min_cosine_by_batches: tuple[tuple[str, float], ...] = ()
    # fp32 only: the largest row difference's L2 norm over the reference row's (the fp32 rule's second
    # bound); None for other precisions and in sets built before it was recorded
    max_relative: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "items": self.items,
            "max_abs": self.max_abs,
            "min_cosine": self.min_cosine,
            "finite": self.finite,
            "passed": self.passed,
            "rule": self.rule,
            "min_cosine_by_batches": dict(self.min_cosine_by_batches),
            **({"max_relative": self.max_relative} if self.max_relative is not None else {}),
        }

    @classmethod
    def from_json(cls, data: Any) -> ParityResult:
        """The block :meth:`to_json` writes; :class:`FieldError` for a missing key or a value of another
        type. Keys it does not know are ignored, as everywhere in a manifest (its seal covers them)."""
        data = obj(data, "parity")
        for key in _REQUIRED:
            if key not in data:
                raise FieldError(f"{key}: missing")
        by_batches = obj(data.get("min_cosine_by_batches", {}), "min_cosine_by_batches")
        if len(by_batches) > MAX_BATCH_KINDS or any(len(name) > MAX_PARITY_TEXT for name in by_batches):
            raise FieldError(f"min_cosine_by_batches: over {MAX_BATCH_KINDS} kinds of batch, or a long name")
        return cls(
            precision=text(data, "precision", max_chars=MAX_PARITY_TEXT),
            items=count(data, "items"),
            max_abs=_figure(data, "max_abs"),
            min_cosine=_figure(data, "min_cosine"),
            finite=flag(data, "finite"),
            passed=flag(data, "passed"),
            rule=text(data, "rule", max_chars=MAX_PARITY_TEXT),
            min_cosine_by_batches=_batch_figures(by_batches),
            max_relative=_figure(data, "max_relative") if "max_relative" in data else None,
        )

    def describe(self) -> str:
        where = "; ".join(f"{name} {cos:.6f}" for name, cos in self.min_cosine_by_batches)
        relative = f", max relative L2 {self.max_relative:.3g}" if self.max_relative is not None else ""
        return (
            f"max |diff| {self.max_abs:.3g}{relative}, min cosine {self.min_cosine:.6f}"
            f"{f' ({where})' if where else ''}, "
            f"{'finite' if self.finite else 'NaN/Inf present'} (rule: {self.rule})"
        )


def _batch_figures(by_batches: dict[str, Any]) -> tuple[tuple[str, float], ...]:
    with within("min_cosine_by_batches"):
        return tuple((name, _figure(by_batches, name)) for name in by_batches)


def _figure(data: dict[str, Any], key: str) -> float:
    """A number of the gate: any JSON number a float holds, ``NaN`` and ``Infinity`` included (what the
    gate records for an engine that gave them), never ``true``/``false`` or an integer past any float."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FieldError(f"{key}: not a number")
    try:
        return float(value)
    except OverflowError:  # 10**400
        raise FieldError(f"{key}: not a number a float holds") from None
