# Sourced by the benchmark scripts: an nginx on loopback that answers every request 200 "ok".
# start_ok_nginx WORKDIR NAME PORT [CPU]: one worker (pinned with taskset when CPU is given),
# no access log, pid in WORKDIR/NAME.pid; KEEPALIVE_REQUESTS (nginx's default 1000) caps the
# requests per keep-alive connection. stop_nginx WORKDIR stops every nginx started there.
start_ok_nginx() {
  local work=$1 name=$2 port=$3 cpu=${4:-}
  cat > "$work/$name.conf" <<CONF
worker_processes 1;
pid $work/$name.pid;
error_log $work/$name.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests ${KEEPALIVE_REQUESTS:-1000};
  server { listen 127.0.0.1:$port; location / { return 200 "ok"; } }
}
CONF
  if [ -n "$cpu" ]; then taskset -c "$cpu" nginx -c "$work/$name.conf" -p "$work"; else nginx -c "$work/$name.conf" -p "$work"; fi
}

stop_nginx() {
  local pid
  for pid in "$1"/*.pid; do [ -f "$pid" ] && kill "$(cat "$pid")" 2>/dev/null; done
  return 0
}
