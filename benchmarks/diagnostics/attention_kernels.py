"""ESM-2 3B's attention on the batches a run makes, per kernel: which one is worth building in?

The fp8 engine spends ~23% of a forward in attention (the Sm80 memory-efficient kernel with the
key-padding mask made a float bias, plus the rotary/layout kernels around it: measurement log), and GEMMs
no longer dominate. Before an engine change, this times the candidates on the real shapes: 40 heads of
64, bf16, one batch per read-length mix as the token-budget batcher cuts it (the median batch of
``generated_workload``'s frames for ``fixed`` 500 bp, ``mixed`` and ``illumina``):

* ``efficient-mask`` — SDPA's memory-efficient kernel with the boolean key mask (the engines' today);
* ``cudnn-mask`` — cuDNN attention with the same mask (a plan per new shape: replays only here);
* ``default-mask`` — whatever SDPA picks for the masked call;
* ``flash-dense`` — FlashAttention on the padded batch *without* a mask: a lower bound, wrong where
  there is padding (no parity), right for batches of one length;
* ``flex-mask`` — ``flex_attention`` compiled, with a block mask from the lengths (mask creation timed
  apart); ``flex-score`` — the same with the padding as a score modifier (no block mask);
* ``varlen`` — the real tokens packed back to back, ``torch.nn.attention.varlen.varlen_attn`` (no
  padding, no mask), where this torch has it;
* ``rotary-efficient`` — the model's whole attention from the fused projection [B, T, 3, H, d] (q scaled,
  rotary on q and k, layout, SDPA's memory-efficient kernel with the mask) under ``torch.compile``: what
  an engine runs per layer today, rotary and layout kernels included;
* ``rotary-triton`` — the same function as the project's one Triton kernel
  (``engines.rotary_attention``); ``rotary-triton:MxNxWxS`` launches it with M queries and N keys per
  block, W warps and S stages instead of the engines' launch.

Each is the median of ``--iters`` calls after a warm-up, checked against the math kernel on the real
positions (max |diff|). A kernel this torch or device lacks is reported with the reason.

    python3 benchmarks/diagnostics/attention_kernels.py --json attention.json
    python3 benchmarks/diagnostics/attention_kernels.py --device cpu --reads 200 --kernels default-mask
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from virnucpro_trt.bench.hardware import script_environment
from virnucpro_trt.bench.report import write_json
from virnucpro_trt.bench.timing import call_times_ms
from virnucpro_trt.bench.workload import generated_workload
from virnucpro_trt.engines.spec import default_shape_range
from virnucpro_trt.models.esm2 import ESM2_T36_3B_CONFIG, RotaryEmbedding, sdpa_rotary_attention
from virnucpro_trt.models.tokenization import ProteinTokenizer
from virnucpro_trt.runtime.batching import token_budget_batches

KERNELS = (
    "efficient-mask", "cudnn-mask", "default-mask", "flash-dense", "flex-mask", "flex-score",
    "varlen", "rotary-efficient", "rotary-triton",
)  # fmt: skip
Inputs = dict[str, Any]


def median_batch(mix: str, reads: int, budget: int) -> np.ndarray:
    """Token lengths of the median-sized batch the runtime makes of ``mix``'s frames."""
    workload = generated_workload(reads, length_mix=mix)
    _, proteins = workload.frame_texts()
    lengths = np.array([len(t) for t in ProteinTokenizer().encode_batch(proteins)], dtype=np.int64)
    max_batch = default_shape_range("esm2", budget).max_batch
    batches = sorted(token_budget_batches(lengths, budget, max_batch), key=len)
    return lengths[batches[len(batches) // 2]]


def make_inputs(lengths: np.ndarray, heads: int, head_dim: int, device: torch.device) -> Inputs:
    gen = torch.Generator(device=device).manual_seed(0)
    batch, longest = len(lengths), int(lengths.max())

    def draw() -> torch.Tensor:
        return torch.randn(
            batch, heads, longest, head_dim, generator=gen, device=device, dtype=torch.bfloat16
        )

    q, k, v = draw(), draw(), draw()
    lens = torch.as_tensor(lengths, device=device)
    real = torch.arange(longest, device=device)[None, :] < lens[:, None]  # [B, T]
    qkv = torch.stack([t.transpose(1, 2) for t in (q, k, v)], dim=2).contiguous()  # [B, T, 3, H, d]
    cos, sin = RotaryEmbedding(head_dim).to(device).tables(longest, device)
    mask = real[:, None, None, :]
    return {
        "q": q,
        "k": k,
        "v": v,
        "lens": lens,
        "real": real,
        "mask": mask,
        "qkv": qkv,
        "cos": cos,
        "sin": sin,
    }


def as_heads(out: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, H * d] (the model's attention output) as [B, H, T, d], the layout the SDPA rows compare in."""
    batch, length, width = out.shape
    return out.view(batch, length, heads, width // heads).transpose(1, 2)


def rotary_reference(x: Inputs) -> torch.Tensor:
    """The model's attention from the projection in fp32 by the math kernel, [B, H, T, d]."""
    heads, head_dim = x["qkv"].shape[-2:]
    with sdpa_kernel([SDPBackend.MATH]):
        out = sdpa_rotary_attention(x["qkv"].float(), x["cos"], x["sin"], x["mask"], head_dim**-0.5)
    return as_heads(out, heads)


def rotary_efficient(x: Inputs) -> Callable[[], torch.Tensor]:
    heads, head_dim = x["qkv"].shape[-2:]
    compiled = (
        torch.compile(sdpa_rotary_attention, dynamic=False) if x["qkv"].is_cuda else sdpa_rotary_attention
    )

    backends = [SDPBackend.EFFICIENT_ATTENTION] if x["qkv"].is_cuda else [SDPBackend.MATH]

    def call() -> torch.Tensor:
        with sdpa_kernel(backends):
            return as_heads(compiled(x["qkv"], x["cos"], x["sin"], x["mask"], head_dim**-0.5), heads)

    return call


def rotary_triton(launch: str | None) -> Callable[[Inputs], Callable[[], torch.Tensor]]:
    def prepare(x: Inputs) -> Callable[[], torch.Tensor]:
        from virnucpro_trt.engines.rotary_attention import (
            AttentionLaunch,
            current_launch,
            kernel_unavailable_reason,
            launch_rotary_attention,
        )

        qkv = x["qkv"]
        reason = kernel_unavailable_reason(qkv.device, qkv.dtype, qkv.shape[-1])
        if reason is not None:
            raise RuntimeError(reason)
        chosen = AttentionLaunch(*(int(v) for v in launch.split("x"))) if launch else current_launch()
        x["facts"]["launch"] = dataclasses.asdict(chosen)
        heads, head_dim = x["qkv"].shape[-2:]

        def call() -> torch.Tensor:
            out = launch_rotary_attention(x["qkv"], x["cos"], x["sin"], x["real"], head_dim**-0.5, chosen)
            return as_heads(out, heads)

        return call

    return prepare


def sdpa(backends: list[SDPBackend] | None, masked: bool) -> Callable[[Inputs], Callable[[], torch.Tensor]]:
    def prepare(x: Inputs) -> Callable[[], torch.Tensor]:
        mask = x["mask"] if masked else None

        def call() -> torch.Tensor:
            if backends is None:
                return F.scaled_dot_product_attention(x["q"], x["k"], x["v"], attn_mask=mask)
            with sdpa_kernel(backends):
                return F.scaled_dot_product_attention(x["q"], x["k"], x["v"], attn_mask=mask)

        return call

    return prepare


def flex(x: Inputs) -> Callable[[], torch.Tensor]:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    lens = x["lens"]
    batch, _, longest, _ = x["q"].shape

    def key_padding(
        b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
    ) -> torch.Tensor:
        return kv_idx < lens[b]

    started = time.perf_counter()
    block_mask = create_block_mask(key_padding, batch, None, longest, longest, device=x["q"].device)
    x["facts"]["block_mask_ms"] = round(1e3 * (time.perf_counter() - started), 3)
    compiled = torch.compile(flex_attention, dynamic=False) if x["q"].is_cuda else flex_attention
    return lambda: compiled(x["q"], x["k"], x["v"], block_mask=block_mask)


def flex_score(x: Inputs) -> Callable[[], torch.Tensor]:
    """FlexAttention with the padding as a score modifier (every block computed, no block mask to build
    per batch): the form that exports with the model's other inputs."""
    from torch.nn.attention.flex_attention import flex_attention

    lens = x["lens"]

    def key_padding(
        score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
    ) -> torch.Tensor:
        return torch.where(kv_idx < lens[b], score, float("-inf"))

    compiled = torch.compile(flex_attention, dynamic=False) if x["q"].is_cuda else flex_attention
    return lambda: compiled(x["q"], x["k"], x["v"], score_mod=key_padding)


def varlen(x: Inputs) -> Callable[[], torch.Tensor]:
    from torch.nn.attention.varlen import varlen_attn  # torch >= 2.9

    real, lens = x["real"], x["lens"]
    packed = [t.transpose(1, 2)[real] for t in (x["q"], x["k"], x["v"])]  # [tokens, heads, dim]
    cu = F.pad(torch.cumsum(lens, 0), (1, 0)).to(torch.int32)
    longest = int(lens.max())
    batch, heads, length, dim = x["q"].shape

    def call() -> torch.Tensor:
        out = varlen_attn(*packed, cu, cu, longest, longest)
        padded = out.new_zeros(batch, length, heads, dim)
        padded[real] = out
        return padded.transpose(1, 2)

    return call


PREPARE: dict[str, Callable[[Inputs], Callable[[], torch.Tensor]]] = {
    "efficient-mask": sdpa([SDPBackend.EFFICIENT_ATTENTION], True),
    "cudnn-mask": sdpa([SDPBackend.CUDNN_ATTENTION], True),
    "default-mask": sdpa(None, True),
    "flash-dense": sdpa([SDPBackend.FLASH_ATTENTION], False),
    "flex-mask": flex,
    "flex-score": flex_score,
    "varlen": varlen,
    "rotary-efficient": rotary_efficient,
    "rotary-triton": rotary_triton(None),
}


def preparer(name: str) -> Callable[[Inputs], Callable[[], torch.Tensor]] | None:
    """The kernel ``name`` names: one of :data:`PREPARE`, or ``rotary-triton:MxNxWxS`` (a launch)."""
    if name.startswith("rotary-triton:"):
        return rotary_triton(name.split(":", 1)[1])
    return PREPARE.get(name)


def run_kernel(name: str, x: Inputs, reference: torch.Tensor, args: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"kernel": name}
    x["facts"] = row
    try:
        call = preparer(name)(x)
        times = call_times_ms(call, x["q"].device, args.warmup, args.iters)
        out = call()
    except Exception as exc:  # a kernel this torch/device lacks is a finding, not a crash
        row.update(status="unavailable", reason=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        return row
    real = x["real"][:, None, :, None]
    if name.startswith("rotary-"):
        reference = x["rotary_reference"]
    diff = ((out.float() - reference) * real).abs().max().item()
    _, heads, _, dim = x["q"].shape
    flops = 4 * heads * dim * float((x["lens"].double() ** 2).sum())  # QK^T and PV on the real tokens
    ms = statistics.median(times)
    row.update(
        status="ok",
        ms=round(ms, 4),
        real_tflops=round(flops / (ms * 1e-3) / 1e12, 2),
        max_abs_vs_math=None if name == "flash-dense" and bool((~x["real"]).any()) else round(diff, 5),
    )
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mixes", default="fixed,mixed,illumina")
    parser.add_argument("--kernels", default=",".join(KERNELS))
    parser.add_argument("--reads", type=int, default=6000)
    parser.add_argument("--max-batch-tokens", type=int, default=32768)
    parser.add_argument("--heads", type=int, default=ESM2_T36_3B_CONFIG.attention_heads)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    kernels = [k for k in args.kernels.split(",") if k]
    if unknown := [k for k in kernels if preparer(k) is None]:
        parser.error(f"unknown kernel {', '.join(unknown)}; known: {', '.join(KERNELS)}")
    head_dim = ESM2_T36_3B_CONFIG.head_dim
    results = []
    for mix in args.mixes.split(","):
        lengths = median_batch(mix, args.reads, args.max_batch_tokens)
        x = make_inputs(lengths, args.heads, head_dim, device)
        with sdpa_kernel([SDPBackend.MATH]):
            reference = F.scaled_dot_product_attention(
                x["q"].float(), x["k"].float(), x["v"].float(), attn_mask=x["mask"]
            )
        if any(k.startswith("rotary-") for k in kernels):
            x["rotary_reference"] = rotary_reference(x)
        entry = {
            "length_mix": mix,
            "batch": len(lengths),
            "longest": int(lengths.max()),
            "shortest": int(lengths.min()),
            "padded_fraction": round(1 - float(lengths.sum()) / (len(lengths) * int(lengths.max())), 4),
            "kernels": [run_kernel(name, x, reference, args) for name in kernels],
        }
        results.append(entry)
        for row in entry["kernels"]:
            shown = (
                f"{row['ms']:8.3f} ms {row['real_tflops']:7.1f} TFLOP/s  max|d| {row['max_abs_vs_math']}"
                if row["status"] == "ok"
                else f"unavailable: {row['reason'][:90]}"
            )
            print(
                f"{mix:9s} {entry['batch']:4d}x{entry['longest']:<4d} {row['kernel']:24s} {shown}", flush=True
            )
    report = {
        "benchmark": "attention_kernels",
        "command": " ".join(
            ["python3", "benchmarks/diagnostics/attention_kernels.py", *(argv or sys.argv[1:])]
        ),
        "environment": script_environment(device, with_onnxruntime=False),
        "workload": {"heads": args.heads, "head_dim": head_dim, "max_batch_tokens": args.max_batch_tokens},
        "results": results,
    }
    if args.json:
        write_json(report, args.json)
    print(json.dumps({"written": str(args.json)}) if args.json else "")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
