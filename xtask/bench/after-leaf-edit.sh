#!/usr/bin/env sh
# One "edit a leaf crate, then run a command" cycle: change one line of the gateway (a leaf:
# nothing depends on it) so that its binary changes (a new text in an error message; a comment
# would leave the binary as it was and let the image build skip writing its tar), run the given
# command, then restore the file. Used for:
#   ci --changed vs full ci (commit first: --changed diffs against HEAD):
#     xtask/bench/after-leaf-edit.sh cargo xtask ci --changed --base HEAD
#     xtask/bench/after-leaf-edit.sh cargo xtask ci
#   rebuilding every image after a one-line change:
#     xtask/bench/after-leaf-edit.sh cargo xtask image build                      # host builder
#     xtask/bench/after-leaf-edit.sh cargo build --release --locked -p api -p gateway -p worker
#     xtask/bench/after-leaf-edit.sh cargo xtask image build --builder docker     # cargo-chef
set -e
cd "$(dirname "$0")/../.."
leaf=services/gateway/src/routes.rs
sed -i "s/no routes; expected e.g./no routes (edit $(date +%s%N)); expected e.g./" "$leaf"
grep -q "no routes (edit " "$leaf" || { echo "error: the line to edit is gone from $leaf" >&2; exit 2; }
status=0
"$@" >/dev/null 2>&1 || status=$?
git checkout --quiet -- "$leaf"
exit "$status"
