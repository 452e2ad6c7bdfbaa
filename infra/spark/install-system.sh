#!/usr/bin/env bash
# System packages of the Spark image (infra/spark/Dockerfile): Java 17, Python 3.11 with venv and headers,
# compilers and cmake for Horovod, tini, procps (Spark's scripts use ps). VARIANT=gpu expects a CUDA devel base
# image (nvcc, NCCL headers come with the cudnn-devel images; libnccl-dev is added if missing).
set -euo pipefail
variant=${1:-cpu}
apt-get update
pkgs=(openjdk-17-jre-headless tini procps g++ make cmake git ca-certificates curl)
if ! command -v python3.11 >/dev/null; then
  # Ubuntu 22.04 (the CUDA images) ships 3.10: take 3.11 from the deadsnakes archive
  apt-get install -y --no-install-recommends software-properties-common gpg-agent
  add-apt-repository -y ppa:deadsnakes/ppa
  apt-get update
  pkgs+=(python3.11 python3.11-venv python3.11-dev)
fi
[[ $variant == gpu ]] && pkgs+=(libnccl2 libnccl-dev)
apt-get install -y --no-install-recommends "${pkgs[@]}"
# one JAVA_HOME whatever the architecture
ln -sfn "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /usr/lib/jvm/java-17-openjdk
apt-get clean
rm -rf /var/lib/apt/lists/*
