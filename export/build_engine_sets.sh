#!/usr/bin/env bash
# Build every engine set a host of this GPU architecture needs, in one go, with the real build command.
#
#   export/build_engine_sets.sh --dnabert P --esm P --classifier P -o OUT [--device cuda:0] \
#       [--sets "inductor:bf16 onnxruntime:bf16 tensorrt:bf16"] [--max-batch-tokens N]
#
# Each set goes to OUT/<arch>/<backend>-<precision>/ (arch from the set's own manifest: sm90, cpu...), so
# one OUT folder can collect the sets of several machine types and each host picks its own. A set whose
# backend cannot build here (e.g. TensorRT not installed) is recorded as "unavailable" and the others go
# on; a set that fails (including its parity gate) makes the script exit 1. OUT/BUILD_SUMMARY.tsv lists
# every set with its status, seconds and the one-line reason.
set -uo pipefail

python=${PYTHON:-python3}
sets="inductor:bf16 onnxruntime:bf16 tensorrt:bf16"
device=cuda:0
out=""
models=()
extra=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --dnabert|--esm|--classifier) models+=("$1" "$2"); shift 2 ;;
    --device) device=$2; shift 2 ;;
    --sets) sets=$2; shift 2 ;;
    --max-batch-tokens|--max-length) extra+=("$1" "$2"); shift 2 ;;
    -o|--output) out=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "Error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -z $out || ${#models[@]} -ne 6 ]]; then
  echo "Error: give --dnabert, --esm, --classifier and -o OUT (see --help)" >&2
  exit 2
fi
mkdir -p "$out"
summary="$out/BUILD_SUMMARY.tsv"
printf 'set\tarch\tstatus\tseconds\tdetail\n' > "$summary"
failed=0
for set in $sets; do
  backend=${set%%:*}
  precision=${set##*:}
  staging="$out/.staging-$backend-$precision"
  rm -rf "$staging"
  started=$(date +%s)
  log=$("$python" -m virnucpro_trt build "${models[@]}" --backend "$backend" --precision "$precision" \
        --device "$device" -o "$staging" "${extra[@]}" -q 2>&1)
  rc=$?
  seconds=$(( $(date +%s) - started ))
  detail=$(printf '%s\n' "$log" | grep -v '^\s*$' | tail -n 1 | tr '\t' ' ')
  if [[ $rc -eq 0 ]]; then
    arch=$("$python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["device"]["arch"])' \
           "$staging/manifest.json")
    target="$out/$arch/$backend-$precision"
    rm -rf "$target" && mkdir -p "$out/$arch" && mv "$staging" "$target"
    printf '%s\t%s\tbuilt\t%s\t%s\n' "$set" "$arch" "$seconds" "$target" >> "$summary"
  elif [[ $rc -eq 2 ]]; then
    printf '%s\t-\tunavailable\t%s\t%s\n' "$set" "$seconds" "$detail" >> "$summary"
  else
    printf '%s\t-\tfailed\t%s\t%s\n' "$set" "$seconds" "$detail" >> "$summary"
    failed=1
  fi
  rm -rf "$staging"
done
column -t -s $'\t' "$summary" 2>/dev/null || cat "$summary"
exit $failed
