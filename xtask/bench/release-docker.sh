#!/usr/bin/env bash
# The release path on the Docker target, timed: commit -> staging (rebuild after a one-file change
# to the API, push every image by digest with its SBOM and provenance, deploy staging from the
# release manifest) and staging -> prod (`deploy promote`), with steady load on prod's edge during
# every promote, counting failed requests. After the first promote, ROUNDS promotes alternate
# between two releases (v1: the build; v2: v1 plus a label, pushed by digest) so each one is a
# real replace. The anchor, in the same run: the same replace done the compose way
# (`docker-compose up -d api` with the other image tag, which recreates the container) under the
# same load. Verification is left out of the timings (`--no-verify`): it lasts its SLO file's
# window plus one settle, by design. Every load run is bounded (SECONDS) and aimed at 127.0.0.1.
# Needs Docker and docker-registry (`cargo xtask setup`). Two scratch environments
# (infra/compose/env/bench-{staging,prod}.env) exist while it runs and are removed after.
# Usage: xtask/bench/release-docker.sh [ROUNDS] [RATE] [SECONDS]   (defaults: 3, 100 req/s, 30 s)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds="${1:-3}"
rate="${2:-100}"
seconds="${3:-30}"
target="${CARGO_TARGET_DIR:-target}"
work=$(mktemp -d /tmp/release-docker.XXXXXX)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
registry="127.0.0.1:$(free_port)"
printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s/data\nhttp:\n  addr: %s\n' \
  "$work" "$registry" > "$work/registry.yml"
docker-registry serve "$work/registry.yml" > /dev/null 2>&1 &
registry_pid=$!
cleanup() {
  for e in bench-staging bench-prod; do
    p="xtask-$e-$$"
    docker ps -aq --filter "label=xtask.project=$p" | xargs -r docker rm -f -v > /dev/null
    docker ps -aq --filter "label=xtask.release-of=$p" | xargs -r docker rm -f > /dev/null
    docker network rm "$p" "$p-serving" > /dev/null 2>&1 || true
    docker volume rm "${p}_pgdata" "${p}_redisdata" "${p}_promdata" > /dev/null 2>&1 || true
    rm -f "infra/compose/env/$e.env"
  done
  if [[ -n "${compose_files:-}" ]]; then
    docker-compose -p "xtask-bench-compose-$$" $compose_files down -v > /dev/null 2>&1 || true
  fi
  docker rmi -f "api:bench-release-v2-$$" "api:bench-compose-v2-$$" "gateway:bench-compose-v2-$$" \
    "worker:bench-compose-v2-$$" > /dev/null 2>&1 || true
  kill "$registry_pid" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for e in bench-staging bench-prod; do
  { cat infra/compose/env/staging.env
    echo "DEPLOY_PROJECT=xtask-$e-$$"
    echo "DEPLOY_COMPOSE_FILES=docker-compose.yml,docker-compose.offline.yml"
    for v in GATEWAY_PORT POSTGRES_PORT REDIS_PORT PROMETHEUS_PORT; do echo "$v=$(free_port)"; done
  } > "infra/compose/env/$e.env"
done
prod_url="http://127.0.0.1:$(sed -n 's/^GATEWAY_PORT=//p' infra/compose/env/bench-prod.env | tail -1)"
export POSTGRES_PASSWORD=bench-only
cargo build --release --locked -p loadgen --quiet
cargo xtask dev base > /dev/null 2>&1
cargo xtask image build > /dev/null 2>&1   # warm: the timed build below compiles what one commit changes
since() { python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.1f}')" "$(date +%s.%N)" "$1"; }
quiet() { "$@" > "$work/last.log" 2>&1 || { cat "$work/last.log"; exit 1; }; }

# Commit -> staging.
touch services/api/src/main.rs
start=$(date +%s.%N)
quiet cargo xtask image build --no-load --push "$registry"
built=$(since "$start")
cp "$target/xtask/images.json" "$work/v1.json"
start=$(date +%s.%N)
quiet cargo xtask deploy --target docker --env bench-staging --images "$work/v1.json" --no-verify --yes
staged=$(since "$start")
echo "commit -> staging: build + push ${built} s, deploy staging (from nothing) ${staged} s"
start=$(date +%s.%N)
quiet cargo xtask deploy promote --target docker --from bench-staging --to bench-prod --no-verify --yes
echo "staging -> prod (prod from nothing): $(since "$start") s"

# v2: v1 plus a label, pushed by digest like any release.
api=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["images"]["api"]["image"])' "$work/v1.json")
printf 'FROM %s\nLABEL bench.release=v2\n' "$api" | DOCKER_BUILDKIT=0 docker build -q -t "api:bench-release-v2-$$" - > /dev/null 2>&1
skopeo copy --quiet --dest-tls-verify=false --digestfile "$work/v2.digest" \
  "docker-daemon:api:bench-release-v2-$$" "docker://$registry/api:bench-release-v2-$$"
