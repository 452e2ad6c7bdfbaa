"""One training step alone and on 2 ranks, gradients averaged over Horovod/gloo or through shared memory, side by
side in one run: ms per step, ms per step spent waiting at the shared-memory barriers, and CPU per thread.

    .venv/bin/python benchmarks/allreduce_step.py [--steps 60] [--batch 100] [--kinds finetune,cd1,cd3]

Kinds: ``finetune`` (the 2000-500-500-64 autoencoder with code noise, fused Adam as in training;
``finetune-unfused`` with torch's default CPU Adam), ``cd1`` / ``cd2`` / ``cd3`` (CD-1 of
pretraining layer 1, 2 or 3, the next batch prepared through the frozen layers below while the gradients are
averaged, as ``train_stack`` does). Cases: ``alone`` (one process), ``network`` (2 ranks, Horovod/gloo, 5 ms
negotiation cycle), ``shm-cycle5`` (2 ranks, shared memory, Horovod still cycling every 5 ms), ``shm`` (2 ranks,
shared memory, the default: Horovod's cycle at ``SHM_CYCLE_TIME_MS``). Each case runs in its own processes
(``horovodrun -np 2 --gloo`` for the 2-rank ones), one torch thread per rank, the same batch on every step;
results print as one line per rank. Each rank raises glibc's allocator thresholds as training ranks do
(``semhash_spark.allocator``); ``SEMHASH_MALLOC_DEFAULTS=1`` keeps glibc's defaults, for comparison.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("finetune", "cd1", "cd2", "cd3", "finetune-unfused")


def rank(steps: int, batch: int, mode: str, kind: str) -> None:
    import numpy as np
    import scipy.sparse as sp
    import torch

    sys.path.insert(0, ROOT)
    from semhash_spark import distributed, train
    from semhash_spark.config import Config
    from semhash_spark.models.autoencoder import DeepAutoencoder
    from semhash_spark.models.rbm import MomentumSGD

    torch.set_num_threads(1)
    if not os.environ.get("SEMHASH_MALLOC_DEFAULTS"):   # as training ranks do (set it to compare with glibc's own)
        from semhash_spark import allocator
        allocator.keep_freed_memory()
    shm = mode.startswith("shm")
    dist = distributed.current(1, "shm" if shm else "network")
    if shm and not dist.use_shared_memory():
        raise SystemExit("shared memory unavailable")
    torch.manual_seed(0)
    rng = np.random.default_rng(dist.rank)
    counts = sp.random(batch, 2000, density=0.03, format="csr", dtype=np.float32, random_state=rng)
    counts.data = np.ceil(counts.data * 3)
    if kind.startswith("finetune"):
        model = DeepAutoencoder([2000, 500, 500, 64])
        if kind == "finetune":
            opt = train._finetune_optimizer(model, Config(), 1.0, 1)     # what training uses (fused Adam)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=Config().finetune.lr)  # torch's default CPU Adam, for comparison
        g = torch.Generator().manual_seed(dist.rank)
        x = train.densify(counts, torch.device("cpu"))
        noise = torch.randn(batch, 64, generator=g) * 4

        def step():
            train.finetune_step_async(model, opt, x, noise, dist)()
    else:
        layer = KINDS.index(kind) - 1
        rbms = train.build_rbms([2000, 500, 500, 64], "constrained_poisson", Config(), seed=0)
        rbm, opt = rbms[layer], MomentumSGD(rbms[layer], 2e-4)
        gen = torch.Generator().manual_seed(dist.rank)

        def prepare():
            with torch.no_grad():
                v = train.densify(counts, torch.device("cpu"))
                for lower in rbms[:layer]:
                    v = lower.mean_hidden(v)
                return v

        state = {"v": prepare()}

        def step():
            with torch.no_grad():
                finish = train.pretrain_step_async(rbm, opt, state["v"], 1e-3, 0.5, dist, gen)
                nxt = prepare()
                finish()
                state["v"] = nxt

    for _ in range(10):
        step()
    dist.barrier()

    def threads():
        out = {}
        for t in os.listdir("/proc/self/task"):
            f = open(f"/proc/self/task/{t}/stat").read().rsplit(")", 1)[1].split()
            out[t] = (int(f[11]), int(f[12]))
        return out

    local = getattr(dist, "_local", None)
    tick = os.sysconf("SC_CLK_TCK")
    w0 = local.wait_s if local is not None else 0.0
    th0, t0 = threads(), time.perf_counter()
    for _ in range(steps):
        step()
    dt = time.perf_counter() - t0
    th1 = threads()
    wait = ((local.wait_s if local is not None else 0.0) - w0) * 1e3 / steps
    per = sorted(((th1[k][0] - th0.get(k, (0, 0))[0]) + (th1[k][1] - th0.get(k, (0, 0))[1])) * 1e3 / tick / steps
                 for k in th1)[::-1]
    print(f"{kind:8s} {mode:10s} rank {dist.rank}/{dist.size}: {1e3 * dt / steps:6.1f} ms per step, "
          f"{wait:5.1f} ms at barriers; CPU ms per step by thread {[round(c, 1) for c in per if c > 0]}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--kinds", default="finetune,cd1,cd3")
    ap.add_argument("--modes", default="alone,network,shm-cycle5,shm")
    ap.add_argument("--rank-mode", help=argparse.SUPPRESS)
    ap.add_argument("--rank-kind", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.rank_mode:
        return rank(a.steps, a.batch, a.rank_mode, a.rank_kind)
    me = [sys.executable, os.path.abspath(__file__), "--steps", str(a.steps), "--batch", str(a.batch)]
    hvd = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    for kind in a.kinds.split(","):
        if kind not in KINDS:
            raise SystemExit(f"unknown kind {kind!r}; known: {KINDS}")
        for mode in a.modes.split(","):
            env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
            env.pop("HOROVOD_CYCLE_TIME", None)
            if mode == "shm-cycle5":
                env["HOROVOD_CYCLE_TIME"] = "5"
            cmd = me + ["--rank-mode", mode, "--rank-kind", kind]
            subprocess.run(cmd if mode == "alone" else [hvd, "-np", "2", "--gloo", *cmd], check=True, env=env)


if __name__ == "__main__":
    main()
