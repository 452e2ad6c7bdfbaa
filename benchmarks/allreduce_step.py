"""One fine-tuning step (2000-500-500-64 autoencoder) alone and on 2 ranks, gradients averaged over Horovod/gloo or
through shared memory, side by side in one run: ms per step and CPU per thread.

    .venv/bin/python benchmarks/allreduce_step.py [--steps 60] [--batch 100]

Each configuration runs in its own processes (``horovodrun -np 2 --gloo`` for the 2-rank ones), one torch thread
per rank, the same batch on every step; results print as one line per rank.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rank(steps: int, batch: int, mode: str) -> None:
    import torch

    sys.path.insert(0, ROOT)
    from semhash_spark import distributed, train
    from semhash_spark.models.autoencoder import DeepAutoencoder

    torch.set_num_threads(1)
    dist = distributed.current(1)
    if mode == "shm" and not dist.use_shared_memory():
        raise SystemExit("shared memory unavailable")
    torch.manual_seed(0)
    model = DeepAutoencoder([2000, 500, 500, 64])
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(dist.rank)
    x = (torch.rand(batch, 2000, generator=g) < 0.03).float() * 2
    noise = torch.randn(batch, 64, generator=g) * 4

    def step():
        train.finetune_step_async(model, opt, x, noise, dist)()

    for _ in range(10):
        step()
    dist.barrier()

    def threads():
        out = {}
        for t in os.listdir("/proc/self/task"):
            f = open(f"/proc/self/task/{t}/stat").read().rsplit(")", 1)[1].split()
            out[t] = (int(f[11]), int(f[12]))
        return out

    tick = os.sysconf("SC_CLK_TCK")
    th0, t0 = threads(), time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    th1 = threads()
    per = sorted(((th1[k][0] - th0.get(k, (0, 0))[0]) + (th1[k][1] - th0.get(k, (0, 0))[1])) * 1e3 / tick / steps
                 for k in th1)[::-1]
    print(f"{mode:8s} rank {dist.rank}/{dist.size}: {1e3 * dt / steps:6.1f} ms per step; CPU ms per step by thread "
          f"{[round(c, 1) for c in per if c > 0]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--rank-mode", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rank_mode:
        return rank(a.steps, a.batch, a.rank_mode)
    me = [sys.executable, os.path.abspath(__file__), "--steps", str(a.steps), "--batch", str(a.batch)]
    hvd = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    subprocess.run(me + ["--rank-mode", "alone"], check=True, env=env)
    for mode in ("network", "shm"):
        subprocess.run([hvd, "-np", "2", "--gloo", *me, "--rank-mode", mode], check=True, env=env)


if __name__ == "__main__":
    main()
