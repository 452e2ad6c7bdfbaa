"""spark-submit entry point: `spark-submit jobs/dedup.py ARGS` runs `semhash dedup ARGS` on the submitted cluster.

Thin by design: argument parsing, config and the work live in semhash_spark (the same functions back the CLI).
"""

import os
import sys

os.environ.setdefault("SEMHASH_UNDER_SUBMIT", "1")  # the master comes from spark-submit, not local[2]

from semhash_spark.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["dedup", *sys.argv[1:]]))
