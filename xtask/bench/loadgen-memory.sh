#!/usr/bin/env bash
# loadgen's memory does not grow with the length of a run: peak RSS of an open-model run of
# SHORT seconds against one of LONG seconds at the same rate, against nginx on loopback.
# Every run is bounded (the plan's length). Needs: nginx (nginx-light), GNU time.
# Usage: xtask/bench/loadgen-memory.sh [RATE] [SHORT] [LONG]   (defaults: 2000 req/s, 60 s, 600 s)
set -euo pipefail
cd "$(dirname "$0")/../.."
rate="${1:-2000}"
short="${2:-60}"
long="${3:-600}"
for tool in nginx /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install nginx-light time)" >&2; exit 1; }
done
cargo build --release --locked -p loadgen --quiet
loadgen="${CARGO_TARGET_DIR:-target}/release/loadgen"
work=$(mktemp -d /tmp/loadgen-memory.XXXXXX)
. xtask/bench/nginx-ok.sh
cleanup() { stop_nginx "$work"; rm -rf "$work"; }
trap cleanup EXIT
start_ok_nginx "$work" nginx 18183
sleep 0.5
for seconds in "$short" "$long"; do
  /usr/bin/time -f "%M" "$loadgen" run --url http://127.0.0.1:18183/ --rps "$rate" --duration "${seconds}s" \
    --cores 2 --quiet --lag-tolerance 50ms --out "$work/r$seconds" > /dev/null 2> "$work/time$seconds" || true
  rss=$(tail -1 "$work/time$seconds")
  sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["load"]["sent"])' "$work/r$seconds/report.json")
  echo "${seconds} s at ${rate} req/s: ${sent} requests, peak RSS ${rss} KiB"
done
