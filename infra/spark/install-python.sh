#!/usr/bin/env bash
# The image's Python environment at /opt/semhash/venv, the same steps and pins as scripts/setup.sh: torch first in
# a pip call of its own (CPU wheel, or CUDA from TORCH_INDEX), requirements.txt, Horovod 0.28.1 built from source
# with gloo and PyTorch (and NCCL for GPU collectives in the gpu variant), then the package (not editable).
set -euo pipefail
variant=${1:-cpu}
torch_index=${2:-https://download.pytorch.org/whl/cpu}
cd /opt/semhash
python3.11 -m venv venv
PIP="venv/bin/python -m pip --disable-pip-version-check"
$PIP install "pip==24.2" "setuptools==69.5.1" wheel
$PIP install --index-url "$torch_index" --extra-index-url https://pypi.org/simple "torch==2.13.0"
$PIP install -r requirements.txt
wrapdir=$(mktemp -d)
printf '#!/bin/sh\nexec %s "$@" -std=c++17\n' "$(command -v g++)" > "$wrapdir/cxx17"
chmod +x "$wrapdir/cxx17"
export CXX="$wrapdir/cxx17" HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
  HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)"
if [[ $variant == gpu ]]; then
  export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_NCCL_LINK=SHARED HOROVOD_CUDA_HOME=/usr/local/cuda
fi
$PIP install --no-build-isolation --no-cache-dir "horovod==0.28.1"
rm -rf "$wrapdir"
$PIP install --no-deps .
venv/bin/python -c "import torch, pyspark, petastorm, horovod.torch, boto3, semhash_spark; \
print('ok: torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'pyspark', pyspark.__version__)"
venv/bin/horovodrun --check-build
