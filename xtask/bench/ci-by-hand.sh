#!/usr/bin/env sh
# The commands of `cargo xtask ci`, typed by hand in sequence: the baseline BENCHMARKS.md
# compares `cargo xtask ci` against. Needs one `cargo xtask deny` run first (it writes the
# offline cargo-deny config used below). A tidy test keeps these lines equal to the ci plan.
set -e
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}"
pg_bin=$(dirname "$(command -v pg_ctl || ls -d /usr/lib/postgresql/*/bin/pg_ctl | tail -n 1)")

"$target"/debug/xtask secrets
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# Real Postgres and Redis for the integration tests, as a person would start them.
deps=$(mktemp -d /tmp/by-hand-deps.XXXXXX)
chown postgres: "$deps"
runuser -u postgres -- "$pg_bin"/initdb -D "$deps"/pg -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
runuser -u postgres -- "$pg_bin"/pg_ctl -D "$deps"/pg -l "$deps"/pg.log -w \
  -o "-p 55432 -c listen_addresses=127.0.0.1 -c unix_socket_directories=$deps -c fsync=off -c max_connections=300" start >/dev/null
redis-server --port 56379 --bind 127.0.0.1 --save '' --daemonize yes --pidfile "$deps"/redis.pid --dir "$deps"
export TEST_DATABASE_URL=postgres://postgres@127.0.0.1:55432/postgres TEST_REDIS_URL=redis://127.0.0.1:56379
cargo nextest run --workspace --locked --no-tests fail
cargo test --doc --locked -p http1-wire -p job-queue -p service-runtime -p test-support -p xtask-kit
runuser -u postgres -- "$pg_bin"/pg_ctl -D "$deps"/pg -m immediate -w stop >/dev/null
kill "$(cat "$deps"/redis.pid)"
rm -rf "$deps"

cargo fetch --locked
cargo deny --offline --workspace --all-features --config "$target"/xtask/deny/deny-offline.toml check --show-stats advisories bans licenses sources
cargo build --workspace --locked --release

# The compose-file checks of the scan stage (the rest of scan is trivy, as in the image stage).
cargo run --locked --quiet -p deployer -- compose-check --repo . --out "$target"/xtask/scan/compose.json

# The image stage's compile; writing the image tars and the trivy scans have no by-hand
# equivalent short of Dockerfiles, so the by-hand baseline stops here.
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static -C linker-plugin-lto -C link-arg=-Wl,--thinlto-cache-dir=$target/x86_64-unknown-linux-gnu/thinlto-cache -C link-arg=-Wl,--thinlto-cache-policy=cache_size_bytes=1g" cargo auditable build --profile image --locked --target x86_64-unknown-linux-gnu -p api -p gateway -p worker

# The Kubernetes manifests: render each overlay, then the schema and policy checks.
mkdir -p "$target"/xtask/k8s/rendered
for env in dev prod staging; do kubectl kustomize infra/k8s/overlays/$env > "$target"/xtask/k8s/rendered/$env.yaml; done
cargo run --locked --quiet -p k8s-policy -- check --env dev="$target"/xtask/k8s/rendered/dev.yaml --env prod="$target"/xtask/k8s/rendered/prod.yaml --env staging="$target"/xtask/k8s/rendered/staging.yaml --needs api=postgres,redis --needs gateway=api --needs worker=postgres,redis

# The alert rules: valid, and their unit tests (the generated files' freshness has no by-hand
# equivalent).
promtool check rules infra/monitoring/rules/platform.yml infra/monitoring/rules/slo/*.yml
(cd infra/monitoring/tests && promtool test rules *.yml)
