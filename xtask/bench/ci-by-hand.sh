#!/usr/bin/env sh
# The commands of `cargo xtask ci`, typed by hand in sequence: the baseline BENCHMARKS.md
# compares `cargo xtask ci` against. Needs one `cargo xtask deny` run first (it writes the
# offline cargo-deny config used below). A tidy test keeps these lines equal to the ci plan.
set -e
cd "$(dirname "$0")/../.."
target="${CARGO_TARGET_DIR:-target}"
"$target"/debug/xtask secrets
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo nextest run --workspace --locked --no-tests fail
cargo fetch --locked
cargo deny --offline --workspace --all-features --config "$target"/xtask/deny/deny-offline.toml check --show-stats advisories bans licenses sources
cargo build --workspace --locked --release
