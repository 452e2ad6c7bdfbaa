#!/usr/bin/env bash
# Spark GPU discovery script (spark.{driver,executor}.resource.gpu.discoveryScript): prints the GPUs this
# container sees as {"name": "gpu", "addresses": ["0", "1", ...]}; no GPU gives an empty list (and Spark then
# refuses to start an executor that asked for one, naming the resource).
# Honours CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES when they list indexes (what the scheduler gave us).
set -euo pipefail
addresses=()
if command -v nvidia-smi >/dev/null 2>&1; then
  while IFS= read -r idx; do
    idx=${idx//[[:space:]]/}
    [[ $idx =~ ^[0-9]+$ ]] && addresses+=("$idx")
  done < <(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || true)
fi
visible=${CUDA_VISIBLE_DEVICES:-}
if [[ -n $visible && $visible =~ ^[0-9,]+$ && ${#addresses[@]} -gt 0 ]]; then
  # CUDA renumbers the visible devices 0..n-1: those are the addresses the tasks use
  IFS=, read -r -a vis <<< "$visible"
  addresses=()
  for i in "${!vis[@]}"; do addresses+=("$i"); done
fi
json=""
for a in "${addresses[@]+"${addresses[@]}"}"; do json+="${json:+,}\"$a\""; done
printf '{"name": "gpu", "addresses": [%s]}\n' "$json"
