#!/usr/bin/env sh
# One "change one line in one service, rebuild every image" cycle: append a comment to the
# gateway, run the given build command, then restore the file. Compare (warm caches):
#   xtask/bench/image-rebuild.sh cargo xtask image build                      # host builder
#   xtask/bench/image-rebuild.sh cargo build --release --locked -p api -p gateway -p worker
#   xtask/bench/image-rebuild.sh cargo xtask image build --builder docker     # cargo-chef
set -e
cd "$(dirname "$0")/../.."
leaf=services/gateway/src/routes.rs
echo "// benchmark edit $(date +%s%N)" >> "$leaf"
status=0
"$@" >/dev/null 2>&1 || status=$?
git checkout --quiet -- "$leaf"
exit "$status"
