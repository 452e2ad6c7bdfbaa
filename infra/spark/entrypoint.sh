#!/usr/bin/env bash
# Entry point of the semhash Spark image (infra/spark/Dockerfile). One image, several roles:
#   driver ARGS...    spark-on-k8s driver pod (what spark-submit --deploy-mode cluster starts)
#   executor          spark-on-k8s executor pod (environment set by the driver)
#   master [ARGS]     a standalone master   (docker run semhash-spark master --host 0.0.0.0)
#   worker URL [ARGS] a standalone worker   (docker run --gpus all semhash-spark worker spark://master:7077)
#   submit PROFILE JOB ARGS...   infra/submit/submit.sh from inside the image
#   anything else     run as given (semhash encode ..., bash, python ...)
# The two k8s roles follow Spark's own kubernetes/dockerfiles/spark/entrypoint.sh.
set -euo pipefail
: "${SPARK_HOME:?}"
SPARK_CLASSPATH="${SPARK_CLASSPATH:-}:${SPARK_HOME}/jars/*"

case "${1:-}" in
  driver)
    shift
    exec "$SPARK_HOME/bin/spark-submit" \
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS}" \
      --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=${SPARK_DRIVER_BIND_ADDRESS}" \
      --deploy-mode client "$@"
    ;;
  executor)
    shift
    mapfile -t java_opts < <(env | grep '^SPARK_JAVA_OPT_' | sort -t_ -k4 -n | sed 's/[^=]*=\(.*\)/\1/g')
    exec "${JAVA_HOME}/bin/java" "${java_opts[@]}" \
      -Xms"${SPARK_EXECUTOR_MEMORY}" -Xmx"${SPARK_EXECUTOR_MEMORY}" \
      -cp "${SPARK_CLASSPATH}" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "${SPARK_DRIVER_URL}" --executor-id "${SPARK_EXECUTOR_ID}" --cores "${SPARK_EXECUTOR_CORES}" \
      --app-id "${SPARK_APPLICATION_ID}" --hostname "${SPARK_EXECUTOR_POD_IP}" \
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID}" --podName "${SPARK_EXECUTOR_POD_NAME}"
    ;;
  master)
    shift
    exec "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master "$@"
    ;;
  worker)
    shift
    # standalone GPU scheduling: SEMHASH_WORKER_GPUS=N offers this container's N GPUs to executors
    if [[ -n ${SEMHASH_WORKER_GPUS:-} ]]; then
      export SPARK_WORKER_OPTS="${SPARK_WORKER_OPTS:-} -Dspark.worker.resource.gpu.amount=${SEMHASH_WORKER_GPUS}
        -Dspark.worker.resource.gpu.discoveryScript=/opt/semhash/infra/gpu/discover-gpus.sh"
    fi
    exec "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker "$@"
    ;;
  submit)
    shift
    exec /opt/semhash/infra/submit/submit.sh "$@"
    ;;
  *)
    exec "$@"
    ;;
esac
