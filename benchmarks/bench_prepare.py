"""Benchmark the CPU prepare path on one core: parse + validate + chunk + translate + write both files.

The goal (>= 50,000 reads/s of 500 bp on ONE core) exists so that the CPU side never starves the GPUs,
so this pins itself to a single CPU and single-threaded math libraries before numpy is imported.
Inputs are synthetic, deterministic and mixed coding / non-coding (see ``sequences.synthetic``).

    python benchmarks/bench_prepare.py --reads 200000 --length 500 --json bench_prepare.json
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported, or its thread pools are already sized

import argparse  # noqa: E402
import gzip  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from virnucpro_trt import __version__  # noqa: E402
from virnucpro_trt.bench.report import write_json  # noqa: E402
from virnucpro_trt.environment import cpu_model  # noqa: E402
from virnucpro_trt.sequences.prepare import write_identified_files  # noqa: E402
from virnucpro_trt.sequences.reader import read_records  # noqa: E402
from virnucpro_trt.sequences.synthetic import generate_reads, write_fasta  # noqa: E402


def _pin_one_cpu(cpu: int | None) -> int | None:
    """Pin to one CPU (the first allowed one unless told), where the OS lets us."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    chosen = cpu if cpu is not None else allowed[0]
    os.sched_setaffinity(0, {chosen})
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=200_000)
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--chunk-length", type=int, default=500, choices=(300, 500))
    parser.add_argument("--coding-fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions; the median is reported")
    parser.add_argument("--gzip", action="store_true", help="feed a gzip-compressed input")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: first allowed)")
    parser.add_argument("--json", type=Path, default=None, help="write the result and environment here")
    args = parser.parse_args(argv)

    cpu = _pin_one_cpu(args.cpu)
    workdir = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        fasta = workdir / ("reads.fa.gz" if args.gzip else "reads.fa")
        t0 = time.perf_counter()
        reads = generate_reads(args.reads, args.length, args.seed, args.coding_fraction)
        plain = workdir / "reads.fa"
        write_fasta(reads, str(plain))
        if args.gzip:
            with open(plain, "rb") as src, gzip.open(fasta, "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst)
        del reads
        print(f"generated {args.reads} reads of {args.length} bp in {time.perf_counter() - t0:.1f} s")

        times, counts = [], {}
        for rep in range(args.repeat + 1):  # the first run warms the page cache and is not counted
            out = workdir / f"out{rep}"
            start = time.perf_counter()
            counts = write_identified_files(read_records(fasta), out, args.chunk_length)
            elapsed = time.perf_counter() - start
            if rep:
                times.append(elapsed)
            shutil.rmtree(out)
        median = statistics.median(times)
        reads_per_s = counts["records"] / median
        frames_per_s = counts["frames"] / median
        print(
            f"prepare: {reads_per_s:,.0f} reads/s, {frames_per_s:,.0f} kept frames/s, "
            f"{counts['bases'] / median / 1e6:.1f} Mbases/s (median of {len(times)}: "
            f"{', '.join(f'{t:.3f}' for t in times)} s) on 1 CPU [{cpu_model()}]"
        )
        print(f"counts: {counts}")
        result = {
            "benchmark": "prepare",
            "reads": args.reads,
            "read_length": args.length,
            "chunk_length": args.chunk_length,
            "coding_fraction": args.coding_fraction,
            "seed": args.seed,
            "gzip_input": args.gzip,
            "counts": counts,
            "seconds": times,
            "median_seconds": median,
            "reads_per_s": reads_per_s,
            "frames_per_s": frames_per_s,
            "goal_reads_per_s": 50_000,
            "passed": reads_per_s >= 50_000,
            "environment": {
                "python": sys.version.split()[0],
                "numpy": np.__version__,
                "virnucpro_trt": __version__,
                "cpu_model": cpu_model(),
                "pinned_cpu": cpu,
                "platform": platform.platform(),
            },
        }
        if args.json:
            write_json(result, args.json)
            print(f"wrote {args.json}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
