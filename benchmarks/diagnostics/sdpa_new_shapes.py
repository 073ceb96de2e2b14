"""What an attention call costs the first time it sees a (batch, length) shape, per SDPA kernel.

Why: DNABERT-S inside a ``predict`` run cost 2-3x its steady time per frame on the H200, and
``dnabert_in_run.py`` showed the cost follows *new* shapes: the same 79 per-shard batches took 2.83 s of
GPU time the first time and 0.96 s when replayed. A run's batches have a different (batch, length) almost
every call (each shard's frames are length-sorted and cut by the token budget). cuDNN attention builds
and caches an execution plan per shape, which is the suspect; the memory-efficient kernel has no plan.

For the two encoders' real attention shapes (DNABERT-S: 12 heads, float ALiBi+padding bias; ESM-2 3B: 40
heads, boolean key-padding mask; head size 64, bf16) this times, per kernel, the first call on each of
``--shapes`` fresh (batch, length) pairs and a replay of the same pairs, and prints which kernel
``scaled_dot_product_attention`` picks by default.

    PYTHONPATH=$PWD python3 benchmarks/diagnostics/sdpa_new_shapes.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

KERNELS = {
    "default": None,
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "math": [SDPBackend.MATH],
}
ENCODERS = {"dnabert": (12, "bias", (96, 120)), "esm": (40, "bool", (160, 176))}


def inputs(heads: int, mask_kind: str, batch: int, length: int) -> tuple[torch.Tensor, ...]:
    q, k, v = (torch.randn(batch, heads, length, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    if mask_kind == "bias":
        mask = torch.randn(batch, heads, length, length, device="cuda", dtype=torch.bfloat16)
    else:
        mask = torch.ones(batch, 1, 1, length, device="cuda", dtype=torch.bool)
        mask[:, :, :, length - 3 :] = False
    return q, k, v, mask


def timed_calls(shapes: list[tuple[int, int]], heads: int, mask_kind: str, kernel: Any) -> list[float]:
    out = []
    for batch, length in shapes:
        args = inputs(heads, mask_kind, batch, length)
        torch.cuda.synchronize()
        started = time.perf_counter()
        with sdpa_kernel(kernel) if kernel else torch.inference_mode():
            F.scaled_dot_product_attention(*args[:3], attn_mask=args[3])
        torch.cuda.synchronize()
        out.append((time.perf_counter() - started) * 1000)
    return out


def fresh_shapes(count: int, lo: int, hi: int, seed: int) -> list[tuple[int, int]]:
    gen = torch.Generator().manual_seed(seed)
    batches = torch.randint(60, 330, (count,), generator=gen).tolist()
    lengths = torch.randint(lo, hi, (count,), generator=gen).tolist()
    return list(zip(batches, lengths, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=int, default=20)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report: dict[str, Any] = {
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "device": torch.cuda.get_device_name(0),
    }
    for encoder, (heads, mask_kind, (lo, hi)) in ENCODERS.items():
        q, k, v, mask = inputs(heads, mask_kind, 4, lo)
        choice = torch._fused_sdp_choice(q, k, v, mask, 0.0, False)
        names = {int(b): b.name for b in SDPBackend.__members__.values()}
        row: dict[str, Any] = {"default_choice": names.get(int(choice), str(choice)), "kernels": {}}
        for seed, (name, kernel) in enumerate(KERNELS.items()):
            shapes = fresh_shapes(args.shapes, lo, hi, seed)  # per kernel: no plan cached by another
            try:
                timed_calls([(8, lo)], heads, mask_kind, kernel)  # load the kernel itself first
                first = timed_calls(shapes, heads, mask_kind, kernel)
                replay = timed_calls(shapes, heads, mask_kind, kernel)
            except RuntimeError as exc:
                row["kernels"][name] = {"error": str(exc).splitlines()[0][:200]}
                continue
            row["kernels"][name] = {
                "first_ms_mean": round(sum(first) / len(first), 3),
                "first_ms_max": round(max(first), 3),
                "replay_ms_mean": round(sum(replay) / len(replay), 3),
            }
        report[encoder] = row
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
