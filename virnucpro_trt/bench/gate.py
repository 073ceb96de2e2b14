"""``--gate X``: the run passes only if the best engine is at least X times the reference.

Candidates are the *engines*: every configuration that ran (``status`` ok) other than ``reference``,
``torch`` and ``compile`` (the peer, ``torch.compile`` of the same models: not this project's engine),
because the claim the gate protects is "the project's compiled path beats upstream by X".
Only when no engine ran does eager ``torch`` stand in, and the message says so; with nothing but the
reference, the gate fails. A configuration whose answers failed the run's parity check (NaN, embeddings
off, decisive labels flipped: :mod:`virnucpro_trt.bench.parity`) is not a candidate either: a fast wrong
answer is not a speedup, and the message names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from virnucpro_trt.bench.config_names import NOT_ENGINES, REFERENCE


@dataclass(frozen=True)
class GateResult:
    threshold: float
    passed: bool
    best: str | None  # the best candidate's config name
    speedup: float | None
    candidates: str  # "engines" or "torch (no engine ran)" or "none"
    message: str  # one line, starts with PASSED or FAILED

    def to_json(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "passed": self.passed,
            "best": self.best,
            "speedup_vs_reference": self.speedup,
            "candidates": self.candidates,
            "rule": "best engine (not reference, torch or compile; torch only if no engine ran; rows "
            "that failed parity excluded) speedup_vs_reference >= threshold",
        }


def evaluate_gate(results: list[dict[str, Any]], threshold: float) -> GateResult:
    """Judge the rows of a report against ``threshold`` (a speedup over the reference)."""
    timed = [r for r in results if r.get("status") == "ok" and r.get("speedup_vs_reference") is not None]
    failed_parity = set(parity_failures(timed))
    wrong = [r for r in timed if r["config"] in failed_parity]
    ran = [r for r in timed if r not in wrong]
    engines = [r for r in ran if r["backend"] not in NOT_ENGINES]
    if engines:
        pool, label = engines, "engines"
    else:
        pool, label = [r for r in ran if r["backend"] == "torch"], "torch (no engine ran)"
    excluded = f" ({', '.join(r['config'] for r in wrong)} failed parity and do not count)" if wrong else ""
    if not pool:
        return GateResult(
            threshold, False, None, None, "none",
            f"FAILED: gate {threshold:g}x: no engine (and no torch configuration) ran against the reference "
            f"with answers that pass parity{excluded}",
        )  # fmt: skip
    best = max(pool, key=lambda r: r["speedup_vs_reference"])
    speedup = float(best["speedup_vs_reference"])
    passed = speedup >= threshold
    what = "best engine" if label == "engines" else "no engine ran; best torch configuration"
    verdict = "PASSED" if passed else "FAILED"
    relation = ">=" if passed else "<"
    message = (
        f"{verdict}: gate {threshold:g}x: {what} {best['config']} at {speedup:.2f}x the reference "
        f"({relation} {threshold:g}x){excluded}"
    )
    return GateResult(threshold, passed, best["config"], speedup, label, message)


def parity_failures(results: list[dict[str, Any]]) -> list[str]:
    """The configurations that ran but whose answers failed the run's parity check (never the reference,
    which the others are compared with)."""
    return [
        r["config"]
        for r in results
        if r.get("status") == "ok" and r["backend"] != REFERENCE and not _parity_passed(r)
    ]


def _parity_passed(row: dict[str, Any]) -> bool:
    """Rows without parity figures (a reference-less report) are taken at their word."""
    parity = row.get("parity")
    return parity is None or bool(parity.get("passed", True))
