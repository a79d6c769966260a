#!/usr/bin/env bash
# Docker-target rollout under steady load: how long `cargo xtask deploy --target docker` takes to
# replace the API (start beside, healthy, switch, drain the old one) and how many requests fail
# meanwhile. The API alternates between v1 (the built image) and v2 (v1 plus a label) ROUNDS
# times while loadgen sends RATE req/s of reads and writes through the edge on 127.0.0.1; every
# load run is bounded (SECONDS). Needs Docker; builds the images, loadgen and the Debian base.
# Usage: xtask/bench/deploy-docker.sh [ROUNDS] [RATE] [SECONDS]   (defaults: 5, 200 req/s, 25 s)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${1:-5}"
rate="${2:-200}"
seconds="${3:-25}"
target="${CARGO_TARGET_DIR:-target}"
cargo xtask image build --service api --service gateway >/dev/null
cargo build --release --locked -p loadgen --quiet
cargo xtask dev base >/dev/null
work=$(mktemp -d /tmp/deploy-docker.XXXXXX)
export DEPLOY_PROJECT="xtask-bench-deploy-$$"
export DEPLOY_SERVICES=postgres,redis,api,gateway DEPLOY_PUBLISH=gateway
export DEPLOY_COMPOSE_FILES=docker-compose.yml,docker-compose.offline.yml
export GATEWAY_PORT=18391 POSTGRES_PORT=18392 REDIS_PORT=18393 POSTGRES_PASSWORD=bench-only
cleanup() {
  docker ps -aq --filter "label=xtask.project=$DEPLOY_PROJECT" | xargs -r docker rm -f -v >/dev/null
  docker ps -aq --filter "label=xtask.release-of=$DEPLOY_PROJECT" | xargs -r docker rm -f >/dev/null
  docker network rm "$DEPLOY_PROJECT" "$DEPLOY_PROJECT-serving" >/dev/null 2>&1 || true
  docker volume rm "${DEPLOY_PROJECT}_pgdata" "${DEPLOY_PROJECT}_redisdata" >/dev/null 2>&1 || true
  docker rmi -f "api:bench-v2-$$" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cp "$target/xtask/images.json" "$work/v1.json"
api_tag=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["images"]["api"]["image"])' "$work/v1.json")
printf 'FROM %s\nLABEL bench.release=v2\n' "$api_tag" | DOCKER_BUILDKIT=0 docker build -q -t "api:bench-v2-$$" - >/dev/null
v2_id=$(docker image inspect --format '{{.Id}}' "api:bench-v2-$$")
python3 - "$work/v1.json" "$work/v2.json" "api:bench-v2-$$" "$v2_id" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
m["images"]["api"].update(image=sys.argv[3], id=sys.argv[4], dirty=False)
m["images"]["api"].pop("pushed", None)
json.dump(m, open(sys.argv[2], "w"))
EOF

cargo xtask deploy --target docker --env staging --no-verify --images "$work/v1.json" 2> "$work/first.log" \
  || { cat "$work/first.log"; exit 1; }
echo "round  to  api replace (s)  deploy wall (s)  requests  failed"
for round in $(seq 1 "$rounds"); do
  if (( round % 2 )); then to=v2; else to=v1; fi
  "$target/release/loadgen" run infra/loadtest/rollout.toml --url "http://127.0.0.1:$GATEWAY_PORT" \
    --rps "$rate" --duration "${seconds}s" --cores 1 --quiet --out "$work/r$round" > /dev/null 2>&1 &
  load=$!
  sleep 3
  start=$(date +%s.%N)
  cargo xtask deploy --target docker --env staging --no-verify --images "$work/$to.json" 2> "$work/d$round.log" \
    || { cat "$work/d$round.log"; exit 1; }
  wall=$(python3 -c "import sys; print(float(sys.argv[1]) - float(sys.argv[2]))" "$(date +%s.%N)" "$start")
  kill -0 "$load" 2>/dev/null || { echo "error: the load ended before the deploy did; raise SECONDS" >&2; exit 1; }
  wait "$load" || true
  took=$(sed -n 's/.*api: replaced .* switched in \([0-9.]*\)s.*/\1/p' "$work/d$round.log")
  read -r count failed < <(python3 -c 'import json,sys; o=json.load(open(sys.argv[1]))["overall"]; print(o["count"], o["errors"])' "$work/r$round/report.json")
  printf '%5d  %s  %15s  %15.1f  %8d  %6d\n' "$round" "$to" "$took" "$wall" "$count" "$failed"
done
