"""Scale figures on a generated corpus, side by side in one run (a benchmark, not a timed test).

    .venv/bin/python benchmarks/scale_bench.py --data /tmp/gen/docs804k [--epochs 1] [--sample-batches 1500]

1. Data loading vs training: the Petastorm reader alone (``loader.iter_batches``, the trainer's reader settings)
   delivers ``--sample-batches`` mini-batches; then each consumer runs on those same batches held in memory:
   ``pretrain_step`` of each RBM layer (with the forward pass through the layers below, as in training) and
   ``finetune_step`` of the unrolled autoencoder. The ratio reader docs/s / consumer docs/s is the headroom.
2. The real ``semhash train`` on the whole corpus, ``--epochs`` epochs per layer and of fine-tuning, in a
   subprocess whose peak RSS is sampled (with any children) every 0.5 s. Per-epoch times come from the
   model's own training record.
3. A torch matmul benchmark of exactly the matrix products each step does (same shapes, same count), so the
   training throughput reads as a fraction of what this machine's matmul achieves on those shapes.

Prints one JSON object (last line) with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from semhash_spark.data import loader as data_mod  # noqa: E402
from semhash_spark.data import dataset as ds  # noqa: E402
from semhash_spark.config import load_config  # noqa: E402
from semhash_spark.training.distributed import Dist, current  # noqa: E402
from semhash_spark.models.autoencoder import DeepAutoencoder, deterministic_noise, id_keys  # noqa: E402
from semhash_spark.models.rbm import BinaryRBM, ConstrainedPoissonRBM, MomentumSGD  # noqa: E402
from semhash_spark.training.train import _finetune_optimizer, densify, finetune_step, is_validation_id, pretrain_step  # noqa: E402


# --------------------------------------------------------------------------------------------- FLOPs and matmuls
def cd_shapes(b: int, sizes: list[int], layer: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product of one CD-1 step of ``layer`` on a batch of b (lower layers forward)."""
    shapes = [(b, sizes[i], sizes[i + 1]) for i in range(layer)]  # mean_hidden of the layers below
    nv, nh = sizes[layer], sizes[layer + 1]
    shapes += [(b, nv, nh), (b, nh, nv), (b, nv, nh), (nv, b, nh), (nv, b, nh)]  # h0, v1, h1, v0'h0, v1'h1
    return shapes


def finetune_shapes(b: int, sizes: list[int]) -> list[tuple[int, int, int]]:
    """Forward through encoder and decoder, weight gradients of every layer, input gradients but the first."""
    layers = list(zip(sizes[:-1], sizes[1:])) + [(o, i) for i, o in reversed(list(zip(sizes[:-1], sizes[1:])))]
    fwd = [(b, a, c) for a, c in layers]
    wgrad = [(c, b, a) for a, c in layers]
    igrad = [(b, c, a) for a, c in layers[1:]]
    return fwd + wgrad + igrad


def flops(shapes: list[tuple[int, int, int]]) -> int:
    return sum(2 * m * k * n for m, k, n in shapes)


