"""Where the time of loading an AOTInductor engine goes (DEVELOPERS.md, "Open problems": ~48-51 s per
worker for the full-size inductor bf16 set on the H200, against 15 s for the eager models).

``aoti_load_package`` extracts the ``.pt2`` into a fresh ``/tmp/XXXXXX`` folder, opens the wrapper
``.so`` and copies the constants (the weights) onto the device. This script loads each ``.pt2`` of an
engine directory while a monitor thread samples, twice a second, the process's read and write volume
(``/proc/self/io``), the size of the extraction folders that appeared in ``/tmp`` and the device memory
in use, so the timeline shows which phase is slow (unzip to disk, reading, host-to-device copies). A
second load of the same file tells a cold page cache from a slow loader.

    PYTHONPATH=$PWD python3 benchmarks/diagnostics/engine_load_time.py ENGINE_DIR [--json OUT]

Outcome (H200, benchmarks/results/h200_engine_load_time.json): the first load of the ESM-2 package took
56.1 s with no file I/O for ~50 s, a second load 4.1 s — a once-per-process cost, found by
first_load_profile.py and fixed in ``engines/inductor_runner.load_package``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from virnucpro_trt.engines.inductor_runner import load_package
from virnucpro_trt.engines.manifest import EngineManifest


def _io() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/io").read_text().splitlines():
        key, value = line.split(":")
        fields[key] = int(value)
    return fields


def _tmp_dirs() -> set[Path]:
    return {p for p in Path("/tmp").iterdir() if p.is_dir() and len(p.name) == 6}


def _tree_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):  # a file may vanish while the loader cleans up
                total += os.path.getsize(os.path.join(root, name))
    return total


class Monitor(threading.Thread):
    """Samples I/O, new /tmp extraction folders and device memory until stopped."""

    def __init__(self, device: torch.device, before: set[Path]):
        super().__init__(daemon=True)
        self.device = device
        self.before = before
        self.samples: list[dict[str, Any]] = []
        self.halt = threading.Event()
        self.start_time = time.perf_counter()

    def run(self) -> None:
        io0 = _io()
        while not self.halt.is_set():
            io = _io()
            sample = {
                "t": round(time.perf_counter() - self.start_time, 2),
                "read_gb": round((io["rchar"] - io0["rchar"]) / 1e9, 2),
                "written_gb": round((io["wchar"] - io0["wchar"]) / 1e9, 2),
                "tmp_gb": round(sum(_tree_bytes(d) for d in _tmp_dirs() - self.before) / 1e9, 2),
            }
            if self.device.type == "cuda":
                free, total = torch.cuda.mem_get_info(self.device)
                sample["device_used_gb"] = round((total - free) / 1e9, 2)
            self.samples.append(sample)
            self.halt.wait(0.5)


def time_load(path: Path, device: torch.device) -> dict[str, Any]:
    before = _tmp_dirs()
    monitor = Monitor(device, before)
    monitor.start()
    started = time.perf_counter()
    compiled = load_package(path, device)  # with its weights, since recipe 9
    seconds = time.perf_counter() - started
    monitor.halt.set()
    monitor.join()
    leftover = sorted(str(d) for d in _tmp_dirs() - before)
    del compiled
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
    return {"seconds": round(seconds, 2), "leftover_tmp_dirs": leftover, "timeline": monitor.samples}


def read_speed(path: Path) -> dict[str, float]:
    started = time.perf_counter()
    with open(path, "rb") as handle:
        while handle.read(1 << 26):
            pass
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "gb_per_s": round(path.stat().st_size / 1e9 / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engines", type=Path)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    manifest = EngineManifest.read(args.engines)
    report: dict[str, Any] = {"torch": torch.__version__, "engines": str(args.engines), "models": {}}
    if device.type == "cuda":
        torch.cuda.init()
        torch.zeros(1, device=device)  # CUDA context outside the timings
    for kind in ("esm2", "dnabert-s"):
        path = args.engines / manifest.models[kind].artifact
        with zipfile.ZipFile(path) as archive:
            entries = sorted(archive.infolist(), key=lambda i: i.file_size, reverse=True)[:6]
        row = {
            "size_gb": round(path.stat().st_size / 1e9, 2),
            "largest_entries": [
                {"name": i.filename, "gb": round(i.file_size / 1e9, 3), "compressed": i.compress_type != 0}
                for i in entries
            ],
            "read": read_speed(path),
            "first_load": time_load(path, device),
            "second_load": time_load(path, device),
        }
        report["models"][kind] = row
        print(kind, json.dumps({k: v for k, v in row.items() if k != "largest_entries"})[:3000], flush=True)
        print(kind, "largest entries:", json.dumps(row["largest_entries"]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
