#!/bin/bash
# semhash dedup (Spark plan) on 1 and 2 executors of a standalone cluster on loopback, alternating, twice:
#
#     bash benchmarks/dedup_executors.sh INDEX_URI DATA_URI RADIUS [EXTRA dedup ARGS...]
#
# A master and two 1-core workers (as tests/test_cluster.py's fixture starts them) run under this venv's pyspark;
# the job is infra/submit/submit.sh standalone dedup --verify jaccard:0.7 --radius RADIUS --local-max-docs 0, with
# SEMHASH_MAX_CORES 1 then 2. Prints each run's wall time and its summary's plan, candidates, pairs and seconds.
# Outputs and logs go to a temporary folder; the cluster is stopped at the end.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,9p' "$0"; exit 2; }
INDEX=$1 DATA=$2 RADIUS=$3
shift 3
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=$ROOT/.venv/bin/python
W=$(mktemp -d /tmp/dedup-executors.XXXXXX)
mkdir -p "$W/w1" "$W/w2" "$W/local" "$W/logs"
SPARK_HOME=$($PY -c "import os, pyspark; print(os.path.dirname(os.path.abspath(pyspark.__file__)))")
free_port() { $PY -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
PORT=$(free_port) UI=$(free_port)
export SPARK_HOME SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON=$PY SPARK_LOCAL_DIRS=$W/local SPARK_LOG_DIR=$W/logs \
    SPARK_NO_DAEMONIZE=1
PIDS=()
stop() { for p in "${PIDS[@]}"; do kill -- -"$p" 2>/dev/null || true; done; }
trap stop EXIT
setsid "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master --host 127.0.0.1 --port "$PORT" \
    --webui-port "$UI" >"$W/master.log" 2>&1 &
PIDS+=($!)
for i in 1 2; do
    setsid "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker "spark://127.0.0.1:$PORT" \
        --host 127.0.0.1 --webui-port "$(free_port)" --cores 1 --memory 5g --work-dir "$W/w$i" >"$W/worker$i.log" 2>&1 &
    PIDS+=($!)
done
for _ in $(seq 120); do
    alive=$(curl -s "127.0.0.1:$UI/json/" 2>/dev/null | $PY -c \
        "import json, sys; print(sum(w['state'] == 'ALIVE' for w in json.load(sys.stdin)['workers']))" 2>/dev/null || echo 0)
    [ "$alive" -ge 2 ] && break
    sleep 1
done
[ "$alive" -ge 2 ] || { echo "the standalone cluster did not come up; see $W/*.log" >&2; exit 1; }
unset PYSPARK_PYTHON  # the profile's spark.pyspark.python decides
for cores in 1 2 1 2; do
    rm -rf "$W/out"
    start=$(date +%s.%N)
    env SPARK_MASTER_URL="spark://127.0.0.1:$PORT" SEMHASH_PYTHON="$PY" SEMHASH_DRIVER_MEMORY=2g \
        SEMHASH_EXECUTOR_MEMORY=4g SEMHASH_EXECUTOR_CORES=1 SEMHASH_EXECUTOR_OVERHEAD=512m SEMHASH_MAX_CORES=$cores \
        SEMHASH_SHUFFLE_PARTITIONS=8 bash "$ROOT/infra/submit/submit.sh" standalone dedup --index "$INDEX" \
        --data "$DATA" --verify jaccard:0.7 --radius "$RADIUS" --local-max-docs 0 --out "$W/out" "$@" \
        >"$W/run-$cores.log" 2>&1
    secs=$(printf "%.2f" "$(echo "$(date +%s.%N) - $start" | bc)")
    # the summary line: Spark may log its shutdown after it
    echo "executors=$cores wall ${secs} s $(grep '^{' "$W/run-$cores.log" | tail -1 | $PY -c \
        "import json, sys; s = json.loads(sys.stdin.read()); print({k: s[k] for k in ('plan', 'candidates', 'pairs', 'seconds')})")"
done
