#!/bin/bash
# torchao for the GPU hosts, which cannot download: `bench --backends compile --precision fp8` (the
# torch.compile peer's float8 quantisation) and benchmarks/profile_esm2.py's torchao variant need it.
#
#   here (network):   bash benchmarks/stage_torchao.sh            -> .device/bin/wheels/torchao-*.whl
#   on the GPU host:  bash benchmarks/stage_torchao.sh install    -> /tmp/vt-site (send .device/bin along)
#
# The wheel lands beside the other staged wheels, so ../shared/gpu's `setup.sh 0` installs it too. 0.18.0
# is the torchao release built for torch 2.11 (the hosts' torch); its compiled extensions are optional
# (float8 row-wise inference goes through torch._scaled_mm), so a mismatch only costs a warning.
set -euo pipefail
version=${TORCHAO_VERSION:-0.18.0}
top=$(git rev-parse --show-toplevel 2>/dev/null || pwd)
cd "$top"
wheels=.device/bin/wheels
if [[ ${1:-stage} == install ]]; then
  whl=$(ls "$wheels"/torchao-*.whl 2>/dev/null | head -1)
  [[ -n $whl ]] || { echo "no torchao wheel in $wheels: run this script without 'install' where there is network"; exit 1; }
  (cd "$wheels" && sha256sum -c torchao.sha256 >/dev/null) || { echo "torchao wheel corrupt: stage it again"; exit 1; }
  mkdir -p /tmp/vt-site
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/vt-site "$whl"
  PYTHONPATH="/tmp/vt-site${PYTHONPATH:+:$PYTHONPATH}" python3 -c \
    "import torch; from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_; import torchao; print('torchao', torchao.__version__, 'importable with torch', torch.__version__)"
  exit 0
fi
mkdir -p "$wheels"
rm -f "$wheels"/torchao-*.whl
${PYTHON:-python3} -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  -d "$wheels" "torchao==$version"
(cd "$wheels" && sha256sum torchao-*.whl > torchao.sha256)
echo "staged: $(ls "$wheels"/torchao-*.whl) ($(du -h "$wheels"/torchao-*.whl | cut -f1)); on the host: bash benchmarks/stage_torchao.sh install"