python3 - "$work/v1.json" "$work/v2.json" "$registry/api@$(cat "$work/v2.digest")" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
m["images"]["api"]["pushed"] = sys.argv[3]
json.dump(m, open(sys.argv[2], "w"))
EOF

echo "round  to  staging deploy (s)  promote wall (s)  requests  failed"
for round in $(seq 1 "$rounds"); do
  if (( round % 2 )); then to=v2; else to=v1; fi
  start=$(date +%s.%N)
  quiet cargo xtask deploy --target docker --env bench-staging --images "$work/$to.json" --no-verify --yes
  staged=$(since "$start")
  "$target/release/loadgen" run infra/loadtest/rollout.toml --url "$prod_url" \
    --rps "$rate" --duration "${seconds}s" --cores 1 --quiet --out "$work/r$round" > /dev/null 2>&1 &
  load=$!
  sleep 3
  start=$(date +%s.%N)
  quiet cargo xtask deploy promote --target docker --from bench-staging --to bench-prod --no-verify --yes
  promoted=$(since "$start")
  kill -0 "$load" 2> /dev/null || { echo "error: the load ended before the promote did; raise SECONDS" >&2; exit 1; }
  wait "$load" || true
  read -r count failed < <(python3 -c 'import json,sys; o=json.load(open(sys.argv[1]))["overall"]; print(o["count"], o["errors"])' "$work/r$round/report.json")
  printf '%5d  %s  %18s  %16s  %8d  %6d\n' "$round" "$to" "$staged" "$promoted" "$count" "$failed"
done

# The anchor: compose replaces the API by recreating it (stop the old, start the new).
v1_tag=${api#api:}
docker tag "api:bench-release-v2-$$" "api:bench-compose-v2-$$"
for s in gateway worker; do docker tag "$s:$v1_tag" "$s:bench-compose-v2-$$"; done
compose_files="-f infra/compose/docker-compose.yml -f infra/compose/docker-compose.offline.yml"
compose_port=$(free_port)
ports="GATEWAY_PORT=$compose_port API_PORT=$(free_port) WORKER_PORT=$(free_port) POSTGRES_PORT=$(free_port) REDIS_PORT=$(free_port)"
compose() {
  env $ports IMAGE_TAG="$1" POSTGRES_USER=jobs POSTGRES_DB=jobs GRAFANA_ADMIN_PASSWORD=bench-only \
    docker-compose -p "xtask-bench-compose-$$" $compose_files up -d --no-deps "${@:2}" > "$work/compose.log" 2>&1 \
    || { cat "$work/compose.log"; exit 1; }
}
compose "$v1_tag" postgres redis
sleep 5
compose "$v1_tag" api worker gateway
for _ in $(seq 1 60); do
  curl -fs "http://127.0.0.1:$compose_port/readyz" > /dev/null 2>&1 && break
  sleep 1
done
echo "anchor: docker-compose up -d api (recreate), same load"
echo "round  to  compose up (s)  requests  failed"
for round in $(seq 1 "$rounds"); do
  if (( round % 2 )); then tag="bench-compose-v2-$$"; to=v2; else tag=$v1_tag; to=v1; fi
  "$target/release/loadgen" run infra/loadtest/rollout.toml --url "http://127.0.0.1:$compose_port" \
    --rps "$rate" --duration "${seconds}s" --cores 1 --quiet --out "$work/c$round" > /dev/null 2>&1 &
  load=$!
  sleep 3
  start=$(date +%s.%N)
  compose "$tag" api
  took=$(since "$start")
  kill -0 "$load" 2> /dev/null || { echo "error: the load ended before compose did; raise SECONDS" >&2; exit 1; }
  wait "$load" || true
  read -r count failed < <(python3 -c 'import json,sys; o=json.load(open(sys.argv[1]))["overall"]; print(o["count"], o["errors"])' "$work/c$round/report.json")
  printf '%5d  %s  %14s  %8d  %6d\n' "$round" "$to" "$took" "$count" "$failed"
done
