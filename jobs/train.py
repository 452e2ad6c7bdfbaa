"""spark-submit entry point: `spark-submit jobs/train.py ARGS` runs `semhash train ARGS` on the submitted cluster.

The ranks run in Spark tasks on the executors (`--launcher spark`: horovod.spark.run, one task per rank) unless
ARGS name another launcher, e.g. `--launcher torch` (TorchDistributor) where Horovod is not installed.
Thin by design: argument parsing, config and the work live in semhash_spark (the same functions back the CLI).
"""

import os
import sys

os.environ.setdefault("SEMHASH_UNDER_SUBMIT", "1")  # the master comes from spark-submit, not local[2]

from semhash_spark.cli import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a == "--launcher" or a.startswith("--launcher=") for a in args):
        args += ["--launcher", "spark"]
    sys.exit(main(["train", *args]))
