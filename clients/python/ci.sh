#!/usr/bin/env bash
# The Python client's CI: a venv (reused), the package with its test extras,
# a wheel (python -m build), then pytest against the real server binary and a
# real PostgreSQL. Exits non-zero on any failure.
#
# Environment:
#   PYTHON          the interpreter to build the venv with (default: python3, 3.11+)
#   ROOMCAST_PY_VENV the venv (default: <repo>/target/py-venv)
#   ROOMCAST_BIN    the server binary (default: <repo>/target/debug/roomcast; never built here)
#   ROOMCAST_TEST_ADMIN_URL  a postgres:// admin URL (default: 127.0.0.1:5432 if it
#                   answers, else a private cluster started with initdb/pg_ctl)
#   PYTEST_ARGS     extra pytest arguments
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${ROOMCAST_PY_VENV:-$root/target/py-venv}"
dist="$root/target/py-dist"
python="${PYTHON:-python3}"
export ROOMCAST_BIN="${ROOMCAST_BIN:-$root/target/debug/roomcast}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
started=$(date +%s)

step() { echo "== python client: $*"; }
as_root_apt() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
  else
    echo "missing: $* (install it)" >&2
    exit 1
  fi
}

"$python" - <<'EOF' || { echo "python 3.11 or newer is required ($python)" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
EOF

if [ ! -x "$ROOMCAST_BIN" ]; then
  echo "the server binary is missing at $ROOMCAST_BIN (build it with cargo build, or set ROOMCAST_BIN)" >&2
  exit 1
fi

# PostgreSQL: the tests use psql, and initdb/pg_ctl when nothing answers on 5432.
pg_answers() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
if [ -z "${ROOMCAST_TEST_ADMIN_URL:-}" ] && ! pg_answers && ! command -v pg_ctl >/dev/null 2>&1 \
   && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  step "installing PostgreSQL (nothing answers on 5432)"
  as_root_apt postgresql
fi
if ! command -v psql >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/psql >/dev/null 2>&1; then
  step "installing psql"
  as_root_apt postgresql-client
fi

step "venv $venv"
if [ ! -x "$venv/bin/python" ]; then
  if ! "$python" -m venv "$venv" 2>/dev/null; then
    rm -rf "$venv"
    as_root_apt python3-venv
    "$python" -m venv "$venv"
  fi
fi
"$venv/bin/python" -m pip install -q "$here[test]"

step "mypy --strict (src/roomcast)"
(cd "$here" && "$venv/bin/python" -m mypy --strict src/roomcast)

step "wheel -> $dist"
mkdir -p "$dist"
rm -f "$dist"/roomcast-*.whl
"$venv/bin/python" -m build --wheel --no-isolation --outdir "$dist" "$here" >/dev/null
wheel="$(ls "$dist"/roomcast-*.whl)"
# The tests run against the built wheel, not the source tree.
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$wheel"

step "pytest (server: $ROOMCAST_BIN)"
log="$(mktemp)"
set +e
(cd "$here" && "$venv/bin/python" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} tests) 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
result="$(grep -E '^(=+ )?[0-9]+ (passed|failed)|no tests ran' "$log" | tail -n 1 | sed 's/=//g' | xargs || true)"
rm -f "$log"

echo "== python client summary"
echo "   wheel:  $wheel"
echo "   tests:  ${result:-none}"
echo "   time:   $(( $(date +%s) - started )) s"
if [ "$rc" = 5 ]; then
  echo "   pytest ran no test" >&2
  exit 1
fi
exit "$rc"
