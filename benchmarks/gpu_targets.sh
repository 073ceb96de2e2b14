#!/bin/bash
# Issue 11's targets on one CUDA GPU, the way the measurement log (docs/measurements.md) runs them:
# engines built through `build` and its parity gate, `bench` beside the torch.compile peer (500 bp, then
# the mixed and Illumina-like read lengths), the ESM-2 engine's kernel profile, `predict` against the
# engine alone (500 bp reads, then mixed lengths, where predict's per-shard batches pad more than the
# engine alone's: default shards, --max-padding, the old 256-read shards), the ESM-2 engine on
# shard-sized groups of mixed reads with and without a padding cap (settings.PaddingCap, opt-in), the
# C++ host against the Python runtime, a worker's steps to ready on the set (worker_ready_profile.py), and
# an ESM-2 package's load with its weights beside it against inside its library (the worker-ready lever;
# its own build of ESM-2 alone, both ways).
#
#   bash benchmarks/gpu_targets.sh STEP [PRECISION]   STEP: build bench mixes profile predict predict-mixed batching cxx ready load | all
#   DRY_RUN=1 bash benchmarks/gpu_targets.sh all fp8  prints the commands (tests/bench checks them)
#
# PRECISION: the engines' (fp8 or bf16; default fp8); the peer row is always compile-bf16, the targets'
# yardstick. Each step fits one 10-minute call of a lent GPU host; the steps share WORKDIR (models,
# engines) and Inductor's cache, so run them back to back on one machine, `build` first. JSON goes to
# OUT (default benchmarks/results/local), one file per step; copy what you keep into benchmarks/results
# with the machine in its name, and log it.
set -euo pipefail
step=${1:?"usage: $0 STEP [PRECISION] (STEP: build bench mixes profile predict predict-mixed batching cxx ready load all)"}
precision=${2:-fp8}
work=${WORKDIR:-/tmp/vtw}
out=${OUT:-benchmarks/results/local}
engines=$work/engines-inductor-$precision
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$work/inductor-cache}
run() { echo "+ $*"; if [[ ${DRY_RUN:-0} != 1 ]]; then mkdir -p "$out"; "$@"; fi; }
bench() {  # the engines and compile-bf16 on one workload; $1: a length mix, "" for 500 bp reads
  local mix=(--reference-frames 200) name=gpu_bench_${precision}_vs_compile_bf16
  [[ -n $1 ]] && mix=(--length-mix "$1" --reference-frames 100) && name=${name}_$1
  run python3 -m virnucpro_trt bench --random-weights full-outliers --workdir "$work" --reads 3000 \
    --backends compile --precision bf16 --engines "$engines" --repeats 2 "${mix[@]}" --json "$out/$name.json"
}
case $step in
  build)
    run python3 benchmarks/runtime_scaling.py --models full-outliers --backend inductor --precision "$precision" \
      --workdir "$work" --gpus 0 --build-only ;;
  bench) bench "" ;;
  mixes) bench mixed; bench illumina ;;
  profile)
    run python3 benchmarks/profile_esm2.py --precisions "$precision" --variants engine --engines "$engines" \
      --json "$out/gpu_profile_esm2_$precision.json" ;;
  predict)
    run python3 benchmarks/runtime_scaling.py --models full-outliers --backend inductor --precision "$precision" \
      --workdir "$work" --gpus 0 --reads 10000 --json "$out/gpu_runtime_scaling_1gpu_$precision.json" ;;
  predict-mixed)  # predict's default shards (and the encoders alone), then with a padding cap, then the old 256-read shards
    scaling=(python3 benchmarks/runtime_scaling.py --models full-outliers --backend inductor --precision "$precision"
      --workdir "$work" --gpus 0 --reads 20000 --length-mix mixed)
    name=$out/gpu_runtime_scaling_1gpu_${precision}_mixed
    run "${scaling[@]}" --json "$name.json"
    run "${scaling[@]}" --skip-alone --max-padding 0.05:8192 --json "${name}_cap.json"
    run "${scaling[@]}" --skip-alone --shard-records 256 --json "${name}_shards256.json" ;;
  batching)  # groups of 1,750 frames: a 1,536-read shard of mixed reads (100,000-read inputs)
    run python3 benchmarks/engines_throughput.py --models esm2 --configs "inductor-$precision" --length-mix mixed \
      --items 7000 --group-items 1750 --padding-caps none,0.05:8192,0.05:4096 --parity-items 192 --repeats 3 \
      --json "$out/gpu_engines_esm2_${precision}_padding_caps.json" ;;
  cxx)
    run python3 benchmarks/cxx_host_cuda.py --engines "$engines" --reads 4000 --build-dir "$work/cxx-build" \
      --json "$out/gpu_cxx_host_cuda_$precision.json" ;;
  ready)
    run python3 benchmarks/diagnostics/worker_ready_profile.py --engines "$engines" \
      --json "$out/gpu_worker_ready_profile_$precision.json" ;;
  load)
    run python3 benchmarks/diagnostics/package_weights_load.py --workdir "$work/weights-load" --precision "$precision" \
      --json "$out/gpu_package_weights_load_esm2_$precision.json" ;;
  all) for each in build bench mixes profile predict predict-mixed batching cxx ready load; do bash "$0" "$each" "$precision"; done ;;
  *) echo "unknown step '$step' (build bench mixes profile predict predict-mixed batching cxx ready load all)" >&2; exit 2 ;;
esac
