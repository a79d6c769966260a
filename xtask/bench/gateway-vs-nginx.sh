#!/usr/bin/env bash
# Gateway vs nginx as reverse proxies in front of the same trivial upstream (an nginx that
# answers 200 "ok"), measured with the same load tool (wrk, closed loop, keep-alive), on
# loopback only. Each proxy gets one core (taskset -c 0, one tokio worker / one nginx worker);
# the upstream and wrk share the other core. Every run is bounded: DURATION seconds each.
# Needs: nginx (Debian nginx-light), wrk, taskset. Usage: xtask/bench/gateway-vs-nginx.sh [DURATION] [CONNECTIONS]
set -euo pipefail
cd "$(dirname "$0")/../.."
duration="${1:-10}"
connections="${2:-32}"
for tool in nginx wrk taskset; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install nginx-light wrk util-linux)" >&2; exit 1; }
done
# The binary the gateway's image ships (static, `image` profile, built by xtask's host builder).
cargo xtask image build --service gateway --no-load >/dev/null
target="${CARGO_TARGET_DIR:-target}"
work=$(mktemp -d /tmp/gateway-bench.XXXXXX)
cleanup() {
  [ -f "$work/upstream.pid" ] && kill "$(cat "$work/upstream.pid")" 2>/dev/null || true
  [ -f "$work/proxy.pid" ] && kill "$(cat "$work/proxy.pid")" 2>/dev/null || true
  [ -n "${gateway_pid:-}" ] && kill "$gateway_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/upstream.conf" <<CONF
worker_processes 1;
pid $work/upstream.pid;
error_log $work/upstream.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:18181; location / { return 200 "ok\n"; } }
}
CONF
cat > "$work/proxy.conf" <<CONF
worker_processes 1;
pid $work/proxy.pid;
error_log $work/proxy.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  upstream backend { server 127.0.0.1:18181; keepalive 128; }
  server {
    listen 127.0.0.1:18182;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
taskset -c 1 nginx -c "$work/upstream.conf" -p "$work"
taskset -c 0 nginx -c "$work/proxy.conf" -p "$work"
TOKIO_WORKER_THREADS=1 RUST_LOG=warn GATEWAY_ROUTES="/=http://127.0.0.1:18181" LISTEN_HOST=127.0.0.1 PORT=18183 \
  taskset -c 0 "$target"/x86_64-unknown-linux-gnu/image/gateway 2>"$work/gateway.log" &
gateway_pid=$!
for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:18183/ >/dev/null 2>&1 && curl -fs http://127.0.0.1:18182/ >/dev/null 2>&1 && break
  sleep 0.1
done

run() { # name url
  echo "== $1 =="
  taskset -c 1 wrk -t1 -c"$connections" -d2s "$2" >/dev/null    # warm-up, not counted
  taskset -c 1 wrk -t1 -c"$connections" -d"${duration}s" --latency "$2" | grep -E "Requests/sec|Non-2xx|Socket errors|^ +(50|90|99)%"
}
run nginx http://127.0.0.1:18182/
run gateway http://127.0.0.1:18183/
