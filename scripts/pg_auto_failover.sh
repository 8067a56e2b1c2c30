#!/usr/bin/env bash
# roomcast across a pg_auto_failover failover, as an operator runs it (issue 25).
#
# A monitor and two nodes of pg_auto_failover (Debian: postgresql-15-auto-failover)
# on this machine, roomcast on both nodes' URL with target_session_attrs=read-write,
# a publisher (200 events, each retried with its idempotency key until acknowledged)
# and a long-poller; after 60 events node 1 (the primary) is stopped at once, keeper
# and PostgreSQL (`pg_autoctl stop --immediate`, a crash as the monitor sees it),
# and the monitor promotes node 2. Prints what it measured: time from the crash to
# the promotion and to the first acknowledged publish, 503s answered meanwhile, and
# whether the poller holds every acknowledged event exactly once, in order.
#
#   bash scripts/pg_auto_failover.sh [path/to/roomcast]     (as root or as postgres)
set -euo pipefail

bin=${1:-target/debug/roomcast}
bin=$(realpath "$bin")
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
command -v pg_autoctl >/dev/null || { echo "pg_autoctl is missing: apt-get install postgresql-15-auto-failover" >&2; exit 1; }
dir=$(mktemp -d /var/tmp/roomcast-paf.XXXXXX)
chmod 755 "$dir"
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- env PATH="$pgbin:$PATH" PG_CONFIG="$pgbin/pg_config" "$@"; else env PATH="$pgbin:$PATH" "$@"; fi
}
[ "$(id -u)" = 0 ] && chown postgres: "$dir"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mport=$(free_port); p1=$(free_port); p2=$(free_port); rport=$(free_port)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for n in node2 node1 monitor; do as_pg pg_autoctl stop --pgdata "$dir/$n" --immediate >/dev/null 2>&1 || true; done
  sleep 1
  rm -rf "$dir"
}
trap cleanup EXIT

common=(--auth trust --ssl-self-signed --hostname 127.0.0.1)
as_pg pg_autoctl create monitor --pgdata "$dir/monitor" --pgport "$mport" "${common[@]}" >"$dir/monitor.log" 2>&1
as_pg pg_autoctl run --pgdata "$dir/monitor" >>"$dir/monitor.log" 2>&1 & pids+=($!)
monitor="postgres://autoctl_node@127.0.0.1:$mport/pg_auto_failover?sslmode=require"
until as_pg pg_autoctl show state --monitor "$monitor" >/dev/null 2>&1; do sleep 0.5; done
for n in 1 2; do
  port=$([ $n = 1 ] && echo "$p1" || echo "$p2")
  as_pg pg_autoctl create postgres --pgdata "$dir/node$n" --pgport "$port" --monitor "$monitor" \
    --name "node$n" "${common[@]}" >"$dir/node$n.log" 2>&1
  as_pg pg_autoctl run --pgdata "$dir/node$n" >>"$dir/node$n.log" 2>&1 & pids+=($!)
  # node 1 becomes the primary before node 2 joins.
  until as_pg pg_autoctl show state --monitor "$monitor" 2>/dev/null | grep -Eq "node$n .*\| *(single|primary|secondary) *\| *(single|primary|secondary) *$"; do sleep 0.5; done
done
as_pg pg_autoctl show state --monitor "$monitor"
as_pg psql -h 127.0.0.1 -p "$p1" -U postgres -qc "CREATE DATABASE roomcast"
echo "replication on the primary: $(as_pg psql -h 127.0.0.1 -p "$p1" -U postgres -Atc "SHOW synchronous_standby_names") / synchronous_commit $(as_pg psql -h 127.0.0.1 -p "$p1" -U postgres -Atc "SHOW synchronous_commit")"

secret=paf-secret-0123456789abcdef0123456789
DATABASE_URL="postgres://postgres@127.0.0.1:$p1,127.0.0.1:$p2/roomcast?target_session_attrs=read-write" \
ROOMCAST_BIND="127.0.0.1:$rport" ROOMCAST_JWT_SECRET=$secret ROOMCAST_RATE_LIMITS=off \
ROOMCAST_STATEMENT_TIMEOUT_MS=2000 RUST_LOG=warn "$bin" serve >"$dir/roomcast.log" 2>&1 & pids+=($!)
until curl -sf "http://127.0.0.1:$rport/readyz" >/dev/null; do sleep 0.2; done

python3 - "$rport" "$secret" "$dir" "$p1" <<'EOF'
import base64, hashlib, hmac, json, subprocess, sys, threading, time, urllib.error, urllib.request
port, secret, d, p1 = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
def tok(sub, pub):
    enc = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")
    h = enc(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    c = enc(json.dumps({"sub": sub, "org": "acme", "exp": int(time.time()) + 3600, "pub": pub}).encode())
    s = enc(hmac.new(secret.encode(), h + b"." + c, hashlib.sha256).digest())
    return (h + b"." + c + b"." + s).decode()
producer, viewer = tok("p", True), tok("v", False)
base = f"http://127.0.0.1:{port}"
def call(method, path, token, body=None, timeout=30):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"authorization": f"Bearer {token}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except Exception:
        return 0, None
N, acked, answers, crash = 200, {}, {}, {}
def publish():
    for i in range(1, N + 1):
        if i == 61:
            crash["at"] = time.monotonic()
            subprocess.run(["bash", "-c", f'{"runuser -u postgres -- " if __import__("os").getuid() == 0 else ""}pg_autoctl stop --pgdata {d}/node1 --immediate'], check=True)
        while True:
            st, b = call("POST", "/v1/rooms/paf/events", producer, {"type": "seg", "id": f"e{i}", "data": {"i": i}})
            answers[st] = answers.get(st, 0) + 1
            if st in (200, 201):
                acked[i] = (b["seq"], time.monotonic())
                break
            time.sleep(0.1)
        time.sleep(0.01)
held, since = [], 0
def poll():
    global since
    while not held or held[-1][1] < N:
        st, b = call("GET", f"/v1/rooms/paf/events?since={since}&wait=5", viewer)
        if st != 200:
            time.sleep(0.2); continue
        assert not b.get("reset"), b
        for e in b["events"]:
            held.append((e["seq"], e["data"]["i"]))
            since = e["seq"]
        if b.get("first", 0) - 1 > since:
            since = b["first"] - 1
t1, t2 = threading.Thread(target=publish), threading.Thread(target=poll)
t1.start(); t2.start(); t1.join(); t2.join(timeout=120)
first_after = min(t for s, t in acked.values() if t > crash["at"])
ok = [i for _, i in held] == list(range(1, N + 1)) and [s for s, _ in held] == [acked[i][0] for i in range(1, N + 1)]
print(json.dumps({"events": N, "answers": answers, "crash_to_first_publish_s": round(first_after - crash["at"], 2),
                  "poller_exactly_once_in_order": ok, "seqs_before": acked[60][0], "seqs_after": acked[61][0]}))
sys.exit(0 if ok else 1)
EOF
as_pg pg_autoctl show state --monitor "$monitor"
curl -s "http://127.0.0.1:$rport/readyz"; echo
