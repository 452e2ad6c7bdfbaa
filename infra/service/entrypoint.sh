#!/bin/sh
# Container entry point of the lookup service: `semhash serve` configured from the environment.
#   SEMHASH_INDEX (required)  s3://bucket/prefix of the published index
#   SEMHASH_TOKEN or SEMHASH_TOKEN_FILE (required: the service binds 0.0.0.0, so /search needs a bearer token;
#     SEMHASH_ALLOW_OPEN=1 serves without one, e.g. behind an authenticating proxy)
#   SEMHASH_PORT (8080), SEMHASH_CACHE_BYTES (bytes, default 1 GiB), SEMHASH_MAX_BODY_BYTES (default 8 MiB)
#   AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION: the object store
# Extra arguments are passed on (e.g. --poll-seconds 30). The token is never put on the command line (ps).
set -eu
: "${SEMHASH_INDEX:?set SEMHASH_INDEX to the index URI, e.g. s3://bucket/index}"
if [ -z "${SEMHASH_TOKEN:-}" ] && [ -z "${SEMHASH_TOKEN_FILE:-}" ] && [ "${SEMHASH_ALLOW_OPEN:-0}" != "1" ]; then
    echo "entrypoint: refusing to serve on 0.0.0.0 without a token: set SEMHASH_TOKEN or SEMHASH_TOKEN_FILE" \
         "(or SEMHASH_ALLOW_OPEN=1 behind an authenticating proxy)" >&2
    exit 2
fi
set -- --cache-bytes "${SEMHASH_CACHE_BYTES:-1073741824}" "$@"
if [ -n "${SEMHASH_TOKEN_FILE:-}" ]; then
    set -- --token-file "$SEMHASH_TOKEN_FILE" "$@"
fi
if [ -n "${SEMHASH_MAX_BODY_BYTES:-}" ]; then
    set -- --max-body-bytes "$SEMHASH_MAX_BODY_BYTES" "$@"
fi
exec semhash serve --index "$SEMHASH_INDEX" --host 0.0.0.0 --port "${SEMHASH_PORT:-8080}" "$@"
