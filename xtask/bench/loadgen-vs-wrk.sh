#!/usr/bin/env bash
# loadgen against wrk (Debian package) and oha (crates.io) as HTTP load generators, closed model,
# one generator core, CONNECTIONS keep-alive connections, against nginx answering 200 "ok" on
# loopback. nginx gets CPU 0 (one worker), the generator CPU 1 (taskset), so each side has a
# core. Also an open-model run at a fixed rate: schedule lag, and CO-safe p50 against the
# service time. Every run is bounded: DURATION seconds each, ROUNDS rounds, loopback only.
# Needs: nginx (nginx-light), wrk, taskset, GNU time; oha is installed from crates.io into
# target/bench-tools when missing. Usage: xtask/bench/loadgen-vs-wrk.sh [DURATION] [CONNECTIONS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
duration="${1:-10}"
connections="${2:-50}"
rounds="${3:-5}"
for tool in nginx wrk taskset /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install nginx-light wrk util-linux time)" >&2; exit 1; }
done
target="${CARGO_TARGET_DIR:-target}"
oha="$target/bench-tools/bin/oha"
[ -x "$oha" ] || cargo install oha --version 1.16.0 --locked --root "$target/bench-tools"
cargo build --release --locked -p loadgen --quiet
loadgen="$target/release/loadgen"
work=$(mktemp -d /tmp/loadgen-bench.XXXXXX)
. xtask/bench/nginx-ok.sh
cleanup() { stop_nginx "$work"; rm -rf "$work"; }
trap cleanup EXIT
KEEPALIVE_REQUESTS=100000000 start_ok_nginx "$work" nginx 18182 0
sleep 0.5
url=http://127.0.0.1:18182/

# `time` prints "user system" seconds on the last stderr line; req/s comes from each tool's output.
measure() { # name, command...
  local name=$1; shift
  taskset -c 1 /usr/bin/time -f "%U %S" "$@" > "$work/out" 2> "$work/err" || true
  local cpu rps
  cpu=$(tail -1 "$work/err")
  case "$name" in
    wrk) rps=$(awk '/Requests\/sec/ {print $2}' "$work/out") ;;
    oha) rps=$(awk '/Requests\/sec/ {print $2}' "$work/out") ;;
    loadgen*) rps=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["load"]["achieved_rps"])' "$work/lg/report.json") ;;
  esac
  python3 - "$name" "$rps" "$cpu" "$duration" <<'PY'
import sys
name, rps, cpu, duration = sys.argv[1], float(sys.argv[2]), sys.argv[3].split(), float(sys.argv[4])
user, system = float(cpu[0]), float(cpu[1])
requests = rps * duration
print(f"{name:14} {rps:10.0f} req/s   user {user*1e6/requests:5.2f} µs/req   total {(user+system)*1e6/requests:5.2f} µs/req")
PY
}

echo "closed model, 1 generator core, $connections connections, ${duration}s x $rounds rounds"
for round in $(seq "$rounds"); do
  echo "round $round"
  measure wrk wrk -t1 -c"$connections" -d"${duration}s" "$url"
  measure oha "$oha" --no-tui -c "$connections" -z "${duration}s" "$url"
  measure loadgen "$loadgen" run --url "$url" --connections "$connections" --duration "${duration}s" --cores 1 --quiet --out "$work/lg"
  measure loadgen-hyper "$loadgen" run --url "$url" --connections "$connections" --duration "${duration}s" --cores 1 --quiet --out "$work/lg" --client hyper
done

rate=$((connections * 200))
echo "open model, 1 generator core, $rate req/s for ${duration}s"
taskset -c 1 "$loadgen" run --url "$url" --rps "$rate" --duration "${duration}s" --cores 1 --quiet --out "$work/open" > /dev/null || true
python3 - "$work/open/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lag, lat, svc = r["load"]["schedule_lag_us"], r["overall"]["latency_us"], r["overall"]["service_time_us"]
print(f"achieved {r['load']['achieved_rps']:.0f}/s of {r['load']['target_rps']:.0f}/s; schedule lag p50 {lag['p50']:.1f} µs p99 {lag['p99']:.1f} µs; "
      f"latency p50 {lat['p50']:.1f} µs vs service time p50 {svc['p50']:.1f} µs; verdict {r['verdict']}")
PY
echo "true service time: wrk, 1 connection (closed loop, nothing queued)"
taskset -c 1 wrk -t1 -c1 -d"${duration}s" --latency "$url" | awk '/50%/ {print "wrk -c1 p50", $2}'
