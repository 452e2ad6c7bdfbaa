#!/usr/bin/env bash
# Submits one semhash job to a Spark cluster, configured by a profile from infra/conf/.
#
#   infra/submit/submit.sh PROFILE JOB [JOB ARGS...]
#     PROFILE   local | standalone | k8s | yarn   (files infra/conf/PROFILE.conf, on top of infra/conf/common.conf)
#     JOB       prepare | train | encode | evaluate | dedup | reindex   (jobs/JOB.py: the `semhash JOB` command)
#   e.g. infra/submit/submit.sh k8s encode --model s3://b/model --data s3://b/data --index s3://b/index
#
# Settings come from the environment, never from files in the repository:
#   SEMHASH_GPU=1          adds infra/conf/gpu.conf (executor GPUs, task GPU share, discovery script)
#   SEMHASH_CONF_DIR       another folder of profiles (default infra/conf beside this script)
#   SEMHASH_SPARK_CONF     extra "key=value" Spark properties, separated by spaces
#   SEMHASH_DRY_RUN=1      print the spark-submit command instead of running it
#   AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION: the object store (credentials: the standard AWS chain --
#   instance profile, IRSA, EMR role, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY in the submitting shell, which
#   reach the tasks at run time and are never written to a file)
#   and the ${NAME} / ${NAME:-default} variables each profile names (SPARK_MASTER_URL, SEMHASH_IMAGE, ...).
#
# A profile line is "spark.key value"; ${VAR} and ${VAR:-default} are replaced from the environment, a line whose
# value ends up empty is left out, and a ${VAR} without default that is unset is an error naming it. Keys under
# "semhash." are for this script: semhash.jobs is where the cluster finds jobs/ (k8s: inside the image).
# Exit status: spark-submit's, i.e. the job's (0, or non-zero with the reason on stderr; the job's last stdout line
# is its JSON summary).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
conf_dir=${SEMHASH_CONF_DIR:-$root/infra/conf}
jobs="prepare train encode evaluate dedup reindex"

usage() { echo "usage: $0 PROFILE JOB [ARGS...]  (profiles: $(cd "$conf_dir" && ls *.conf | grep -v -e '^common' -e '^gpu' | sed 's/\.conf$//' | tr '\n' ' '); jobs: $jobs)" >&2; exit 2; }
[[ $# -ge 2 ]] || usage
profile=$1 job=$2
shift 2
[[ -f "$conf_dir/$profile.conf" && $profile != common && $profile != gpu ]] || { echo "submit: no profile '$profile' in $conf_dir" >&2; usage; }
[[ " $jobs " == *" $job "* && -f "$root/jobs/$job.py" ]] || { echo "submit: no job '$job' (jobs/$job.py)" >&2; usage; }

# ${VAR} / ${VAR:-default} from the environment; anything else is kept as written.
expand() {
  local rest=$1 out="" name def val
  while [[ $rest =~ ^([^$]*)\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}(.*)$ ]]; do
    out+=${BASH_REMATCH[1]} name=${BASH_REMATCH[2]} def=${BASH_REMATCH[4]} rest=${BASH_REMATCH[5]}
    if [[ -n ${!name:-} ]]; then
      val=${!name}
    elif [[ -n ${BASH_REMATCH[3]} ]]; then
      val=$def
    else
      echo "submit: profile $profile needs \$$name (set it in the environment)" >&2
      return 1
    fi
    out+=$val
  done
  printf '%s' "$out$rest"
}

export SEMHASH_JOB_NAME=${SEMHASH_JOB_NAME:-$job}
files=("$conf_dir/common.conf" "$conf_dir/$profile.conf")
[[ ${SEMHASH_GPU:-0} == 1 ]] && files+=("$conf_dir/gpu.conf")
declare -A props=()
order=()
for f in "${files[@]}"; do
  while IFS= read -r line || [[ -n $line ]]; do
    line=${line%%#*}                                   # comments
    [[ $line =~ ^[[:space:]]*([A-Za-z0-9_.-]+)[[:space:]]+(.*[^[:space:]])[[:space:]]*$ ]] || continue
    key=${BASH_REMATCH[1]}
    value=$(expand "${BASH_REMATCH[2]}") || exit 2
    [[ -v "props[$key]" ]] || order+=("$key")
    props[$key]=$value                                 # a later file overrides an earlier one
  done < "$f"
done
for kv in ${SEMHASH_SPARK_CONF:-}; do
  key=${kv%%=*}
  [[ -v "props[$key]" ]] || order+=("$key")
  props[$key]=${kv#*=}
done

jobs_dir=${props[semhash.jobs]:-$root/jobs}
args=()
for key in "${order[@]}"; do
  value=${props[$key]}
  [[ -z $value || $key == semhash.* ]] && continue
  if [[ $key == spark.master ]]; then args+=(--master "$value"); else args+=(--conf "$key=$value"); fi
done

submit=${SPARK_HOME:+$SPARK_HOME/bin/}spark-submit
cmd=("$submit" "${args[@]}" "$jobs_dir/$job.py" "$@")
if [[ ${SEMHASH_DRY_RUN:-0} == 1 ]]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
echo "submit: $profile $job -> $submit (${#args[@]} settings)" >&2
exec "${cmd[@]}"
