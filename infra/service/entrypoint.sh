#!/bin/sh
# Container entry point of the lookup service: `semhash serve` configured from the environment.
#   SEMHASH_INDEX (required)  s3://bucket/prefix of the published index
#   SEMHASH_PORT (8080), SEMHASH_CACHE_BYTES (bytes, default 1 GiB), SEMHASH_TOKEN (optional bearer token, read by semhash serve)
#   AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION: the object store
# Extra arguments are passed on (e.g. --poll-seconds 30).
set -eu
: "${SEMHASH_INDEX:?set SEMHASH_INDEX to the index URI, e.g. s3://bucket/index}"
exec semhash serve --index "$SEMHASH_INDEX" --host 0.0.0.0 --port "${SEMHASH_PORT:-8080}" \
    --cache-bytes "${SEMHASH_CACHE_BYTES:-1073741824}" "$@"
