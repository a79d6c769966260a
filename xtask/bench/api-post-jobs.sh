#!/usr/bin/env bash
# Sustained `POST /v1/jobs` against the API (release build) with a real Postgres and Redis on
# loopback: wrk, closed loop, CONNECTIONS keep-alive connections for DURATION seconds; every
# request commits a job (no worker runs, so the table only grows). Reports req/s and latency
# percentiles. Then loadgen in the open model at RATE req/s for DURATION seconds: latency from
# each request's intended send time (no coordinated omission), service time and schedule lag.
# Needs: postgresql, redis-server, wrk; run as root (Postgres runs as `postgres`).
# Usage: xtask/bench/api-post-jobs.sh [DURATION] [CONNECTIONS] [RATE]
set -euo pipefail
cd "$(dirname "$0")/../.."
duration="${1:-15}"
connections="${2:-16}"
rate="${3:-4000}"
command -v wrk >/dev/null || { echo "error: wrk not found (apt-get install wrk)" >&2; exit 1; }
pg_bin=$(dirname "$(command -v pg_ctl || ls -d /usr/lib/postgresql/*/bin/pg_ctl | tail -n 1)")
cargo build --release --locked -p api -p loadgen --quiet
target="${CARGO_TARGET_DIR:-target}"
work=$(mktemp -d /tmp/api-bench.XXXXXX)
chown postgres: "$work"
cleanup() {
  [ -n "${api_pid:-}" ] && kill "$api_pid" 2>/dev/null || true
  runuser -u postgres -- "$pg_bin"/pg_ctl -D "$work"/pg -m immediate -w stop >/dev/null 2>&1 || true
  [ -f "$work/redis.pid" ] && kill "$(cat "$work/redis.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
runuser -u postgres -- "$pg_bin"/initdb -D "$work"/pg -U postgres --auth=trust -E UTF8 >/dev/null
# Durable settings (fsync on): the number is what a real deployment would see on this disk.
runuser -u postgres -- "$pg_bin"/pg_ctl -D "$work"/pg -l "$work"/pg.log -w \
  -o "-p 18432 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work" start >/dev/null
redis-server --port 18379 --bind 127.0.0.1 --save '' --daemonize yes --pidfile "$work"/redis.pid --dir "$work"
RUST_LOG=warn DATABASE_URL=postgres://postgres@127.0.0.1:18432/postgres REDIS_URL=redis://127.0.0.1:18379 \
  LISTEN_HOST=127.0.0.1 PORT=18081 DB_MAX_CONNECTIONS=16 "$target"/release/api 2>"$work/api.log" &
api_pid=$!
for _ in $(seq 1 100); do curl -fs http://127.0.0.1:18081/readyz >/dev/null 2>&1 && break; sleep 0.1; done

cat > "$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"kind":"hash","input":"bench","iterations":1000}'
wrk.headers["Content-Type"] = "application/json"
LUA
wrk -t1 -c"$connections" -d2s -s "$work/post.lua" http://127.0.0.1:18081/v1/jobs >/dev/null   # warm-up
wrk -t2 -c"$connections" -d"${duration}s" --latency -s "$work/post.lua" http://127.0.0.1:18081/v1/jobs \
  | grep -E "Requests/sec|Non-2xx|Socket errors|^ +(50|90|99)%"

cat > "$work/post.toml" <<TOML
base_url = "http://127.0.0.1:18081"
warmup = "2s"
lag_tolerance = "5ms"
slo = ["error_rate < 0.1%"]
[[endpoint]]
name = "create_job"
method = "POST"
path = "/v1/jobs"
headers = { "content-type" = "application/json" }
body = '{"kind":"hash","input":"bench","iterations":1000}'
expect_status = 201
[[stage]]
duration = "$((duration + 2))s"
rps = $rate
TOML
"$target"/release/loadgen run "$work/post.toml" --cores 1 --quiet --format json --out "$work/open" > /dev/null || true
python3 - "$work/open/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
e, lag = r["endpoints"][0], r["load"]["schedule_lag_us"]
print(f"open model: {r['load']['achieved_rps']:.0f} of {r['load']['target_rps']:.0f} req/s, errors {e['errors']}, "
      f"latency p50 {e['latency_us']['p50']/1e3:.2f} ms p99 {e['latency_us']['p99']/1e3:.2f} ms, "
      f"service p50 {e['service_time_us']['p50']/1e3:.2f} ms p99 {e['service_time_us']['p99']/1e3:.2f} ms, "
      f"lag p99 {lag['p99']/1e3:.2f} ms, verdict {r['verdict']}")
PY
