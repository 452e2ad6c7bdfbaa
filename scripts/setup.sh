#!/usr/bin/env bash
# Creates .venv with every dependency pinned (requirements.txt: the development lock), builds Horovod (gloo, PyTorch;
# SEMHASH_HOROVOD=0 skips it), installs the package editable. Packages come from pip's own configuration.
# Idempotent: re-running it with unchanged requirements does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
VENV=${SEMHASH_VENV:-.venv}
TORCH_PIN="torch==2.13.0"
HOROVOD_PIN="horovod==0.28.1"
stamp_key=$(cat requirements.txt pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [[ -f "$VENV/.semhash-setup" && "$(cat "$VENV/.semhash-setup")" == "$stamp_key" ]]; then
  exit 0
fi
echo "[setup] creating $VENV with $($PY --version)"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
export PIP_NO_WARN_SCRIPT_LOCATION=1
$PIP install --upgrade "pip==24.2" "setuptools==69.5.1" wheel
echo "[setup] torch"
# pip's own configuration (pip.conf, PIP_INDEX_URL, PIP_FIND_LINKS) says where packages come from; on a CPU-only
# machine point it at a CPU build of torch (e.g. PIP_FIND_LINKS=<folder of wheels>) before running this.
$PIP install "$TORCH_PIN"
echo "[setup] pinned requirements"
$PIP install -r requirements.txt 2>&1 | { grep -v "is ignored: it is neither" || true; }
if [[ "${SEMHASH_HOROVOD:-1}" == "0" ]]; then
  echo "[setup] Horovod skipped (SEMHASH_HOROVOD=0): --launcher local and torch only"
elif ! "$VENV/bin/python" -c "import horovod.torch" 2>/dev/null; then
  echo "[setup] building $HOROVOD_PIN (gloo, PyTorch; about 2-4 minutes)"
  wrapdir=$(mktemp -d)
  printf '#!/bin/sh\nexec %s "$@" -std=c++17\n' "$(command -v g++)" > "$wrapdir/cxx17"
  chmod +x "$wrapdir/cxx17"
  CXX="$wrapdir/cxx17" HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
    HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 MAKEFLAGS="-j$(nproc)" \
    $PIP install --no-build-isolation --no-cache-dir "$HOROVOD_PIN"
  rm -rf "$wrapdir"
fi
echo "[setup] semhash_spark (editable)"
$PIP install --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c "import torch, pyspark, petastorm, boto3, semhash_spark; print('[setup] ok: torch', torch.__version__, 'pyspark', pyspark.__version__, 'petastorm', petastorm.__version__)"
echo "$stamp_key" > "$VENV/.semhash-setup"
