"""Training throughput and quality of one process against N Horovod processes, same batch size per rank.

    .venv/bin/python benchmarks/train_scaling.py --data DATA_URI --workdir DIR [--bits 64] [--np 2]
                                                 [--launcher local] [--set key=value ...]

Each run is a full ``semhash train`` (a fresh command-line process, default configuration unless ``--set``),
one with ``--np 1`` and one with ``--np N`` (``--launcher`` picks how the N ranks start). Throughput is
documents per second of training: rows seen by all ranks in every pretraining and fine-tuning epoch divided by the
epochs' wall time (validation passes, which only rank 0 runs, are left out; the same per-epoch figures the
checkpoint records). Quality is ``semhash evaluate``'s precision@100 of the codes (test documents against train,
no baselines). The machine's load average is sampled during each run so that contention by other processes shows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class LoadSampler:
    """The 1-minute load average every 10 s while a run lasts."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(10):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def throughput(metrics: dict) -> dict:
    """Documents per second over all epochs, pretraining and fine-tuning apart and together."""
    out = {}
    total_rows = total_s = 0.0
    for stage in ("pretrain", "finetune"):
        recs = metrics.get(stage, [])
        rows = sum(r["rows_per_rank"] * metrics["world_size"] for r in recs)
        secs = sum(r["seconds"] for r in recs)
        out[f"{stage}_docs_per_s"] = round(rows / secs, 1) if secs else None
        out[f"{stage}_epochs"] = len(recs)
        total_rows, total_s = total_rows + rows, total_s + secs
    out["docs_per_s"] = round(total_rows / total_s, 1) if total_s else None
    out["epoch_seconds"] = round(total_s, 1)
    return out


def train_once(data: str, out: str, bits: int, np_: int, launcher: str, sets: list[str]) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "semhash_spark.cli",
        "train",
        "--data",
        data,
        "--out",
        out,
        "--bits",
        str(bits),
        "--np",
        str(np_),
        "--launcher",
        launcher,
        "--no-progress",
    ]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    with LoadSampler() as load:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    meta = json.loads((Path(out) / "model.json").read_text())
    return {
        "np": np_,
        "launcher": launcher,
        "wall_seconds": round(time.time() - t0, 1),
        "summary": summary,
        "best_epoch": meta["metrics"].get("best_epoch"),
        "best_val_precision": meta["metrics"].get("best_val_precision"),
        **throughput(meta["metrics"]),
        "load_avg_mean": round(sum(load.samples) / len(load.samples), 2) if load.samples else None,
        "load_avg_max": max(load.samples) if load.samples else None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--bits", type=int, default=64)
    p.add_argument("--np", type=int, default=2)
    p.add_argument("--launcher", default="local")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--order", default="1,N", help="which run first: 1,N or N,1")
    args = p.parse_args(argv)

    from semhash_spark.evaluation.assess import evaluate_model

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    runs = {}
    order = [1, args.np] if args.order == "1,N" else [args.np, 1]
    for n in order:
        out = str(work / f"model-np{n}")
        r = train_once(args.data, out, args.bits, n, args.launcher if n > 1 else "local", args.set)
        ev = evaluate_model(out, args.data, plot_path=None, baselines=())
        r["precision_at_100"] = round(ev["precision_at_100"], 4)
        r["map"] = round(ev["map"], 4)
        runs[n] = r
        print(json.dumps(r), file=sys.stderr, flush=True)
    one, many = runs[1], runs[args.np]
    result = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "bits": args.bits,
        "np": args.np,
        "sets": args.set,
        "cpus": os.cpu_count(),
        "runs": [runs[n] for n in order],
        "speedup": round(many["docs_per_s"] / one["docs_per_s"], 3),
        "efficiency": round(many["docs_per_s"] / (args.np * one["docs_per_s"]), 3),
        "precision_at_100_gap": round(abs(many["precision_at_100"] - one["precision_at_100"]), 4),
    }
    (work / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
