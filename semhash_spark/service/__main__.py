"""``python -m semhash_spark.service --index URI --port P`` (the same as ``semhash serve``)."""

import sys

from .app import serve_main

sys.exit(serve_main(sys.argv[1:]))
