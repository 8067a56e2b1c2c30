#!/usr/bin/env bash
# Schemathesis (PyPI) against /openapi.json of a running roomcast, bounded:
# no 5xx, no undocumented status, no response outside its schema. The server
# runs on its own private PostgreSQL cluster (DATABASE_URL unset), with rate
# limits off so that the generated traffic is judged on its content.
#
# SSE is left out, both streams (a stream never ends: every generated request
# to one waited out the 10 s request timeout, up to 40 of them, which made
# this step take anywhere from 170 to 460 s); the coverage phase is left out too
# (schemathesis 4.32.5 fails inside its own generator on the publish body's
# oneOf with "Inconsistent results"; examples and fuzzing run).
set -euo pipefail
cd "$(dirname "$0")/.."

# The venv is kept outside the clone (CI runs in a fresh clone each time),
# one per schemathesis version; it is built where missing.
version=4.32.5
venv="${ROOMCAST_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/roomcast-ci}/schemathesis-$version"
if [ ! -x "$venv/bin/schemathesis" ]; then
  rm -rf "$venv"
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "schemathesis==$version"
fi
cargo build --locked -q
bin=target/debug/roomcast

data=$(mktemp -d)
chmod 755 "$data"
log=$(mktemp)
export ROOMCAST_JWT_SECRET=schemathesis-secret ROOMCAST_WEBHOOK_SECRET=schemathesis-hook \
  ROOMCAST_RATE_LIMITS=off ROOMCAST_BIND=127.0.0.1:0 ROOMCAST_DATA_DIR="$data" RUST_LOG=warn
env -u DATABASE_URL "$bin" serve >"$log" 2>&1 &
pid=$!
cleanup() {
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$data" "$log"
}
trap cleanup EXIT

port=""
for _ in $(seq 1 120); do
  port=$(grep -oE 'listening on port [0-9]+' "$log" | grep -oE '[0-9]+$' || true)
  [ -n "$port" ] && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.5
done
[ -n "$port" ] || { cat "$log"; echo "server did not start"; exit 1; }

token=$("$bin" token --org acme --sub schemathesis --pub)
"$venv/bin/schemathesis" --config-file .ci/schemathesis.toml run \
  "http://127.0.0.1:$port/openapi.json" \
  -H "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "${SCHEMATHESIS_EXAMPLES:-40}" --workers 2 \
  --phases examples,fuzzing,stateful \
  --exclude-path '/v1/rooms/{room}/sse' --exclude-path '/v1/rooms/sse' \
  --request-timeout 10 --no-color
# The server's own errors (internal errors are logged); actix logging a
# malformed request line from the fuzzer is not one.
if grep -q "ERROR roomcast" "$log"; then
  echo "server log has errors:"; grep "ERROR roomcast" "$log"; exit 1
fi
