"""The comparison as a table: rich on a terminal, fixed-width text in logs and CI.

Rows that did not run stay in the table with their status; their reasons follow it, one line each, so
the reader sees what was not measured next to what was.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

from virnucpro_trt.bench.gate import parity_failures

COLUMNS = (
    "config", "status", "frames", "frames/s", "reads/s", "tokens/s", "speedup", "vs compile",
    "DNABERT cos", "ESM cos", "labels", "max|dp|", "padding",
)  # fmt: skip


def _number(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def table_rows(report: dict[str, Any]) -> list[list[str]]:
    """The cells of every row, as strings (shared by the plain and the rich table)."""
    rows = []
    for r in report["results"]:
        parity = r.get("parity") or {}
        frames = "-" if r["frames"] is None else f"{r['frames']:,}" + ("*" if r["extrapolated"] else "")
        speedup = r["speedup_vs_reference"]
        vs_compile = r.get("speedup_vs_compile")
        rows.append(
            [
                r["config"],
                r["status"],
                frames,
                _number(r["frames_per_s"]),
                _number(r["reads_per_s"]),
                _number(r["tokens_per_s"], 0),
                "-" if speedup is None else f"{speedup:.2f}x",
                "-" if vs_compile is None else f"{vs_compile:.2f}x",
                _number(parity.get("dnabert_min_cos"), 6),
                _number(parity.get("esm_min_cos"), 6),
                "-" if parity.get("label_agreement") is None else f"{100 * parity['label_agreement']:.2f}%",
                "-" if parity.get("max_abs_score_diff") is None else f"{parity['max_abs_score_diff']:.2e}",
                _padding(r.get("padding")),
            ]
        )
    return rows


def _padding(padding: dict[str, Any] | None) -> str:
    """``DNABERT-S%/ESM-2%`` of padded tokens among the computed ones."""
    if not padding:
        return "-"
    return "/".join(f"{100 * padding[k]['padded_fraction']:.1f}%" for k in ("dnabert", "esm") if k in padding)


def footnotes(report: dict[str, Any]) -> list[str]:
    """Why rows did not run or failed parity, and what the starred and derived columns mean."""
    rows = report["results"]
    notes = [f"{r['config']}: {r['status']}: {r['reason']}" for r in rows if r["status"] != "ok"]
    failed = set(parity_failures(rows))  # the gate's rule of which rows failed parity
    for r in rows:
        if r["config"] in failed:
            parity = r["parity"]
            notes.append(
                f"{r['config']}: parity FAILED ({parity.get('rule')}): {_parity_figures(parity)}"
                + _frames_off_note(r, rows)
            )
    if any(r["extrapolated"] for r in rows):
        notes.append(
            f"* timed on a subset of the {report['workload']['frames']:,} frames and extrapolated per frame"
        )
    baselines = sorted(
        f"{r['config']} vs {r['compile_baseline']}"
        for r in rows
        if r.get("compile_baseline") and r["compile_baseline"] != f"compile-{r['precision']}"
    )
    if baselines:
        notes.append("vs compile: no compile row at their precision, compared with: " + ", ".join(baselines))
    if any(r.get("padding") for r in rows):
        notes.append("padding: padded tokens / computed tokens of the batches that ran, DNABERT-S/ESM-2")
    return notes


def _all_frames_off(row: dict[str, Any]) -> set[str] | None:
    """The ids of every frame a row's parity found off, or None when it listed only the worst of them."""
    parity = row.get("parity") or {}
    listed = parity.get("frames_off") or []
    if parity.get("frames_off_count", 0) > len(listed):
        return None
    return {f["frame"] for f in listed}


def _frames_off_note(row: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """How many frames are off and the worst; and which other rows of the same precision are off on all
    of the same frames (then a rounding of that precision, not the row's own code, is the likely cause:
    README, "A bf16 row can fail parity because of the weights")."""
    parity = row["parity"]
    listed = parity.get("frames_off") or []
    if not listed:
        return ""
    worst = listed[0]
    note = (
        f"; {parity['frames_off_count']} frame(s) off, worst {worst['frame']} (DNABERT-S cos "
        f"{_number(worst['dnabert_cos'], 6)}, ESM-2 {_number(worst['esm_cos'], 6)}"
        + (", label flipped)" if worst["label_flipped"] else ")")
    )
    mine = _all_frames_off(row)
    alike = [
        other["config"]
        for other in rows
        if other is not row
        and other["status"] == "ok"
        and other.get("precision") == row.get("precision")
        and mine
        and (theirs := _all_frames_off(other)) is not None
        and mine <= theirs
    ]
    return note + (f"; {', '.join(alike)} off on the same frames" if alike else "")


def _parity_figures(parity: dict[str, Any]) -> str:
    decisive = parity.get("decisive_label_agreement")
    return (
        f"DNABERT-S min cos {_number(parity.get('dnabert_min_cos'), 6)}, "
        f"ESM-2 min cos {_number(parity.get('esm_min_cos'), 6)}, "
        f"decisive labels {_number(None if decisive is None else 100 * decisive, 2)}%"
    )


def _title(report: dict[str, Any]) -> str:
    hw, wl = report["hardware"], report["workload"]
    where = hw.get("gpu") or f"CPU ({hw.get('cpu')}, {hw.get('torch_threads')} threads)"
    return (
        f"{wl['reads']:,} reads ({wl['source']}) -> {wl['frames']:,} frames, "
        f"{report['models']['source']}, on {where}"
    )


def print_plain(report: dict[str, Any], stream: TextIO) -> None:
    rows = table_rows(report)
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(COLUMNS)]
    stream.write(_title(report) + "\n")
    line = "  ".join(
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(COLUMNS, widths, strict=True))
    )
    stream.write(line + "\n")
    for row in rows:
        cells = (
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        stream.write("  ".join(cells).rstrip() + "\n")
    for note in footnotes(report):
        stream.write(note + "\n")


def print_rich(report: dict[str, Any], stream: TextIO, width: int | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=_title(report), caption="\n".join(footnotes(report)) or None, caption_justify="left")
    for i, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if i < 2 else "right", no_wrap=i == 0)
    styles = {"ok": None, "unavailable": "dim", "failed": "red"}
    for r, cells in zip(report["results"], table_rows(report), strict=True):
        table.add_row(*cells, style=styles.get(r["status"]))
    Console(file=stream, width=width).print(table)


def print_table(report: dict[str, Any], stream: TextIO | None = None, rich: bool | None = None) -> None:
    """Print the comparison; ``rich`` None means "rich when ``stream`` is a terminal"."""
    stream = stream or sys.stdout
    if rich is None:
        rich = stream.isatty()
    (print_rich if rich else print_plain)(report, stream)
