#!/usr/bin/env sh
# One "edit a leaf crate, then check" cycle: append a comment to the gateway (a leaf: nothing
# depends on it), run the given ci command, then restore the file. Compare
#   xtask/bench/ci-changed.sh cargo xtask ci --changed --base HEAD
#   xtask/bench/ci-changed.sh cargo xtask ci
# on a clean, warm tree (commit first: --changed diffs against HEAD).
set -e
cd "$(dirname "$0")/../.."
leaf=services/gateway/src/routes.rs
echo "// benchmark edit" >> "$leaf"
status=0
"$@" >/dev/null 2>&1 || status=$?
git checkout --quiet -- "$leaf"
exit "$status"