def matmul_rate(shapes: list[tuple[int, int, int]], seconds: float = 3.0) -> float:
    """FLOP/s of torch.mm running exactly these products in a loop (float32, this process's threads)."""
    g = torch.Generator().manual_seed(0)
    mats = [(torch.rand(m, k, generator=g), torch.rand(k, n, generator=g)) for m, k, n in shapes]
    for a, b in mats:  # warm-up
        torch.mm(a, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for a, b in mats:
            torch.mm(a, b)
        reps += 1
    return reps * flops(shapes) / (time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------- 1. reader vs trainer
def reader_rate(data_dir: str, batch_size: int, n_batches: int, seed: int, pool: str) -> tuple[list, dict]:
    batches, rows = [], 0
    t0 = time.perf_counter()
    for b in data_mod.iter_batches(data_dir, "train", batch_size, shuffle=True, seed=seed, reader_pool=pool):
        batches.append((b.ids, b.counts))
        rows += len(b)
        if len(batches) >= n_batches:
            break
    dt = time.perf_counter() - t0
    return batches, {
        "batches": len(batches),
        "docs": rows,
        "seconds": round(dt, 2),
        "batches_per_s": round(len(batches) / dt, 1),
        "docs_per_s": round(rows / dt, 1),
    }


def consumer_rates(batches: list, sizes: list[int], cfg, n_batches: int) -> dict:
    dist: Dist = current(1)
    g = torch.Generator().manual_seed(0)
    rbms = [
        (ConstrainedPoissonRBM if i == 0 else BinaryRBM)(a, b, init_std=0.01, generator=g)
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
    ]
    use = batches[:n_batches]
    out = {}
    for i, rbm in enumerate(rbms):
        opt = MomentumSGD(rbm, cfg.pretrain.weight_decay)
        rows, t0 = 0, time.perf_counter()
        for _, counts in use:
            v = densify(counts, torch.device("cpu"))
            with torch.no_grad():
                for lower in rbms[:i]:
                    v = lower.mean_hidden(v)
                pretrain_step(rbm, opt, v, 0.01, 0.5, dist, g)
            rows += v.shape[0]
        dt = time.perf_counter() - t0
        out[f"pretrain_layer{i + 1}"] = {
            "shape": f"{rbm.n_visible}x{rbm.n_hidden}",
            "docs": rows,
            "seconds": round(dt, 2),
            "docs_per_s": round(rows / dt, 1),
        }
    model = DeepAutoencoder.from_rbms(rbms, output="softmax", code_mode="noise")
    optimizer = _finetune_optimizer(model, cfg, 1.0, 1)  # as training builds it (fused Adam)
    rows, t0 = 0, time.perf_counter()
    for ids, counts in use:
        x = densify(counts, torch.device("cpu"))
        noise = deterministic_noise(id_keys(ids), model.bits, cfg.finetune.noise_std, cfg.train.seed)
        finetune_step(model, optimizer, x, noise, dist)
        rows += x.shape[0]
    dt = time.perf_counter() - t0
    out["finetune"] = {"docs": rows, "seconds": round(dt, 2), "docs_per_s": round(rows / dt, 1)}
    return out


# --------------------------------------------------------------------------------------------- 2. full training
class PeakRSS:
    """Samples the RSS of a process and each of its descendants every 0.5 s; keeps each one's peak."""

    def __init__(self, pid: int):
        self.root, self.peaks = psutil.Process(pid), {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(0.5):
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            for p in procs:
                try:
                    key = f"{p.pid}:{p.name()}"
                    self.peaks[key] = max(self.peaks.get(key, 0), p.memory_info().rss)
                except psutil.Error:
                    pass

    def stop(self) -> dict:
        self._stop.set()
        self._t.join()
        return {k: round(v / 2**20) for k, v in sorted(self.peaks.items(), key=lambda kv: -kv[1])}


_EPOCH_LOG = re.compile(
    r"layer (\d+)/\d+ epoch (\d+)/\d+ recon .*\(([\d.]+)s\)|fine-tune epoch (\d+)/\d+ .*\(([\d.]+)s\)"
)


def full_training(
    data_dir: str, out: str, epochs: int, bits: int, time_limit: float, overrides: list[str] = ()
) -> dict:
    """Runs ``semhash train`` in a subprocess; per-epoch times from its log (so a run stopped at ``time_limit``
    still reports the epochs it finished) and from model.json when it finishes."""
    cmd = [
        sys.executable,
        "-m",
        "semhash_spark.cli",
        "train",
        "--data",
        data_dir,
        "--bits",
        str(bits),
        "--out",
        out,
        "--no-progress",
        "--set",
        f"pretrain.epochs={epochs}",
        "--set",
        f"finetune.epochs={epochs}",
    ]
    for kv in overrides:
        cmd += ["--set", kv]
    t0 = time.time()
    log_path = Path(out).parent / "train.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, text=True)
        mem = PeakRSS(proc.pid)
        try:
            proc.wait(timeout=time_limit)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=60)
        peaks = mem.stop()
    log = log_path.read_text()
    epochs_done = []
    for m in _EPOCH_LOG.finditer(log):
        if m.group(1):
            epochs_done.append(
                {"stage": f"pretrain_layer{m.group(1)}", "epoch": int(m.group(2)), "seconds": float(m.group(3))}
            )
        else:
            epochs_done.append({"stage": "finetune", "epoch": int(m.group(4)), "seconds": float(m.group(5))})
    finished = proc.returncode == 0
    result = {
        "command": "semhash " + " ".join(cmd[3:]),
        "wall_seconds": round(time.time() - t0, 1),
        "finished": finished,
        "returncode": proc.returncode,
        "peak_rss_mib": peaks,
        "epochs": epochs_done,
        "log": str(log_path),
    }
    if finished:
        meta = json.loads(Path(out, "model.json").read_text())
        result["epochs"] = [
            {
                "stage": f"pretrain_layer{r['layer']}",
                "epoch": r["epoch"],
                "seconds": round(r["seconds"], 1),
                "docs": r["rows_per_rank"],
            }
            for r in meta["metrics"]["pretrain"]
        ]
        result["epochs"] += [
            {
                "stage": "finetune",
                "epoch": r["epoch"],
                "seconds": round(r["seconds"], 1),
                "docs": r["rows_per_rank"],
                "val_precision": r.get("val_precision"),
            }
            for r in meta["metrics"]["finetune"]
        ]
        result["summary"] = log.strip().splitlines()[-1]
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="a prepared or generated dataset (semhash-docs/1)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per layer and of fine-tuning in the full run")
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--sample-batches", type=int, default=1500, help="batches the reader delivers in part 1")
    ap.add_argument("--consume-batches", type=int, default=300, help="of those, batches each consumer runs")
    ap.add_argument("--skip-full", action="store_true", help="only parts 1 and 3")
    ap.add_argument("--time-limit", type=float, default=4 * 3600, help="stop the full run after this many seconds")
    ap.add_argument("--skip-sample", action="store_true", help="only the matmul benchmark and the full run")
    ap.add_argument("--workdir", default=None)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more configuration overrides for the full run, e.g. finetune.binarize_epochs=1",
    )
    args = ap.parse_args()
    cfg = load_config(None)
    sizes = [ds.read_metadata(args.data)["vocab_size"], *cfg.model.hidden, args.bits]
    b = cfg.pretrain.batch_size
    result = {
        "data": args.data,
        "counts": ds.read_metadata(args.data)["counts"],
        "sizes": sizes,
        "batch_size": b,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

    if not args.skip_sample:
        batches, result["reader"] = reader_rate(
            args.data, b, args.sample_batches, cfg.train.seed, cfg.train.reader_pool
        )
        print(json.dumps({"reader": result["reader"]}), flush=True)
        result["consumers"] = consumer_rates(batches, sizes, cfg, args.consume_batches)
        del batches
        for c in result["consumers"].values():
            c["reader_over_consumer"] = round(result["reader"]["docs_per_s"] / c["docs_per_s"], 2)
        print(json.dumps({"consumers": result["consumers"]}), flush=True)

    shapes = {f"pretrain_layer{i + 1}": cd_shapes(b, sizes, i) for i in range(len(sizes) - 1)}
    shapes["finetune"] = finetune_shapes(b, sizes)
    result["matmul"] = {
        k: {"flop_per_doc": flops(s) / b, "matmul_gflops": round(matmul_rate(s) / 1e9, 2)} for k, s in shapes.items()
    }
    for k, c in result.get("consumers", {}).items():
        achieved = c["docs_per_s"] * result["matmul"][k]["flop_per_doc"]
        c["gflops"] = round(achieved / 1e9, 2)
        c["fraction_of_matmul"] = round(achieved / (result["matmul"][k]["matmul_gflops"] * 1e9), 3)
    print(json.dumps({"matmul": result["matmul"]}), flush=True)

    if not args.skip_full:
        work = Path(args.workdir or tempfile.mkdtemp(prefix="semhash-scale-bench-"))
        work.mkdir(parents=True, exist_ok=True)
        full = full_training(args.data, str(work / "model"), args.epochs, args.bits, args.time_limit, args.set)
        ids = np.concatenate(
            [
                pq.read_table(f, columns=[ds.ID]).column(0).to_numpy(zero_copy_only=False)
                for f in ds.split_files(args.data, "train")
            ]
        )
        n_used = int((~is_validation_id(ids, cfg.finetune.val_fraction)).sum())  # the rows an epoch trains on
        result["train_docs_per_epoch"] = n_used
        for e in full["epochs"]:
            docs = e.get("docs", n_used)
            e["docs_per_s"] = round(docs / e["seconds"], 1)
            achieved = e["docs_per_s"] * result["matmul"][e["stage"]]["flop_per_doc"]
            e["gflops"] = round(achieved / 1e9, 2)
            e["fraction_of_matmul"] = round(achieved / (result["matmul"][e["stage"]]["matmul_gflops"] * 1e9), 3)
        result["full_training"] = full
    result["bench_process_peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
